//! Staggered retry times (seed 002: "controller 12 may stagger retry times in
//! order to distribute token request over time"). A fixed Retry-After brings every
//! refused device back in the same second, and a purely random one brings them
//! back at a rate that has nothing to do with what the node can serve. Here each
//! refusal takes the next free slot of a schedule whose slots are one service
//! interval apart (1 ÷ rate), starting when the present backlog has drained, so
//! the retries come back at the rate the node serves them.

use rand::rngs::StdRng;
use rand::Rng;
use std::time::{Duration, Instant};

/// The schedule of retry slots handed to refused requests.
#[derive(Debug)]
pub struct RetrySchedule {
    /// The earliest slot not yet handed out.
    next_free: Option<Instant>,
    /// Jitter as a fraction of the slot spacing, at most ½: below ½ two
    /// consecutive slots can never swap, so the times stay monotonic.
    jitter: f64,
    rng: StdRng,
}

impl RetrySchedule {
    pub fn new(jitter: f64, rng: StdRng) -> RetrySchedule {
        RetrySchedule {
            next_free: None,
            jitter: jitter.clamp(0.0, 0.49),
            rng,
        }
    }

    /// The next slot for a request refused at `now`, as a Retry-After in whole
    /// seconds (RFC 3261 §20.33), at least 1. `drain`: how long the present
    /// backlog takes (no retry is asked to come before it is served). `spacing`:
    /// the time the node takes per registration.
    pub fn next_retry(&mut self, now: Instant, drain: Duration, spacing: Duration) -> u32 {
        let earliest = now + drain;
        let slot = match self.next_free {
            Some(free) if free > earliest => free,
            // the schedule has caught up with time: start again after the backlog
            _ => earliest,
        };
        self.next_free = Some(slot + spacing);
        let span = self.jitter * spacing.as_secs_f64();
        let offset = if span > 0.0 {
            self.rng.random_range(-span..=span)
        } else {
            0.0
        };
        let secs = slot.saturating_duration_since(now).as_secs_f64() + offset;
        // Round up: the device never comes back before its slot.
        secs.ceil().clamp(1.0, u32::MAX as f64) as u32
    }

    /// The first slot not yet handed out, if it is still ahead of `now`.
    pub fn horizon(&self, now: Instant) -> Duration {
        self.next_free
            .map(|f| f.saturating_duration_since(now))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::BTreeMap;

    fn schedule(jitter: f64) -> RetrySchedule {
        RetrySchedule::new(jitter, StdRng::seed_from_u64(2))
    }

    #[test]
    fn denials_at_one_instant_are_spread_at_the_service_rate() {
        let t0 = Instant::now();
        let mut s = schedule(0.25);
        let rate = 20.0;
        let spacing = Duration::from_secs_f64(1.0 / rate);
        let drain = Duration::from_secs(3);
        let retries: Vec<u32> = (0..400).map(|_| s.next_retry(t0, drain, spacing)).collect();
        assert!(retries.windows(2).all(|w| w[0] <= w[1]), "monotonic");
        assert!(
            retries[0] >= 3,
            "nobody comes back before the backlog drained"
        );
        // 400 at 20/s: the last slot is 3 + 399/20 = 22.95 s out, jitter < ½ slot
        assert_eq!(*retries.last().unwrap(), 23);
        let mut per_second = BTreeMap::new();
        for r in &retries {
            *per_second.entry(*r).or_insert(0) += 1;
        }
        let busiest = per_second.values().max().copied().unwrap();
        assert!(
            busiest <= 21,
            "at most ~R+1 in any one second: {per_second:?}"
        );
        // every second from the first slot to the last is used (slot 0 may fall
        // either side of the 3 s boundary)
        let first = *per_second.keys().next().unwrap();
        assert_eq!(per_second.len() as u32, 23 - first + 1, "{per_second:?}");
    }

    #[test]
    fn jitter_is_bounded_by_a_fraction_of_the_spacing() {
        let t0 = Instant::now();
        let mut s = schedule(0.4);
        let spacing = Duration::from_secs(10);
        for k in 0..50u32 {
            let r = s.next_retry(t0, Duration::ZERO, spacing);
            // slot k is 10·k s out; ±4 s of jitter, rounded up, never below 1
            let slot = 10 * k;
            assert!(r + 4 >= slot && r <= slot + 4 + 1, "slot {k}: {r}");
            assert!(r >= 1);
        }
    }

    #[test]
    fn the_schedule_restarts_once_time_has_caught_up() {
        let t0 = Instant::now();
        let mut s = schedule(0.0);
        let spacing = Duration::from_millis(500);
        assert_eq!(s.next_retry(t0, Duration::from_secs(2), spacing), 2);
        assert_eq!(s.next_retry(t0, Duration::from_secs(2), spacing), 3);
        assert_eq!(s.horizon(t0), Duration::from_secs(3));
        // a minute later the old slots are in the past: the next one is after
        // the present backlog, not after the stale schedule
        let later = t0 + Duration::from_secs(60);
        assert_eq!(s.horizon(later), Duration::ZERO);
        assert_eq!(s.next_retry(later, Duration::from_secs(4), spacing), 4);
        // and a schedule that is still ahead wins over a short backlog
        assert_eq!(s.next_retry(later, Duration::ZERO, spacing), 5);
    }
}
