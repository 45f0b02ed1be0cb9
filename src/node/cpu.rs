//! The machine's CPU, for seed 002's load measure (FIG. 5 step 102: "the load
//! … of controller 12"). In a storm most of a REGISTER's cost is paid before it
//! could be queued (receive, parse, transaction, digest), and SIPp, PostgreSQL or
//! a neighbour may hold the other cores: a node can be saturated with its queue
//! empty, while datagrams wait in the socket buffer and phones retransmit. So a
//! busy CPU counts as saturation, like work left in the queue. The whole
//! machine is measured, not the process: a core taken by someone else is as
//! unavailable as one taken by Tandem.

/// Busy and total jiffies of all CPUs, from the first line of `/proc/stat`
/// (`cpu user nice system idle iowait irq softirq steal …`); idle and iowait
/// count as free.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 5 {
        return None;
    }
    let total: u64 = values.iter().sum();
    let free = values[3] + values[4];
    Some((total - free, total))
}

/// The busy fraction of the machine's CPUs between two samples.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: Option<(u64, u64)>,
}

impl CpuMeter {
    /// The busy fraction (0–1) since the previous call; `None` on the first call
    /// or where `/proc/stat` cannot be read (then CPU never counts as saturation).
    pub fn sample(&mut self) -> Option<f64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        self.update(parse_proc_stat(&text)?)
    }

    fn update(&mut self, now: (u64, u64)) -> Option<f64> {
        let before = self.last.replace(now)?;
        let total = now.1.checked_sub(before.1).filter(|t| *t > 0)?;
        let busy = now.0.saturating_sub(before.0);
        Some((busy as f64 / total as f64).min(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_is_read_as_busy_and_total_jiffies() {
        let text = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(parse_proc_stat(text), Some((160, 980)));
        assert_eq!(parse_proc_stat("intr 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x 4 5\n"), None);
    }

    #[test]
    fn the_busy_fraction_is_taken_between_samples() {
        let mut m = CpuMeter::default();
        assert_eq!(m.update((100, 1000)), None);
        assert_eq!(m.update((190, 1100)), Some(0.9));
        // no time passed: no fraction
        assert_eq!(m.update((190, 1100)), None);
    }

    #[test]
    fn this_machine_can_be_measured() {
        let mut m = CpuMeter::default();
        assert_eq!(m.sample(), None, "the first sample has nothing to compare");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let f = m.sample();
        assert!(f.is_none_or(|f| (0.0..=1.0).contains(&f)), "{f:?}");
    }
}
