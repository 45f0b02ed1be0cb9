//! `[admission] service_rate_limit`: an upper bound on the registrations served a
//! second, for a store shared with others (or a test that needs a slow node). A
//! token bucket, sans-IO: the caller passes `now`.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Pace {
    per_sec: f64,
    /// At most this many may be served back to back (a tenth of a second's
    /// worth, at least one), so the limit holds over any interval but the node
    /// need not be woken for every single registration.
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Pace {
    /// `None` when `per_sec` is 0 (no limit).
    pub fn new(per_sec: u32) -> Option<Pace> {
        (per_sec > 0).then(|| {
            let per_sec = f64::from(per_sec);
            let burst = (per_sec / 10.0).max(1.0);
            Pace {
                per_sec,
                burst,
                tokens: burst,
                last: None,
            }
        })
    }

    /// Takes one registration's allowance, if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn zero_is_no_limit() {
        assert!(Pace::new(0).is_none());
    }

    #[test]
    fn serves_at_the_limit_over_a_second() {
        let t0 = Instant::now();
        let mut p = Pace::new(100).unwrap();
        let mut served = 0;
        // asked every millisecond for 1 s: a burst of 10, then 100/s
        for ms in 0..1000 {
            while p.try_take(t0 + Duration::from_millis(ms)) {
                served += 1;
            }
        }
        assert!((105..=110).contains(&served), "served {served}");
    }

    #[test]
    fn an_idle_spell_saves_no_more_than_the_burst() {
        let t0 = Instant::now();
        let mut p = Pace::new(50).unwrap();
        assert!(p.try_take(t0));
        let later = t0 + Duration::from_secs(60);
        let mut n = 0;
        while p.try_take(later) {
            n += 1;
        }
        assert_eq!(n, 5);
    }
}
