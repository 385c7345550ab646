//! Cold starts: the models whose deployment may scale to zero replicas. A `/v1` request for one
//! that finds no ready node is held here (up to the deployment's `cold_start_timeout_s`, at most
//! a bounded number per model) while a replica launches, then forwarded; the held count is the
//! demand that makes the autoscaler launch one. Held requests live in this process only: they
//! do not survive it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub struct ColdStarts {
    models: Mutex<HashMap<String, ColdModel>>,
    /// Woken when a request starts waiting: the reconciler launches a replica at once.
    pub demand: Notify,
}

#[derive(Debug, Clone, Copy)]
struct ColdModel {
    timeout: Duration,
    max_held: usize,
    held: usize,
}

/// How long a held request may wait, and how many may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdStartLimits {
    pub timeout: Duration,
    pub max_held: usize,
}

/// Why a request for a cold-startable model was not held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotHeld {
    /// `max_held` requests wait already.
    Full { max_held: usize },
}

impl ColdStarts {
    /// The models that may cold start now, with their limits (replacing the previous list;
    /// requests already held keep waiting).
    pub fn set(&self, models: &[(String, ColdStartLimits)]) {
        let mut all = self.models.lock().expect("cold starts lock");
        all.retain(|name, m| m.held > 0 || models.iter().any(|(n, _)| n == name));
        for (name, limits) in models {
            let m = all.entry(name.clone()).or_insert(ColdModel {
                timeout: limits.timeout,
                max_held: limits.max_held,
                held: 0,
            });
            m.timeout = limits.timeout;
            m.max_held = limits.max_held;
        }
    }

    /// Whether requests for `model` may wait for a cold start, and for how long.
    pub fn limits(&self, model: &str) -> Option<ColdStartLimits> {
        self.models
            .lock()
            .expect("cold starts lock")
            .get(model)
            .map(|m| ColdStartLimits {
                timeout: m.timeout,
                max_held: m.max_held,
            })
    }

    /// Requests for `model` waiting now.
    pub fn held(&self, model: &str) -> usize {
        self.models
            .lock()
            .expect("cold starts lock")
            .get(model)
            .map_or(0, |m| m.held)
    }

    /// Models that may cold start (whether or not a replica serves them now).
    pub fn models(&self) -> Vec<String> {
        let all = self.models.lock().expect("cold starts lock");
        let mut names: Vec<String> = all.keys().cloned().collect();
        names.sort();
        names
    }

    /// Holds a request for `model` until the guard drops; `None` when the model cannot cold
    /// start; `Err` when too many wait already.
    pub fn hold<'a>(&'a self, model: &str) -> Option<Result<Held<'a>, NotHeld>> {
        let mut all = self.models.lock().expect("cold starts lock");
        let m = all.get_mut(model)?;
        if m.held >= m.max_held {
            return Some(Err(NotHeld::Full {
                max_held: m.max_held,
            }));
        }
        m.held += 1;
        drop(all);
        self.demand.notify_one();
        Some(Ok(Held {
            cold: self,
            model: model.to_string(),
        }))
    }
}

/// A request waiting for a cold start; counted until dropped.
pub struct Held<'a> {
    cold: &'a ColdStarts,
    model: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(m) = self
            .cold
            .models
            .lock()
            .expect("cold starts lock")
            .get_mut(&self.model)
        {
            m.held = m.held.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_held_up_to_the_bound_and_counted_until_released() {
        let cold = ColdStarts::default();
        assert!(cold.hold("m").is_none(), "not a cold-startable model");
        let limits = ColdStartLimits {
            timeout: Duration::from_secs(1),
            max_held: 2,
        };
        cold.set(&[("m".to_string(), limits)]);
        let a = cold.hold("m").unwrap().unwrap();
        let b = cold.hold("m").unwrap().unwrap();
        assert_eq!(cold.held("m"), 2);
        assert_eq!(
            cold.hold("m").unwrap().err(),
            Some(NotHeld::Full { max_held: 2 })
        );
        drop(a);
        assert_eq!(cold.held("m"), 1);
        // Dropped from the list while one waits: kept until it is released.
        cold.set(&[]);
        assert_eq!(cold.limits("m"), Some(limits));
        drop(b);
        cold.set(&[]);
        assert_eq!(cold.limits("m"), None);
    }
}
