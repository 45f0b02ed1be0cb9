//! The registration load of seed 002 FIG. 5 step 102, measured the way the grant
//! rule needs it: not "how many are queued" (a fixed threshold means nothing
//! without the speed the queue drains at) but "how long would a newcomer wait".
//! [`ServiceRate`] estimates registrations completed per second; the projected
//! wait is backlog ÷ rate, compared with a target by the front.

use std::time::{Duration, Instant};

/// An exponentially weighted moving average of registrations completed per
/// second, over fixed intervals.
///
/// Only intervals that end with work still queued ("saturated") measure the
/// node's capacity: in an unsaturated interval the node served everything it was
/// given, so the count says how much was offered, not how much it could do. Such
/// an interval can only raise the estimate, never lower it (an idle node is not
/// a slow one).
#[derive(Debug, Clone)]
pub struct ServiceRate {
    interval: Duration,
    /// Weight of the newest interval, 0 < alpha ≤ 1.
    alpha: f64,
    /// The estimate never goes below this, so the projected wait and the retry
    /// spacing stay finite before anything was measured or while nothing is served.
    floor: f64,
    rate: f64,
    bucket_start: Option<Instant>,
    bucket_count: u64,
    /// Work was refused in this interval (a token or an initial REGISTER).
    refused: bool,
    /// The CPU was saturated in this interval (see `node/cpu.rs`).
    cpu_saturated: bool,
    /// A phone retransmitted a REGISTER in this interval: its answer was late.
    late: bool,
}

/// An unsaturated interval in which work was refused doubles the estimate: the
/// estimate itself was the limit (TCP's slow start, for the same reason).
const PROBE: f64 = 2.0;
/// The estimate never grows past this (registrations a second).
const CEILING: f64 = 1_000_000.0;

impl ServiceRate {
    /// `initial`: the rate assumed until a saturated interval says otherwise.
    pub fn new(initial: f64, floor: f64, interval: Duration, alpha: f64) -> ServiceRate {
        let floor = floor.max(f64::MIN_POSITIVE);
        ServiceRate {
            interval: interval.max(Duration::from_millis(1)),
            alpha: alpha.clamp(f64::MIN_POSITIVE, 1.0),
            floor,
            rate: initial.max(floor),
            bucket_start: None,
            bucket_count: 0,
            refused: false,
            cpu_saturated: false,
            late: false,
        }
    }

    /// Registrations completed per second, as now estimated.
    pub fn per_sec(&self) -> f64 {
        self.rate
    }

    /// Closes the intervals that ended by `now`. `queued`: the registrations still
    /// waiting, which says whether the interval was saturated.
    pub fn tick(&mut self, now: Instant, queued: usize) {
        let Some(start) = self.bucket_start else {
            self.bucket_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < self.interval {
            return;
        }
        let sample = self.bucket_count as f64 / self.interval.as_secs_f64();
        // A busy CPU alone says nothing of this node (a neighbour may be busy
        // while it idles); with phones waiting for it (refused, or
        // retransmitting because their answers are late) it is saturation.
        let cpu_bound = self.cpu_saturated && (self.refused || self.late);
        if queued > 0 || cpu_bound {
            // saturated: what was served is what the node can serve
            self.rate = (self.alpha * sample + (1.0 - self.alpha) * self.rate).max(self.floor);
        } else if self.refused && sample >= self.rate / PROBE {
            // Not saturated, yet work was turned away by the grant rule, which
            // divides by this very estimate, and the node served about as much
            // as the estimate allows: a low estimate would otherwise throttle
            // the node to itself for good. Probe upwards; the first saturated
            // interval brings it back to what the node serves.
            self.rate = (self.rate.max(sample) * PROBE).min(CEILING);
        } else if sample > self.rate {
            self.rate = (self.alpha * sample + (1.0 - self.alpha) * self.rate).max(self.floor);
        }
        self.refused = false;
        self.cpu_saturated = false;
        self.late = false;
        // Whole intervals skipped since (nobody called) were idle: dropped, not
        // averaged in as zeros.
        let whole = elapsed.as_nanos() / self.interval.as_nanos();
        let advance = self.interval.as_nanos() * whole;
        self.bucket_start = Some(start + Duration::from_nanos(advance as u64));
        self.bucket_count = 0;
    }

    /// `n` registrations completed at `now`.
    pub fn on_served(&mut self, now: Instant, n: u64, queued: usize) {
        self.tick(now, queued);
        self.bucket_count += n;
    }

    /// The CPU was saturated at `now`: the interval measures capacity even with
    /// the queue empty.
    pub fn on_cpu_saturated(&mut self, now: Instant, queued: usize) {
        self.tick(now, queued);
        self.cpu_saturated = true;
    }

    /// A phone retransmitted a REGISTER at `now`.
    pub fn on_late(&mut self, now: Instant, queued: usize) {
        self.tick(now, queued);
        self.late = true;
    }

    /// Work was refused at `now` (see [`PROBE`]).
    pub fn on_refused(&mut self, now: Instant, queued: usize) {
        self.tick(now, queued);
        self.refused = true;
    }

    /// How long `backlog` registrations take to drain at the estimated rate.
    ///
    /// (The caller adds what waits outside the queue: granted, unused tokens.)
    pub fn projected_wait(&self, backlog: usize) -> Duration {
        Duration::from_secs_f64(backlog as f64 / self.rate)
    }

    /// The time between two registrations at the estimated rate.
    pub fn spacing(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_saturated_interval_moves_the_average_by_alpha() {
        let t0 = Instant::now();
        let mut r = ServiceRate::new(100.0, 1.0, ms(1000), 0.5);
        r.tick(t0, 0);
        r.on_served(t0 + ms(100), 20, 5);
        r.on_served(t0 + ms(900), 20, 5);
        assert_eq!(r.per_sec(), 100.0, "the interval has not ended");
        r.tick(t0 + ms(1000), 5);
        // 0.5·40 + 0.5·100
        assert_eq!(r.per_sec(), 70.0);
        assert_eq!(r.projected_wait(140), Duration::from_secs(2));
        assert_eq!(r.spacing(), Duration::from_secs_f64(1.0 / 70.0));
    }

    #[test]
    fn an_unsaturated_interval_only_raises_the_estimate() {
        let t0 = Instant::now();
        let mut r = ServiceRate::new(100.0, 1.0, ms(1000), 0.5);
        r.tick(t0, 0);
        r.on_served(t0 + ms(10), 3, 0);
        r.tick(t0 + ms(1000), 0);
        assert_eq!(
            r.per_sec(),
            100.0,
            "3/s offered says nothing about capacity"
        );
        r.on_served(t0 + ms(1010), 300, 0);
        r.tick(t0 + ms(2000), 0);
        assert_eq!(r.per_sec(), 200.0, "300/s served proves more capacity");
    }

    #[test]
    fn idle_gaps_are_skipped_and_the_floor_holds() {
        let t0 = Instant::now();
        let mut r = ServiceRate::new(10.0, 2.0, ms(1000), 1.0);
        r.tick(t0, 0);
        // nothing served while work waited: the estimate falls to the floor
        r.tick(t0 + ms(1000), 7);
        assert_eq!(r.per_sec(), 2.0);
        // ten silent seconds later the next interval starts on the grid
        r.on_served(t0 + ms(11_500), 8, 1);
        r.tick(t0 + ms(11_999), 1);
        assert_eq!(r.per_sec(), 2.0);
        r.tick(t0 + ms(12_000), 1);
        assert_eq!(r.per_sec(), 8.0);
    }

    #[test]
    fn an_unsaturated_node_that_refuses_work_probes_upwards() {
        let t0 = Instant::now();
        let mut r = ServiceRate::new(200.0, 1.0, ms(1000), 0.3);
        r.tick(t0, 0);
        // 150 served, the queue empty, but tokens were refused: the estimate
        // was the limit, so it doubles
        r.on_served(t0 + ms(500), 150, 0);
        r.on_refused(t0 + ms(600), 0);
        r.tick(t0 + ms(1000), 0);
        assert_eq!(r.per_sec(), 400.0);
        r.on_served(t0 + ms(1400), 250, 0);
        r.on_refused(t0 + ms(1500), 0);
        r.tick(t0 + ms(2000), 0);
        assert_eq!(r.per_sec(), 800.0);
        // a saturated interval measures the node: 500 served with work queued
        r.on_served(t0 + ms(2500), 500, 10);
        r.on_refused(t0 + ms(2600), 10);
        r.tick(t0 + ms(3000), 10);
        assert_eq!(r.per_sec(), 0.3 * 500.0 + 0.7 * 800.0);
        // nothing refused, nothing queued, little served: unchanged
        r.on_served(t0 + ms(3500), 5, 0);
        r.tick(t0 + ms(4000), 0);
        assert_eq!(r.per_sec(), 0.3 * 500.0 + 0.7 * 800.0);
    }

    #[test]
    fn a_saturated_cpu_measures_capacity_with_the_queue_empty() {
        let t0 = Instant::now();
        let mut r = ServiceRate::new(1000.0, 1.0, ms(1000), 0.5);
        r.tick(t0, 0);
        r.on_served(t0 + ms(500), 300, 0);
        r.on_cpu_saturated(t0 + ms(600), 0);
        r.on_late(t0 + ms(700), 0);
        r.tick(t0 + ms(1000), 0);
        // 300 served while the CPU was busy and phones retransmitted: the
        // estimate falls towards what was served
        assert_eq!(r.per_sec(), 650.0);
        // a busy CPU with nobody waiting (a neighbour's load) changes nothing
        r.on_served(t0 + ms(1500), 10, 0);
        r.on_cpu_saturated(t0 + ms(1600), 0);
        r.tick(t0 + ms(2000), 0);
        assert_eq!(r.per_sec(), 650.0);
    }

    #[test]
    fn a_node_serving_far_less_than_its_estimate_does_not_probe() {
        let t0 = Instant::now();
        let mut r = ServiceRate::new(1000.0, 1.0, ms(1000), 0.5);
        r.tick(t0, 0);
        r.on_served(t0 + ms(500), 100, 0);
        r.on_refused(t0 + ms(700), 0);
        r.tick(t0 + ms(1000), 0);
        assert_eq!(r.per_sec(), 1000.0);
    }
}
