//! The simulator's output: one line per phone (optional) and a summary, as
//! `key=value` text and as a JSON line (docs/sim.md lists the fields).

use super::phone::Phone;
use super::profile::{Mode, Profile};
use serde::Serialize;
use std::time::Instant;

/// Totals over all phones. Times are milliseconds since the simulator started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub mode: Option<Mode>,
    pub phones: u32,
    /// Holding a binding at the end.
    pub registered: u32,
    /// ... with the primary.
    pub registered_primary: u32,
    pub gave_up: u32,
    pub requests: u64,
    pub retransmissions: u64,
    #[serde(rename = "503s")]
    pub status_503: u64,
    #[serde(rename = "401s")]
    pub status_401: u64,
    pub timeouts: u64,
    pub failovers: u64,
    pub rehomes: u64,
    pub tokens: u64,
    /// When the last phone first registered.
    pub last_registration_ms: u64,
    /// Longest time from a phone's first request to its first registration.
    pub max_first_attempt_to_registered_ms: u64,
    /// Phones registered per second (first registrations / last_registration_ms).
    pub registrations_per_s: f64,
    pub priority_phones: u32,
    pub priority_registered: u32,
    pub priority_last_ms: u64,
    pub priority_max_first_attempt_to_registered_ms: u64,
    pub elapsed_ms: u64,
    /// Why the run ended: `settled` (every phone registered where it belongs or
    /// gave up) or `duration`.
    pub stopped: &'static str,
}

fn ms(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_millis() as u64
}

pub fn summarize(
    p: &Profile,
    phones: &[Phone],
    t0: Instant,
    end: Instant,
    stopped: &'static str,
) -> Summary {
    let mut s = Summary {
        mode: Some(p.mode),
        phones: phones.len() as u32,
        elapsed_ms: ms(t0, end),
        stopped,
        ..Summary::default()
    };
    let mut first_registrations = 0u64;
    for ph in phones {
        let st = &ph.stats;
        s.requests += u64::from(st.requests);
        s.retransmissions += u64::from(st.retransmissions);
        s.status_503 += u64::from(st.status_503);
        s.status_401 += u64::from(st.status_401);
        s.timeouts += u64::from(st.timeouts);
        s.failovers += u64::from(st.failovers);
        s.rehomes += u64::from(st.rehomes);
        s.tokens += u64::from(st.tokens);
        s.gave_up += u32::from(ph.gave_up());
        s.registered += u32::from(ph.bound().is_some());
        s.registered_primary += u32::from(ph.bound() == Some(0));
        s.priority_phones += u32::from(ph.is_priority());
        if let Some(r) = st.registered {
            first_registrations += 1;
            let at = ms(t0, r);
            let took = st.first_attempt.map_or(0, |f| ms(f, r));
            s.last_registration_ms = s.last_registration_ms.max(at);
            s.max_first_attempt_to_registered_ms = s.max_first_attempt_to_registered_ms.max(took);
            if ph.is_priority() {
                s.priority_last_ms = s.priority_last_ms.max(at);
                s.priority_max_first_attempt_to_registered_ms =
                    s.priority_max_first_attempt_to_registered_ms.max(took);
            }
        }
        if ph.is_priority() && ph.bound().is_some() {
            s.priority_registered += 1;
        }
    }
    if s.last_registration_ms > 0 {
        let rate = first_registrations as f64 * 1000.0 / s.last_registration_ms as f64;
        s.registrations_per_s = (rate * 10.0).round() / 10.0;
    }
    s
}

impl Summary {
    /// Every phone holds a binding (the exit status is 0).
    pub fn all_registered(&self) -> bool {
        self.registered == self.phones
    }

    /// The `sim: key=value …` line.
    pub fn line(&self) -> String {
        let mode = match self.mode {
            Some(Mode::Token) => "token",
            Some(Mode::Plain) => "plain",
            None => "-",
        };
        format!(
            "sim: mode={mode} phones={} registered={} registered_primary={} gave_up={} \
             requests={} retransmissions={} 503s={} 401s={} timeouts={} failovers={} \
             rehomes={} tokens={} last_registration_ms={} max_first_attempt_to_registered_ms={} \
             registrations_per_s={} priority_phones={} priority_registered={} priority_last_ms={} \
             priority_max_first_attempt_to_registered_ms={} elapsed_ms={} stopped={}",
            self.phones,
            self.registered,
            self.registered_primary,
            self.gave_up,
            self.requests,
            self.retransmissions,
            self.status_503,
            self.status_401,
            self.timeouts,
            self.failovers,
            self.rehomes,
            self.tokens,
            self.last_registration_ms,
            self.max_first_attempt_to_registered_ms,
            self.registrations_per_s,
            self.priority_phones,
            self.priority_registered,
            self.priority_last_ms,
            self.priority_max_first_attempt_to_registered_ms,
            self.elapsed_ms,
            self.stopped,
        )
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `phone user=… state=… registrar=… …` for `--per-phone`.
pub fn phone_line(p: &Profile, ph: &Phone, t0: Instant) -> String {
    let st = &ph.stats;
    let opt = |t: Option<Instant>| t.map_or("-".to_string(), |t| ms(t0, t).to_string());
    format!(
        "phone user={} priority={} state={} registrar={} first_attempt_ms={} registered_ms={} \
         attempts={} requests={} retransmissions={} 503s={} 401s={} timeouts={} failovers={} \
         rehomes={} tokens={}",
        p.user(ph.index()),
        ph.is_priority(),
        ph.state_name(),
        ph.bound().map_or("-".to_string(), |b| b.to_string()),
        opt(st.first_attempt),
        opt(st.registered),
        st.attempts,
        st.requests,
        st.retransmissions,
        st.status_503,
        st.status_401,
        st.timeouts,
        st.failovers,
        st.rehomes,
        st.tokens,
    )
}
