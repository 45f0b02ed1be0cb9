//! The `[admission]` section of the TOML file: plain data, deserialised by
//! `crate::config` (which owns the file and its error messages); this module
//! owns what the keys mean and turns them into the front's [`FrontConfig`].

use super::classify::{IpNetwork, PriorityRules};
use super::front::FrontConfig;
use super::overload::OverloadConfig;
use super::queue::Capacity;
use serde::Deserialize;
use std::time::Duration;

/// Seed 002's REGISTER front end (`docs/token-protocol.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Classify, queue and pace REGISTERs. `false`: every authorised REGISTER is
    /// served at once, as it arrives (no tokens, no 503 for load).
    pub enabled: bool,
    /// Tokens are granted, and initial REGISTERs queued, while the projected wait
    /// (backlog ÷ service rate) is below this; otherwise they get 503 with a slot.
    pub target_wait_ms: u64,
    /// No REGISTER waits in the queue longer than this (it then gets 503 with a
    /// slot); keep it well under a phone's Timer F (32 s).
    pub max_wait_ms: u64,
    /// A waiting REGISTER is raised one class per this much waiting.
    pub aging_ms: u64,
    /// Most REGISTERs waiting in the priority class.
    pub queue_priority: usize,
    /// Most REGISTERs waiting in the token class.
    pub queue_token: usize,
    /// Most REGISTERs waiting in the initial class.
    pub queue_initial: usize,
    /// How long a granted explicit token stays valid.
    pub token_timeout_secs: u64,
    /// How long after its Retry-After a refused phone's retry still counts as a
    /// token registration (its implicit token).
    pub implicit_window_secs: u64,
    /// Most explicit tokens outstanding; past it, token requests get 503.
    pub max_tokens: usize,
    /// Most implicit tokens remembered; past it, a refused phone's retry is an
    /// initial registration again.
    pub max_implicit: usize,
    /// Registrations per second assumed until one is measured.
    pub initial_rate: f64,
    /// Most REGISTERs whose binding writes are being committed at once; the
    /// rest wait in the queue, in class order.
    pub max_in_flight: usize,
    /// Serve at most this many REGISTERs a second (0: as fast as the store
    /// commits them). To spare a database shared with others, or to test storms.
    pub service_rate_limit: u32,
    /// The machine's CPU busy at or above this percentage counts as saturation
    /// in the load measure, like work left in the queue (0: CPU is ignored).
    pub cpu_saturation_percent: u8,
    /// AORs (`sip:user@host`) served at priority: gateways and other shared devices.
    pub priority_aors: Vec<String>,
    /// Source networks (`10.1.0.0/16`, `2001:db8::/32`, or an address) served at
    /// priority.
    pub priority_networks: Vec<String>,
    /// `Resource-Priority` namespaces (RFC 4412: `ets`, `wps`, …) served at priority.
    pub priority_namespaces: Vec<String>,
    /// `[admission.calls]`: overload control of new INVITEs (issue 9 item 6).
    pub calls: CallOverloadConfig,
}

/// `[admission.calls]`: new out-of-dialog INVITEs are refused with `503` +
/// `Retry-After` while the proxied INVITEs not yet answered would take longer
/// than `target_wait_ms` to be answered at the measured rate
/// (`crate::admission::overload`). In-dialog requests, ACK, CANCEL and BYE are
/// never refused.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallOverloadConfig {
    /// Refuse new INVITEs when overloaded. `false`: every INVITE is proxied.
    pub enabled: bool,
    /// Refuse while the unanswered INVITEs' projected wait (backlog ÷ first
    /// answers per second) is at least this; keep it well under T1 (500 ms) so
    /// nothing is retransmitted because the node is slow.
    pub target_wait_ms: u64,
    /// Never refuse while fewer INVITEs than this are unanswered (a slow
    /// gateway on a quiet node is not overload).
    pub min_backlog: usize,
    /// First answers per second assumed until the node has measured its own.
    pub initial_rate: f64,
    /// `Retry-After` of the 503 (seconds).
    pub retry_after_secs: u32,
    /// `oc-validity` of the RFC 7339 feedback given to upstream servers that
    /// put `oc` in their Via (milliseconds).
    pub oc_validity_ms: u64,
    /// A backlog over the limit for less than this is a burst the queue rides
    /// out, not overload: nothing is refused (applied only after a calm spell
    /// of 2 s without refusals; milliseconds, 0: refuse at once).
    pub burst_ms: u64,
}

impl Default for CallOverloadConfig {
    fn default() -> Self {
        let d = OverloadConfig::default();
        CallOverloadConfig {
            enabled: true,
            target_wait_ms: d.target_wait.as_millis() as u64,
            min_backlog: d.min_backlog,
            initial_rate: d.initial_rate,
            retry_after_secs: d.retry_after_secs,
            oc_validity_ms: d.oc_validity.as_millis() as u64,
            burst_ms: d.burst.as_millis() as u64,
        }
    }
}

impl CallOverloadConfig {
    /// Checks the keys and builds the controller's configuration; `None` when
    /// overload control is off. The error names the key within `[admission.calls]`.
    pub fn overload(&self) -> Result<Option<OverloadConfig>, Invalid> {
        let bad = |key: &str, reason: &str| Invalid {
            key: format!("calls.{key}"),
            reason: reason.to_string(),
        };
        // T1: past it, UDP callers retransmit what is already queued.
        if !(1..=10_000).contains(&self.target_wait_ms) {
            return Err(bad("target_wait_ms", "must be between 1 and 10000"));
        }
        if self.min_backlog == 0 {
            return Err(bad("min_backlog", "must be > 0"));
        }
        if !(self.initial_rate.is_finite() && self.initial_rate >= 1.0) {
            return Err(bad("initial_rate", "must be a number >= 1"));
        }
        // RFC 3261 §20.33: delta-seconds; 0 would invite an immediate retry.
        if !(1..=3600).contains(&self.retry_after_secs) {
            return Err(bad("retry_after_secs", "must be between 1 and 3600"));
        }
        if self.oc_validity_ms < 500 {
            // the reduction is recomputed every 500 ms: shorter feedback lapses
            return Err(bad("oc_validity_ms", "must be >= 500"));
        }
        // past T1 (500 ms) every UDP caller retransmits into the backlog
        if self.burst_ms > 2_000 {
            return Err(bad("burst_ms", "must be at most 2000"));
        }
        if !self.enabled {
            return Ok(None);
        }
        Ok(Some(OverloadConfig {
            target_wait: Duration::from_millis(self.target_wait_ms),
            min_backlog: self.min_backlog,
            initial_rate: self.initial_rate,
            retry_after_secs: self.retry_after_secs,
            oc_validity: Duration::from_millis(self.oc_validity_ms),
            burst: Duration::from_millis(self.burst_ms),
        }))
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        let front = FrontConfig::default();
        AdmissionConfig {
            enabled: true,
            // Below T1 (500 ms): a queued REGISTER over UDP is answered before
            // its phone's first retransmission (RFC 4320 forbids the early 100
            // that would slow it down; see `node/register.rs`).
            target_wait_ms: 400,
            max_wait_ms: front.max_wait.as_millis() as u64,
            aging_ms: front.aging.as_millis() as u64,
            queue_priority: front.capacity.priority,
            queue_token: front.capacity.token,
            queue_initial: front.capacity.initial,
            token_timeout_secs: front.token_timeout.as_secs(),
            implicit_window_secs: front.implicit_window.as_secs(),
            // a storm of 100,000 token-aware phones asks for 100,000 tokens
            // within their 30 s lifetime (50,000 throttled the simulator's
            // storm to a third of the node's rate)
            max_tokens: 200_000,
            max_implicit: front.max_implicit,
            // a durable node on a small machine serves thousands a second
            // (docs/benchmarks.md); what is assumed here paces the first
            // second's refusals, until the node has measured itself
            initial_rate: 1000.0,
            // twice the store's default batch: a commit in progress and the
            // next batch filling (fewer starved the store at 20,000/s)
            max_in_flight: 4096,
            service_rate_limit: 0,
            cpu_saturation_percent: 90,
            priority_aors: Vec::new(),
            priority_networks: Vec::new(),
            priority_namespaces: Vec::new(),
            calls: CallOverloadConfig::default(),
        }
    }
}

/// A bad key of `[admission]`: the key (without the section) and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The key within `[admission]`, e.g. `priority_networks[1]`.
    pub key: String,
    /// Why its value is refused.
    pub reason: String,
}

impl AdmissionConfig {
    /// Checks the keys and builds the front's configuration. `normalise_aor`
    /// turns a configured AOR into the registrar's key (`sip:user@host`), or
    /// says why it is not one.
    pub fn front(
        &self,
        normalise_aor: impl Fn(&str) -> Result<String, String>,
    ) -> Result<FrontConfig, Invalid> {
        let bad = |key: &str, reason: &str| Invalid {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        for (key, v) in [
            ("target_wait_ms", self.target_wait_ms),
            ("aging_ms", self.aging_ms),
            ("token_timeout_secs", self.token_timeout_secs),
            ("implicit_window_secs", self.implicit_window_secs),
        ] {
            if v == 0 {
                return Err(bad(key, "must be > 0"));
            }
        }
        // RFC 3261 §17.1.2.2: the phone's Timer F (64·T1 = 32 s) ends its
        // transaction; an answer after that is lost, and the phone starts over.
        if !(1..=30_000).contains(&self.max_wait_ms) {
            return Err(bad(
                "max_wait_ms",
                "must be between 1 and 30000 (a phone gives up at 32 s)",
            ));
        }
        for (key, v) in [
            ("queue_priority", self.queue_priority),
            ("queue_token", self.queue_token),
            ("queue_initial", self.queue_initial),
            ("max_in_flight", self.max_in_flight),
        ] {
            if v == 0 {
                return Err(bad(key, "must be > 0"));
            }
        }
        if self.cpu_saturation_percent > 100 {
            return Err(bad("cpu_saturation_percent", "must be between 0 and 100"));
        }
        if !(self.initial_rate.is_finite() && self.initial_rate >= 1.0) {
            return Err(bad("initial_rate", "must be a number >= 1"));
        }
        let mut rules = PriorityRules::default();
        for (i, a) in self.priority_aors.iter().enumerate() {
            let aor = normalise_aor(a).map_err(|why| Invalid {
                key: format!("priority_aors[{i}]"),
                reason: why,
            })?;
            rules.aors.insert(aor);
        }
        for (i, n) in self.priority_networks.iter().enumerate() {
            let net: IpNetwork = n.parse().map_err(|e| Invalid {
                key: format!("priority_networks[{i}]"),
                reason: format!("{e}"),
            })?;
            rules.networks.push(net);
        }
        for (i, ns) in self.priority_namespaces.iter().enumerate() {
            // RFC 4412 §3.1: namespace = 1*( alphanum / "-" / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
            let ok = !ns.is_empty()
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-!%*_+`'~".contains(&b));
            if !ok {
                return Err(Invalid {
                    key: format!("priority_namespaces[{i}]"),
                    reason: format!("{ns:?} is not an RFC 4412 namespace"),
                });
            }
            rules.namespaces.insert(ns.to_ascii_lowercase());
        }
        self.calls.overload()?;
        let ms = Duration::from_millis;
        Ok(FrontConfig {
            rules,
            target_wait: ms(self.target_wait_ms),
            max_wait: ms(self.max_wait_ms),
            aging: ms(self.aging_ms),
            capacity: Capacity {
                priority: self.queue_priority,
                token: self.queue_token,
                initial: self.queue_initial,
            },
            token_timeout: Duration::from_secs(self.token_timeout_secs),
            implicit_window: Duration::from_secs(self.implicit_window_secs),
            max_tokens: self.max_tokens,
            max_implicit: self.max_implicit,
            initial_rate: self.initial_rate,
            // a storm's first seconds decide its retry schedule: measure in
            // quarter seconds so the estimate settles within about one
            rate_interval: Duration::from_millis(250),
            ..FrontConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aor(s: &str) -> Result<String, String> {
        s.strip_prefix("sip:")
            .map(|r| format!("sip:{}", r.to_ascii_lowercase()))
            .ok_or_else(|| "not a sip: URI".to_string())
    }

    #[test]
    fn the_defaults_are_the_fronts_defaults_but_a_wait_under_t1() {
        let f = AdmissionConfig::default().front(aor).unwrap();
        let d = FrontConfig::default();
        assert_eq!(f.target_wait, Duration::from_millis(400));
        assert_eq!(f.max_wait, d.max_wait);
        assert_eq!(f.capacity, d.capacity);
        assert_eq!(f.token_timeout, d.token_timeout);
    }

    #[test]
    fn priority_rules_are_built_and_bad_entries_named() {
        let cfg = AdmissionConfig {
            priority_aors: vec!["sip:GW1@Example.com".into()],
            priority_networks: vec!["10.9.0.0/16".into()],
            priority_namespaces: vec!["ETS".into()],
            ..AdmissionConfig::default()
        };
        let f = cfg.front(aor).unwrap();
        assert!(f.rules.aors.contains("sip:gw1@example.com"));
        assert!(f.rules.networks[0].contains("10.9.3.4".parse().unwrap()));
        assert!(f.rules.namespaces.contains("ets"));

        let e = AdmissionConfig {
            priority_networks: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
            ..AdmissionConfig::default()
        }
        .front(aor)
        .unwrap_err();
        assert_eq!(e.key, "priority_networks[1]");
        let e = AdmissionConfig {
            priority_aors: vec!["gw@x".into()],
            ..AdmissionConfig::default()
        }
        .front(aor)
        .unwrap_err();
        assert_eq!(e.key, "priority_aors[0]");
        assert_eq!(e.reason, "not a sip: URI");
        let e = AdmissionConfig {
            priority_namespaces: vec!["e ts".into()],
            ..AdmissionConfig::default()
        }
        .front(aor)
        .unwrap_err();
        assert_eq!(e.key, "priority_namespaces[0]");
    }

    #[test]
    fn call_overload_keys_are_checked_and_named() {
        let on = CallOverloadConfig::default().overload().unwrap().unwrap();
        assert_eq!(on, OverloadConfig::default());
        let off = CallOverloadConfig {
            enabled: false,
            ..CallOverloadConfig::default()
        };
        assert_eq!(off.overload().unwrap(), None);
        for (cfg, key) in [
            (
                CallOverloadConfig {
                    target_wait_ms: 0,
                    ..CallOverloadConfig::default()
                },
                "calls.target_wait_ms",
            ),
            (
                CallOverloadConfig {
                    min_backlog: 0,
                    ..CallOverloadConfig::default()
                },
                "calls.min_backlog",
            ),
            (
                CallOverloadConfig {
                    initial_rate: f64::NAN,
                    ..CallOverloadConfig::default()
                },
                "calls.initial_rate",
            ),
            (
                CallOverloadConfig {
                    enabled: false,
                    retry_after_secs: 0,
                    ..CallOverloadConfig::default()
                },
                "calls.retry_after_secs",
            ),
            (
                CallOverloadConfig {
                    oc_validity_ms: 100,
                    ..CallOverloadConfig::default()
                },
                "calls.oc_validity_ms",
            ),
            (
                CallOverloadConfig {
                    burst_ms: 5000,
                    ..CallOverloadConfig::default()
                },
                "calls.burst_ms",
            ),
        ] {
            assert_eq!(cfg.overload().unwrap_err().key, key);
            let whole = AdmissionConfig {
                calls: cfg,
                ..AdmissionConfig::default()
            };
            assert_eq!(whole.front(aor).unwrap_err().key, key);
        }
    }

    #[test]
    fn a_wait_past_timer_f_is_refused() {
        let e = AdmissionConfig {
            max_wait_ms: 32_000,
            ..AdmissionConfig::default()
        }
        .front(aor)
        .unwrap_err();
        assert_eq!(e.key, "max_wait_ms");
        assert!(e.reason.contains("32 s"));
    }
}
