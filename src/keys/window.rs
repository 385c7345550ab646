//! A sliding-minute counter: this minute's count plus the part of the previous minute's that
//! the sliding window still covers (the previous count weighted by how much of it is left), as
//! nginx and Cloudflare estimate a rate. Two numbers per minute, no per-event list.
//!
//! What other processes counted (read from the database every second) is kept apart from what
//! this process counted, so a read from the database never loses a local count.

const MINUTE_MS: i64 = 60_000;

/// The minute (Unix ms at its start) `now` falls in.
pub fn minute_of(now: i64) -> i64 {
    now.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// Counts of one minute and the one before it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Pair {
    /// The minute `current` belongs to.
    minute: i64,
    previous: u64,
    current: u64,
}

impl Pair {
    /// The counts as of the minute `minute`: moved on, or cleared, if they are older.
    fn at(self, minute: i64) -> Pair {
        if self.minute == minute {
            self
        } else if self.minute == minute - MINUTE_MS {
            Pair {
                minute,
                previous: self.current,
                current: 0,
            }
        } else {
            Pair {
                minute,
                ..Pair::default()
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Window {
    local: Pair,
    others: Pair,
}

/// Why an amount does not fit: how long until it would (no more use meanwhile).
#[derive(Debug, PartialEq)]
pub struct Over {
    pub retry_after_s: u64,
}

impl Window {
    /// Counts `amount` at `now`.
    pub fn add(&mut self, now: i64, amount: u64) {
        let minute = minute_of(now);
        self.local = self.local.at(minute);
        self.local.current = self.local.current.saturating_add(amount);
    }

    /// What other processes counted in `minute` and the one before (from the database).
    pub fn set_others(&mut self, minute: i64, previous: u64, current: u64) {
        self.others = Pair {
            minute,
            previous,
            current,
        };
    }

    /// The counts of both minutes at `now`, every process together.
    fn totals(&self, now: i64) -> (i64, u64, u64) {
        let minute = minute_of(now);
        let (l, o) = (self.local.at(minute), self.others.at(minute));
        (
            minute,
            l.previous.saturating_add(o.previous),
            l.current.saturating_add(o.current),
        )
    }

    /// The use over the minute up to `now`.
    pub fn used(&self, now: i64) -> u64 {
        let (minute, previous, current) = self.totals(now);
        // Rounded up: a part of a request still counts as one.
        let left = (MINUTE_MS - (now - minute)).clamp(0, MINUTE_MS) as u128;
        let share = (u128::from(previous) * left).div_ceil(MINUTE_MS as u128);
        current.saturating_add(u64::try_from(share).unwrap_or(u64::MAX))
    }

    /// Whether `need` more fits under `limit` at `now`; if not, when it would.
    pub fn check(&self, now: i64, need: u64, limit: u64) -> Result<(), Over> {
        if self.used(now).saturating_add(need) <= limit {
            return Ok(());
        }
        let (minute, previous, current) = self.totals(now);
        let room = limit.saturating_sub(need) as f64;
        // Within this minute, the previous minute's share shrinks: previous * (1 - f) + current
        // <= room once f >= 1 - (room - current) / previous.
        let at = if (current as f64) <= room && previous > 0 {
            let f = 1.0 - (room - current as f64) / previous as f64;
            minute as f64 + f * MINUTE_MS as f64
        } else if current > 0 {
            // Next minute, this minute's count becomes the shrinking one.
            let f = (1.0 - room / current as f64).max(0.0);
            (minute + MINUTE_MS) as f64 + f * MINUTE_MS as f64
        } else {
            (minute + MINUTE_MS) as f64
        };
        let wait_ms = (at - now as f64).max(0.0);
        Err(Over {
            retry_after_s: ((wait_ms / 1000.0).ceil() as u64).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 1_800_000_000_000 / MINUTE_MS * MINUTE_MS;

    #[test]
    fn a_full_minute_refuses_until_enough_of_it_slides_out() {
        let mut w = Window::default();
        for _ in 0..10 {
            w.check(M + 1_000, 1, 10).unwrap();
            w.add(M + 1_000, 1);
        }
        let over = w.check(M + 1_000, 1, 10).unwrap_err();
        // 10 in this minute: the next minute starts with 10 weighted by what is left of the
        // window, and one fits once a tenth of it has passed (6 s into the next minute).
        assert_eq!(over.retry_after_s, 59 + 6);
        assert!(w.check(M + MINUTE_MS + 6_000, 1, 10).is_ok());
        assert!(w.check(M + MINUTE_MS + 5_000, 1, 10).is_err());
        // Two minutes later nothing counts.
        assert_eq!(w.used(M + 2 * MINUTE_MS + 1), 0);
    }

    #[test]
    fn the_previous_minute_counts_by_what_the_window_still_covers() {
        let mut w = Window::default();
        w.add(M + 30_000, 100);
        assert_eq!(w.used(M + 59_000), 100);
        assert_eq!(w.used(M + MINUTE_MS + 15_000), 75);
        assert_eq!(w.used(M + MINUTE_MS + 45_000), 25);
        // Refused at 80 of 100 used; fits once the previous minute's share falls to 99.
        w.add(M + MINUTE_MS, 5);
        let over = w.check(M + MINUTE_MS + 1_000, 1, 100).unwrap_err();
        // 100 * (1 - f) + 5 <= 99 when f >= 0.06: 3.6 s into the minute, 2.6 s from now.
        assert_eq!(over.retry_after_s, 3);
    }

    #[test]
    fn other_processes_count_and_are_replaced_not_added_up() {
        let mut w = Window::default();
        w.add(M + 1_000, 3);
        w.set_others(M, 0, 4);
        w.set_others(M, 0, 5);
        assert_eq!(w.used(M + 2_000), 8);
        assert!(w.check(M + 2_000, 2, 10).is_ok());
        assert!(w.check(M + 2_000, 3, 10).is_err());
        // Others' counts read a minute ago move on like the local ones.
        assert_eq!(w.used(M + MINUTE_MS + 30_000), 4);
    }

    #[test]
    fn a_need_larger_than_the_limit_waits_for_an_empty_window() {
        let w = Window::default();
        assert!(w.check(M, 5, 10).is_ok());
        let over = w.check(M, 11, 10).unwrap_err();
        assert!(over.retry_after_s >= 1);
    }
}
