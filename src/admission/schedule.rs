//! Staggered retry times (seed 002: "controller 12 may stagger retry times in
//! order to distribute token request over time"). A fixed Retry-After brings every
//! refused device back in the same second, and a purely random one brings them
//! back at a rate that has nothing to do with what the node can serve. Here each
//! refusal takes the next free slot of a schedule whose slots are one service
//! interval apart (1 ÷ rate), starting when the present backlog has drained, so
//! the retries come back at the rate the node serves them.

use rand::rngs::StdRng;
use rand::Rng;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Width of the arrival buckets (see [`RetrySchedule`]): well under T1, so a
/// bucket's worth of retries is served before any of them retransmits.
const BUCKET: Duration = Duration::from_millis(100);
/// Buckets are kept this far ahead at most (an hour); beyond, only the slot
/// schedule spreads retries.
const MAX_BUCKETS: u64 = 36_000;
/// How many seconds past its slot's second a retry may be sent to find an
/// arrival bucket with room.
const SPILL: u32 = 2;

/// The schedule of retry slots handed to refused requests.
///
/// Retry-After is whole seconds (RFC 3261 §20.33), so a phone refused at `t`
/// can only come back at `t + n`. Slots alone do not stagger arrivals then:
/// phones refused faster than the node serves (every phone in a storm) get
/// consecutive slots that round to the same few `n`, and come back bunched.
/// So arrivals are booked too, in 100 ms buckets holding what the node serves
/// in 100 ms: a refusal takes the earliest `n` whose arrival bucket has room,
/// from the end of the backlog up to its slot's second (plus [`SPILL`]). Refusals spread over
/// time fill the buckets evenly; refusals bunched at one phase, which cannot be
/// spread within a second, go to the least booked of those seconds.
#[derive(Debug)]
pub struct RetrySchedule {
    /// The earliest slot not yet handed out.
    next_free: Option<Instant>,
    /// Jitter as a fraction of the slot spacing, at most ½: below ½ two
    /// consecutive slots can never swap, so the times stay monotonic.
    jitter: f64,
    rng: StdRng,
    /// Arrivals booked per bucket; `loads[0]` is bucket number `base`, counted
    /// from `epoch`.
    epoch: Option<Instant>,
    base: u64,
    loads: VecDeque<u32>,
}

impl RetrySchedule {
    pub fn new(jitter: f64, rng: StdRng) -> RetrySchedule {
        RetrySchedule {
            next_free: None,
            jitter: jitter.clamp(0.0, 0.49),
            rng,
            epoch: None,
            base: 0,
            loads: VecDeque::new(),
        }
    }

    /// The next slot for a request refused at `now`, as a Retry-After in whole
    /// seconds (RFC 3261 §20.33), at least 1. `drain`: how long the present
    /// backlog takes (no retry is asked to come before it is served). `spacing`:
    /// the time the node takes per registration.
    pub fn next_retry(&mut self, now: Instant, drain: Duration, spacing: Duration) -> u32 {
        // Retry-After is at least 1 s: slots sooner are slots nobody can take
        let earliest = now + drain.max(Duration::from_secs(1));
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
        let ideal = secs.ceil().clamp(1.0, u32::MAX as f64) as u32;
        if spacing > BUCKET {
            // under 10 registrations a second there is no storm to smooth
            return ideal;
        }
        let first = (drain.as_secs_f64().ceil() as u32).clamp(1, ideal);
        let per_bucket = (BUCKET.as_secs_f64() / spacing.as_secs_f64().max(1e-9)) as u32;
        self.prune(now);
        // the earliest second with room, up to two seconds past the slot's;
        // when none has room (refusals bunched at one phase), the least booked
        let mut best: Option<(u32, u32)> = None;
        for n in first..=ideal.saturating_add(SPILL) {
            let Some(load) = self.bucket(now + Duration::from_secs(n.into())) else {
                break;
            };
            if *load < per_bucket {
                *load += 1;
                return n;
            }
            if best.is_none_or(|(_, l)| *load < l) {
                best = Some((n, *load));
            }
        }
        let n = best.map(|(n, _)| n).unwrap_or(ideal);
        if let Some(load) = self.bucket(now + Duration::from_secs(n.into())) {
            *load += 1;
        }
        n
    }

    /// Forgets the buckets before `now`'s.
    fn prune(&mut self, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let current = (now.saturating_duration_since(epoch).as_nanos() / BUCKET.as_nanos()) as u64;
        while self.base < current {
            if self.loads.pop_front().is_none() {
                self.base = current;
                break;
            }
            self.base += 1;
        }
    }

    /// The arrivals booked in `at`'s bucket; `None` past the kept horizon.
    fn bucket(&mut self, at: Instant) -> Option<&mut u32> {
        let epoch = self.epoch?;
        let idx = (at.saturating_duration_since(epoch).as_nanos() / BUCKET.as_nanos()) as u64;
        let offset = idx.checked_sub(self.base)?;
        if offset >= MAX_BUCKETS {
            return None;
        }
        let offset = offset as usize;
        if self.loads.len() <= offset {
            self.loads.resize(offset + 1, 0);
        }
        self.loads.get_mut(offset)
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
        assert!(
            retries.iter().all(|r| *r >= 3),
            "nobody comes back before the backlog drained"
        );
        // 400 at 20/s: the last slot is 3 + 399/20 = 22.95 s out; the arrival
        // buckets may move a retry up to SPILL seconds past its slot's second
        let last = *retries.iter().max().unwrap();
        assert!((23..=23 + SPILL).contains(&last), "{last}");
        let mut per_second = BTreeMap::new();
        for r in &retries {
            *per_second.entry(*r).or_insert(0) += 1;
        }
        let busiest = per_second.values().max().copied().unwrap();
        assert!(
            busiest <= 21,
            "at most ~R+1 in any one second: {per_second:?}"
        );
        // every second from the first slot to the last is used
        let first = *per_second.keys().next().unwrap();
        assert_eq!(per_second.len() as u32, last - first + 1, "{per_second:?}");
    }

    #[test]
    fn jitter_is_bounded_by_a_fraction_of_the_spacing() {
        let t0 = Instant::now();
        let mut s = schedule(0.4);
        let spacing = Duration::from_secs(10);
        for k in 0..50u32 {
            let r = s.next_retry(t0, Duration::ZERO, spacing);
            // slot k is 1 + 10·k s out (Retry-After is at least 1 s); ±4 s of
            // jitter, rounded up
            let slot = 1 + 10 * k;
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

    #[test]
    fn refusals_faster_than_service_come_back_spread_over_each_second() {
        // a storm: 1,500 refusals a second, the node serves 300 a second
        let t0 = Instant::now();
        let mut s = schedule(0.0);
        let spacing = Duration::from_secs_f64(1.0 / 300.0);
        let mut per_bucket: BTreeMap<u128, u32> = BTreeMap::new();
        let mut last = Duration::ZERO;
        for k in 0..1500u64 {
            let now = t0 + Duration::from_micros(k * 1_000_000 / 1500);
            let n = s.next_retry(now, Duration::from_millis(400), spacing);
            let back = now + Duration::from_secs(n.into()) - t0;
            last = last.max(back);
            *per_bucket.entry(back.as_millis() / 100).or_insert(0) += 1;
        }
        // no 100 ms holds much more than the node serves in 100 ms (30), where
        // the slot schedule alone brought ~225 back within 150 ms
        let busiest = per_bucket.values().max().copied().unwrap();
        assert!(busiest <= 40, "{per_bucket:?}");
        // and the whole takes no longer than the slots would: 1,500 at 300/s
        assert!(last <= Duration::from_secs(7), "last back after {last:?}");
    }
}
