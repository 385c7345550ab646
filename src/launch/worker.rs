//! The queue worker: claims queued launch jobs (and those whose process died) up to the
//! concurrency limit, runs each on its own task, keeps the registry of cancel signals for the
//! jobs this process runs, and at shutdown hands its launches back for another process (or this
//! one after a restart) to take over at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::job::Job;
use super::run::{JobLease, JobLog};
use super::runner::JobRunner;
use super::takeover::Start;
use crate::background::AbortOnDrop;
use crate::clock::now_ms;

impl JobRunner {
    /// A new job is queued: look now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// At shutdown, after [`run`](Self::run) returned: stops the launches this process runs and
    /// hands their leases back, so the next process to look (another one, or this one after a
    /// restart) takes them over at once instead of after `--job-lease`. What a launch started
    /// keeps running; the takeover finds it (see `takeover.rs`).
    pub async fn hand_back(&self) {
        let launches: Vec<_> = self
            .launches
            .lock()
            .expect("launch map lock")
            .values()
            .map(|(_, launch)| launch.clone())
            .collect();
        for launch in &launches {
            launch.abort();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.running.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match self.store.release_leases(&self.owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                launches = n,
                "handed running launches back for another process to take over"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not hand launches back; they are taken over once their leases lapse")
            }
        }
    }

    /// Asks a job this process runs to stop; other processes notice at their next lease renewal.
    pub fn signal_cancel(&self, job_id: &str) {
        if let Some((_, tx)) = self.cancels.lock().expect("cancel map lock").get(job_id) {
            let _ = tx.send(true);
        }
    }

    /// Whether this process is running the job now (else another process may be).
    pub fn runs(&self, job_id: &str) -> bool {
        self.cancels
            .lock()
            .expect("cancel map lock")
            .contains_key(job_id)
    }

    /// Claims and runs jobs until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            while self.running.load(Ordering::SeqCst) < self.settings.max_concurrent {
                let now = now_ms();
                let lease_until = now + self.settings.lease.as_millis() as i64;
                match self.store.claim_job(&self.owner, lease_until, now).await {
                    Ok(Some(claimed)) => {
                        self.running.fetch_add(1, Ordering::SeqCst);
                        let runner = self.clone();
                        let lease = JobLease::new(
                            self.store.clone(),
                            claimed.lease,
                            self.settings.lease,
                            lease_until,
                        );
                        tokio::spawn(async move {
                            let id = claimed.job.id.clone();
                            let claim = lease.token().claim;
                            // On its own task, so a bug that panics mid-launch is caught here
                            // and the launch still ends with its VM torn down.
                            let launch = tokio::spawn(runner.clone().run_claimed(
                                claimed.job,
                                lease.clone(),
                                claimed.reclaimed,
                            ));
                            runner
                                .launches
                                .lock()
                                .expect("launch map lock")
                                .insert(id.clone(), (claim, launch.abort_handle()));
                            match launch.await {
                                Err(e) if e.is_cancelled() => {
                                    tracing::info!(job_id = %id, "launch stopped with this process; handed back for another to take over")
                                }
                                Err(e) => {
                                    tracing::error!(job_id = %id, error = %e, "launch task failed; ending the launch and tearing down");
                                    runner.end_after_crash(&lease).await;
                                }
                                Ok(()) => {}
                            }
                            runner.forget(&id, claim);
                            runner.running.fetch_sub(1, Ordering::SeqCst);
                            runner.wake();
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "could not claim launch jobs");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Forgets a job this process ran under `claim` (not a later claim of the same job).
    fn forget(&self, job_id: &str, claim: i64) {
        let mut launches = self.launches.lock().expect("launch map lock");
        if launches.get(job_id).is_some_and(|(c, _)| *c == claim) {
            launches.remove(job_id);
        }
        let mut cancels = self.cancels.lock().expect("cancel map lock");
        if cancels.get(job_id).is_some_and(|(c, _)| *c == claim) {
            cancels.remove(job_id);
        }
    }

    /// Runs one claimed job under its lease, with its cancel signal registered and the lease
    /// renewed meanwhile.
    async fn run_claimed(self: Arc<Self>, job: Job, lease: JobLease, reclaimed: bool) {
        let job_id = job.id.clone();
        let span =
            tracing::info_span!("launch_job", job_id = %job_id, provider = job.provider.as_str());
        let _enter = span.enter();
        drop(_enter);
        let (cancel_tx, cancel_rx) = watch::channel(job.cancel_requested);
        self.cancels
            .lock()
            .expect("cancel map lock")
            .insert(job_id.clone(), (lease.token().claim, cancel_tx.clone()));
        // Stops renewing however this function ends (a panic included), so the lease can lapse.
        let _renewer = AbortOnDrop(self.clone().spawn_lease_renewal(lease.clone(), cancel_tx));
        // The job lost to another claim, the work stops wherever it is: it has written nothing
        // since (every write checks the lease) and tears nothing down.
        tokio::select! {
            () = self.work_on(job, &lease, reclaimed, cancel_rx) => {}
            () = lease.lost() => {
                tracing::warn!(job_id = %job_id, "another process holds this job now; stopped working on it, nothing torn down");
            }
        }
    }

    /// Takes a claimed job from wherever it is (a fresh job, or one taken over) to its outcome.
    async fn work_on(
        &self,
        job: Job,
        lease: &JobLease,
        reclaimed: bool,
        cancel: watch::Receiver<bool>,
    ) {
        let log = self.job_log(lease);
        let started = if reclaimed {
            self.take_over(job.clone(), log.clone(), cancel).await
        } else {
            self.prepare(job.clone(), log.clone(), cancel)
                .await
                .map(|run| (run, Start::Launch))
        };
        let outcome = match started {
            Ok((run, start)) => {
                let (run, result) = self.go_on(run, start).await;
                let job = run.snapshot().await;
                self.finish(job, result, &log).await;
                return;
            }
            Err(e) => Err(e),
        };
        let job = match self.store.job(&job.id).await {
            Ok(Some(j)) => j,
            _ => job,
        };
        self.finish(job, outcome, &log).await;
    }

    pub(super) fn job_log(&self, lease: &JobLease) -> JobLog {
        JobLog {
            lease: lease.clone(),
            events: self.events.clone(),
        }
    }
}
