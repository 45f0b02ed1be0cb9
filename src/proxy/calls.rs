//! The call-state table: every INVITE Tandem routes, from the first INVITE to a while
//! after its end, in memory. Sans-IO: the proxy reports what it sees (`on_*`, with
//! the wall-clock time passed in), the admin listener reads [`CallTable::snapshot`],
//! a periodic task drains [`CallTable::take_finished`] into CDRs and calls
//! [`CallTable::expire`]. Knows nothing of SIP messages or transports.
//!
//! A call is keyed by [`CallKey`] (Call-ID + From tag) from its INVITE on, since
//! there is no To tag yet and forked early dialogs share it; once answered it also
//! carries its confirmed [`DialogId`] (Call-ID + both tags), by which a BYE from
//! either side finds it. The stand-by takeover will rebuild the table from those.
//!
//! Timestamps (`started_at`, `answered_at`, `ended_at`) are wall-clock milliseconds
//! since the Unix epoch ([`UnixMs`]), in memory, in `GET /calls` and in CDRs.
//!
//! Metrics: gauge `tandem_calls_active` (Trying + Early + Confirmed), counter
//! `tandem_call_attempts_total{outcome}` (`answered`, `rejected`, `cancelled`,
//! `timeout`, `failed`; each attempt counted once, when answered or when it ends
//! unanswered), histogram `tandem_call_setup_seconds` (answer time − INVITE time),
//! counter `tandem_cdrs_dropped_total` (finished calls nobody drained in time).

use crate::location::UnixMs;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An INVITE's call before any To tag: Call-ID and the caller's From tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallKey {
    pub call_id: String,
    pub from_tag: String,
}

/// A dialog (RFC 3261 §12): Call-ID, From tag and To tag, as the caller's INVITE
/// and the answer named them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DialogId {
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: String,
}

impl DialogId {
    /// The same dialog seen from the other side (From and To tags swapped): a BYE
    /// from the callee carries its own tag in From.
    pub fn reversed(&self) -> DialogId {
        DialogId {
            call_id: self.call_id.clone(),
            from_tag: self.to_tag.clone(),
            to_tag: self.from_tag.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// INVITE forwarded, no provisional response with a To tag yet.
    Trying,
    /// At least one early dialog (a 1xx with a To tag); forks may have several.
    Early,
    /// Answered (2xx); `dialog` names the confirmed dialog.
    Confirmed,
    /// Ended: `end_reason` says how.
    Terminated,
}

/// Why a call ended. Serialized lowercase (`"bye"`, `"cancel"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// A BYE ended the call (answered), or the caller's BYE ended an early dialog.
    Bye,
    /// The caller cancelled before an answer.
    Cancel,
    /// A final non-2xx response from downstream (4xx, 5xx, 6xx).
    Rejected,
    /// No final response in time (Timer B/C; the proxy answers 408).
    Timeout,
    /// Tandem could not route it (no target, transport error).
    Failed,
}

impl EndReason {
    /// The `outcome` label of `tandem_call_attempts_total` for an unanswered call.
    fn unanswered_outcome(self) -> &'static str {
        match self {
            EndReason::Bye | EndReason::Cancel => "cancelled",
            EndReason::Rejected => "rejected",
            EndReason::Timeout => "timeout",
            EndReason::Failed => "failed",
        }
    }
}

/// One call as the table knows it. Timestamps are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub key: CallKey,
    /// The confirmed dialog, once answered.
    pub dialog: Option<DialogId>,
    /// From URI of the INVITE.
    pub caller: String,
    /// Request-URI as dialed.
    pub callee: String,
    /// The contact or gateway address the call was sent to (the one that answered).
    pub target: Option<String>,
    /// Gateway name, when routed to one.
    pub gateway: Option<String>,
    pub state: CallState,
    /// Final status: 200 when answered, the error status otherwise.
    pub status: Option<u16>,
    pub started_at: UnixMs,
    pub answered_at: Option<UnixMs>,
    pub ended_at: Option<UnixMs>,
    pub end_reason: Option<EndReason>,
}

impl Call {
    pub fn is_active(&self) -> bool {
        self.state != CallState::Terminated
    }

    /// Seconds from answer to end (millisecond resolution), for answered calls that ended.
    pub fn duration_secs(&self) -> Option<f64> {
        let (a, e) = (self.answered_at?, self.ended_at?);
        Some(e.saturating_sub(a) as f64 / 1000.0)
    }
}

/// Wall-clock time as Unix milliseconds (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> UnixMs {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Entry {
    call: Call,
    /// Distinguishes this call from an earlier one with the same key (a new INVITE
    /// after a 407 reuses Call-ID and From tag), for the lazy `ended` queue.
    seq: u64,
}

/// The call-state table. Not thread-safe by itself: the node keeps it in a mutex.
pub struct CallTable {
    calls: HashMap<CallKey, Entry>,
    /// Confirmed, not yet terminated dialogs (caller's view) -> their call.
    dialogs: HashMap<DialogId, CallKey>,
    /// Terminated calls in the order they ended: (ended_at, seq, key). Entries whose
    /// call was replaced are skipped when they come up.
    ended: VecDeque<(UnixMs, u64, CallKey)>,
    /// Finished calls not yet taken for CDRs, oldest first.
    finished: VecDeque<Call>,
    max_calls: usize,
    active: usize,
    next_seq: u64,
}

impl CallTable {
    /// A table holding at most `max_calls` calls (active plus lingering terminated
    /// ones; terminated calls make room for new ones, active calls never do).
    pub fn new(max_calls: usize) -> CallTable {
        metrics::gauge!("tandem_calls_active").set(0.0);
        CallTable {
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            ended: VecDeque::new(),
            finished: VecDeque::new(),
            max_calls: max_calls.max(1),
            active: 0,
            next_seq: 0,
        }
    }

    /// A new INVITE (no To tag) was accepted for routing. Returns false when the
    /// key is already in the table and not terminated (a retransmission or a
    /// re-INVITE: nothing recorded) or when the table is full of active calls (the
    /// proxy answers 503; `get(&key)` is `None` then). A key whose earlier call
    /// ended (a new INVITE after a 401/407) starts a new call.
    pub fn on_invite(&mut self, now: SystemTime, key: CallKey, caller: &str, callee: &str) -> bool {
        if let Some(e) = self.calls.get(&key) {
            if e.call.is_active() {
                return false;
            }
            // the earlier attempt's CDR is already queued; its `ended` entry goes stale
            self.calls.remove(&key);
        }
        if self.calls.len() >= self.max_calls && !self.evict_oldest_ended() {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let call = Call {
            key: key.clone(),
            dialog: None,
            caller: caller.to_string(),
            callee: callee.to_string(),
            target: None,
            gateway: None,
            state: CallState::Trying,
            status: None,
            started_at: unix_ms(now),
            answered_at: None,
            ended_at: None,
            end_reason: None,
        };
        self.calls.insert(key, Entry { call, seq });
        self.set_active(self.active + 1);
        true
    }

    /// Records where the INVITE was sent (before any answer), so a failed call's
    /// CDR names the target and gateway too. Ignored once answered or ended.
    pub fn on_routed(&mut self, key: &CallKey, target: &str, gateway: Option<&str>) -> bool {
        match self.calls.get_mut(key) {
            Some(e) if matches!(e.call.state, CallState::Trying | CallState::Early) => {
                e.call.target = Some(target.to_string());
                e.call.gateway = gateway.map(str::to_string);
                true
            }
            _ => false,
        }
    }

    /// A provisional response: with a To tag it creates an early dialog (Trying →
    /// Early). Returns whether the state changed.
    pub fn on_provisional(
        &mut self,
        _now: SystemTime,
        key: &CallKey,
        to_tag: Option<&str>,
    ) -> bool {
        if to_tag.is_none_or(str::is_empty) {
            return false;
        }
        match self.calls.get_mut(key) {
            Some(e) if e.call.state == CallState::Trying => {
                e.call.state = CallState::Early;
                true
            }
            _ => false,
        }
    }

    /// A 2xx answered the INVITE: the call is confirmed with dialog (key, `to_tag`),
    /// `target` the address that answered, `gateway` its name when it is one.
    /// Records the setup time. Returns false (nothing changed) unless the call was
    /// Trying or Early: a second 2xx from another fork is not tracked.
    pub fn on_answered(
        &mut self,
        now: SystemTime,
        key: &CallKey,
        to_tag: &str,
        target: &str,
        gateway: Option<&str>,
    ) -> bool {
        let Some(e) = self.calls.get_mut(key) else {
            return false;
        };
        let c = &mut e.call;
        if !matches!(c.state, CallState::Trying | CallState::Early) {
            return false;
        }
        let at = unix_ms(now);
        let dialog = DialogId {
            call_id: key.call_id.clone(),
            from_tag: key.from_tag.clone(),
            to_tag: to_tag.to_string(),
        };
        c.state = CallState::Confirmed;
        c.status = Some(200);
        c.answered_at = Some(at);
        c.target = Some(target.to_string());
        c.gateway = gateway.map(str::to_string);
        c.dialog = Some(dialog.clone());
        let setup = at.saturating_sub(c.started_at) as f64 / 1000.0;
        self.dialogs.insert(dialog, key.clone());
        metrics::histogram!("tandem_call_setup_seconds").record(setup);
        metrics::counter!("tandem_call_attempts_total", "outcome" => "answered").increment(1);
        true
    }

    /// The INVITE ended without an answer: final `status` (the error response, 408
    /// on timeout, …) and why. Returns false unless the call was Trying or Early.
    pub fn on_failed(
        &mut self,
        now: SystemTime,
        key: &CallKey,
        status: u16,
        reason: EndReason,
    ) -> bool {
        match self.calls.get(key) {
            Some(e) if matches!(e.call.state, CallState::Trying | CallState::Early) => {}
            _ => return false,
        }
        self.terminate(now, key, Some(status), reason);
        true
    }

    /// The caller cancelled before an answer (call on the CANCEL or on the 487 it
    /// causes). Status 487. A call already answered is not affected (the 2xx crossed
    /// the CANCEL; a BYE will follow).
    pub fn on_cancelled(&mut self, now: SystemTime, key: &CallKey) -> bool {
        match self.calls.get(key) {
            Some(e) if matches!(e.call.state, CallState::Trying | CallState::Early) => {}
            _ => return false,
        }
        self.terminate(now, key, Some(487), EndReason::Cancel);
        true
    }

    /// A BYE in dialog `id` as the BYE names it (From tag = sender): matches the
    /// confirmed dialog in either direction. A BYE from the caller in an early
    /// dialog (RFC 3261 §15) ends the unanswered call. Returns whether a call ended.
    pub fn on_bye(&mut self, now: SystemTime, id: &DialogId) -> bool {
        let key = match self.dialogs.get(id) {
            Some(k) => k.clone(),
            None => match self.dialogs.get(&id.reversed()) {
                Some(k) => k.clone(),
                None => {
                    let key = CallKey {
                        call_id: id.call_id.clone(),
                        from_tag: id.from_tag.clone(),
                    };
                    match self.calls.get(&key) {
                        Some(e) if matches!(e.call.state, CallState::Trying | CallState::Early) => {
                            key
                        }
                        _ => return false,
                    }
                }
            },
        };
        let status = self.calls.get(&key).and_then(|e| e.call.status);
        self.terminate(now, &key, status, EndReason::Bye);
        true
    }

    fn terminate(
        &mut self,
        now: SystemTime,
        key: &CallKey,
        status: Option<u16>,
        reason: EndReason,
    ) {
        let Some(e) = self.calls.get_mut(key) else {
            return;
        };
        let c = &mut e.call;
        if !c.is_active() {
            return;
        }
        if c.state != CallState::Confirmed {
            metrics::counter!("tandem_call_attempts_total", "outcome" => reason.unanswered_outcome())
                .increment(1);
        }
        if let Some(d) = &c.dialog {
            self.dialogs.remove(d);
        }
        let at = unix_ms(now);
        c.state = CallState::Terminated;
        c.status = status;
        c.ended_at = Some(at);
        c.end_reason = Some(reason);
        self.ended.push_back((at, e.seq, key.clone()));
        if self.finished.len() >= self.max_calls {
            self.finished.pop_front();
            metrics::counter!("tandem_cdrs_dropped_total").increment(1);
        }
        self.finished.push_back(c.clone());
        self.set_active(self.active - 1);
    }

    pub fn get(&self, key: &CallKey) -> Option<&Call> {
        self.calls.get(key).map(|e| &e.call)
    }

    /// The active confirmed call of a dialog, in either direction.
    pub fn dialog(&self, id: &DialogId) -> Option<&Call> {
        let key = self
            .dialogs
            .get(id)
            .or_else(|| self.dialogs.get(&id.reversed()))?;
        self.get(key)
    }

    /// Calls in the table (active and lingering terminated).
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Calls in Trying, Early or Confirmed state.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Every call: active ones first (oldest first), then terminated ones (most
    /// recently ended first).
    pub fn snapshot(&self) -> Vec<Call> {
        let mut v: Vec<Call> = self.calls.values().map(|e| e.call.clone()).collect();
        v.sort_by(|a, b| match (a.is_active(), b.is_active()) {
            (true, true) => a.started_at.cmp(&b.started_at),
            (false, false) => b.ended_at.cmp(&a.ended_at),
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
        });
        v
    }

    /// Calls that ended since the last call, in the order they ended (each returned
    /// once). At most `max_calls` wait; older ones are dropped and counted.
    pub fn take_finished(&mut self) -> Vec<Call> {
        self.finished.drain(..).collect()
    }

    /// Drops terminated calls that ended `linger` or longer before `now`.
    /// Returns how many were dropped.
    pub fn expire(&mut self, now: SystemTime, linger: Duration) -> usize {
        let cutoff = unix_ms(now).saturating_sub(linger.as_millis() as u64);
        let mut n = 0;
        while let Some((at, _, _)) = self.ended.front() {
            if *at > cutoff {
                break;
            }
            if self.pop_ended() {
                n += 1;
            }
        }
        n
    }

    /// Removes the oldest terminated call to make room; false if there is none.
    fn evict_oldest_ended(&mut self) -> bool {
        while !self.ended.is_empty() {
            if self.pop_ended() {
                return true;
            }
        }
        false
    }

    /// Pops the front of `ended`, removing its call if it is still that call.
    fn pop_ended(&mut self) -> bool {
        let Some((_, seq, key)) = self.ended.pop_front() else {
            return false;
        };
        match self.calls.get(&key) {
            Some(e) if e.seq == seq && !e.call.is_active() => {
                self.calls.remove(&key);
                true
            }
            _ => false,
        }
    }

    fn set_active(&mut self, n: usize) {
        self.active = n;
        metrics::gauge!("tandem_calls_active").set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
    }

    fn key(id: &str) -> CallKey {
        CallKey {
            call_id: id.into(),
            from_tag: "ft".into(),
        }
    }

    fn invite(tab: &mut CallTable, at: u64, id: &str) -> bool {
        tab.on_invite(
            t(at),
            key(id),
            "sip:alice@example.com",
            "sip:1001@example.com",
        )
    }

    fn dialog(id: &str, from: &str, to: &str) -> DialogId {
        DialogId {
            call_id: id.into(),
            from_tag: from.into(),
            to_tag: to.into(),
        }
    }

    #[test]
    fn answered_call_then_bye_from_caller() {
        let mut tab = CallTable::new(10);
        assert!(invite(&mut tab, 0, "c1"));
        let c = tab.get(&key("c1")).unwrap();
        assert_eq!(c.state, CallState::Trying);
        assert_eq!(c.started_at, 1_700_000_000_000);
        assert_eq!(tab.active(), 1);
        // a 100 Trying carries no To tag
        assert!(!tab.on_provisional(t(10), &key("c1"), None));
        assert!(tab.on_provisional(t(100), &key("c1"), Some("tt")));
        assert_eq!(tab.get(&key("c1")).unwrap().state, CallState::Early);
        assert!(tab.on_answered(t(2_500), &key("c1"), "tt", "10.0.0.5:5060", Some("gw1")));
        let c = tab.get(&key("c1")).unwrap();
        assert_eq!(c.state, CallState::Confirmed);
        assert_eq!(c.dialog, Some(dialog("c1", "ft", "tt")));
        assert_eq!(c.answered_at, Some(1_700_000_002_500));
        assert_eq!(c.status, Some(200));
        assert_eq!(c.gateway.as_deref(), Some("gw1"));
        assert_eq!(c.target.as_deref(), Some("10.0.0.5:5060"));
        assert!(tab.dialog(&dialog("c1", "ft", "tt")).is_some());
        assert!(tab.take_finished().is_empty());
        assert!(tab.on_bye(t(62_500), &dialog("c1", "ft", "tt")));
        let c = tab.get(&key("c1")).unwrap();
        assert_eq!(c.state, CallState::Terminated);
        assert_eq!(c.end_reason, Some(EndReason::Bye));
        assert_eq!(c.status, Some(200));
        assert_eq!(c.duration_secs(), Some(60.0));
        assert_eq!(tab.active(), 0);
        // a retransmitted BYE finds nothing more to end
        assert!(!tab.on_bye(t(63_000), &dialog("c1", "ft", "tt")));
        assert!(tab.dialog(&dialog("c1", "ft", "tt")).is_none());
    }

    #[test]
    fn bye_from_callee_matches_with_tags_swapped() {
        let mut tab = CallTable::new(10);
        invite(&mut tab, 0, "c1");
        tab.on_answered(t(1_000), &key("c1"), "tt", "10.0.0.5:5060", None);
        // wrong tags: no match
        assert!(!tab.on_bye(t(5_000), &dialog("c1", "tt", "other")));
        assert!(tab.dialog(&dialog("c1", "tt", "ft")).is_some());
        assert!(tab.on_bye(t(5_000), &dialog("c1", "tt", "ft")));
        let c = tab.get(&key("c1")).unwrap();
        assert_eq!(c.state, CallState::Terminated);
        assert_eq!(c.end_reason, Some(EndReason::Bye));
        assert_eq!(c.duration_secs(), Some(4.0));
    }

    #[test]
    fn forked_early_dialogs_then_one_answers() {
        let mut tab = CallTable::new(10);
        invite(&mut tab, 0, "c1");
        assert!(tab.on_provisional(t(100), &key("c1"), Some("fork-a")));
        // a second early dialog from another fork: same call, still Early
        assert!(!tab.on_provisional(t(150), &key("c1"), Some("fork-b")));
        assert_eq!(tab.len(), 1);
        assert_eq!(tab.get(&key("c1")).unwrap().state, CallState::Early);
        assert!(tab.on_answered(t(900), &key("c1"), "fork-b", "10.0.0.7:5060", None));
        // fork A answering too is not tracked; the first answer stands
        assert!(!tab.on_answered(t(950), &key("c1"), "fork-a", "10.0.0.6:5060", None));
        let c = tab.get(&key("c1")).unwrap();
        assert_eq!(c.dialog, Some(dialog("c1", "ft", "fork-b")));
        assert_eq!(c.target.as_deref(), Some("10.0.0.7:5060"));
        // a late 487 from the cancelled fork does not end the answered call
        assert!(!tab.on_failed(t(960), &key("c1"), 487, EndReason::Rejected));
        assert!(!tab.on_cancelled(t(960), &key("c1")));
        assert!(!tab.on_bye(t(2_000), &dialog("c1", "ft", "fork-a")));
        assert!(tab.on_bye(t(2_000), &dialog("c1", "fork-b", "ft")));
    }

    #[test]
    fn unanswered_endings() {
        let mut tab = CallTable::new(10);
        for id in ["rej", "can", "tmo", "early-bye"] {
            assert!(invite(&mut tab, 0, id));
        }
        assert!(tab.on_routed(&key("rej"), "10.0.0.9:5060", Some("gw2")));
        assert!(tab.on_failed(t(300), &key("rej"), 486, EndReason::Rejected));
        tab.on_provisional(t(100), &key("can"), Some("x"));
        assert!(tab.on_cancelled(t(4_000), &key("can")));
        assert!(tab.on_failed(t(32_000), &key("tmo"), 408, EndReason::Timeout));
        assert!(tab.on_bye(t(500), &dialog("early-bye", "ft", "whatever")));
        assert_eq!(tab.active(), 0);
        // the 487 after the CANCEL changes nothing
        assert!(!tab.on_failed(t(4_100), &key("can"), 487, EndReason::Rejected));
        let c = tab.get(&key("rej")).unwrap();
        assert_eq!(
            (c.state, c.status, c.end_reason),
            (CallState::Terminated, Some(486), Some(EndReason::Rejected))
        );
        assert_eq!(c.gateway.as_deref(), Some("gw2"));
        assert_eq!(c.answered_at, None);
        assert_eq!(c.duration_secs(), None);
        let c = tab.get(&key("can")).unwrap();
        assert_eq!(
            (c.status, c.end_reason),
            (Some(487), Some(EndReason::Cancel))
        );
        let c = tab.get(&key("tmo")).unwrap();
        assert_eq!(
            (c.status, c.end_reason),
            (Some(408), Some(EndReason::Timeout))
        );
        assert_eq!(c.ended_at, Some(1_700_000_032_000));
        let c = tab.get(&key("early-bye")).unwrap();
        assert_eq!(c.end_reason, Some(EndReason::Bye));
        // nothing happens to unknown calls
        assert!(!tab.on_failed(t(1), &key("nope"), 500, EndReason::Failed));
        assert!(!tab.on_answered(t(1), &key("nope"), "x", "y", None));
        assert!(!tab.on_provisional(t(1), &key("nope"), Some("x")));
    }

    #[test]
    fn retransmitted_invite_is_not_a_new_call_but_a_retry_after_407_is() {
        let mut tab = CallTable::new(10);
        assert!(invite(&mut tab, 0, "c1"));
        assert!(!invite(&mut tab, 500, "c1"));
        assert_eq!(tab.len(), 1);
        tab.on_failed(t(600), &key("c1"), 407, EndReason::Rejected);
        assert_eq!(tab.take_finished().len(), 1);
        // same Call-ID and From tag, with credentials this time
        assert!(invite(&mut tab, 700, "c1"));
        let c = tab.get(&key("c1")).unwrap();
        assert_eq!(
            (c.state, c.started_at),
            (CallState::Trying, 1_700_000_000_700)
        );
        assert_eq!(tab.active(), 1);
        // the first attempt's expiry entry must not remove the second attempt
        assert_eq!(tab.expire(t(1_000_000), Duration::from_secs(1)), 0);
        assert!(tab.get(&key("c1")).is_some());
        // a re-INVITE in the confirmed dialog is not a new call either
        tab.on_answered(t(800), &key("c1"), "tt", "x", None);
        assert!(!invite(&mut tab, 900, "c1"));
    }

    #[test]
    fn expire_drops_terminated_calls_after_linger() {
        let mut tab = CallTable::new(10);
        invite(&mut tab, 0, "a");
        invite(&mut tab, 0, "b");
        invite(&mut tab, 0, "live");
        tab.on_failed(t(1_000), &key("a"), 404, EndReason::Rejected);
        tab.on_failed(t(5_000), &key("b"), 404, EndReason::Rejected);
        let linger = Duration::from_secs(10);
        assert_eq!(tab.expire(t(10_999), linger), 0);
        assert_eq!(tab.len(), 3);
        assert_eq!(tab.expire(t(11_000), linger), 1);
        assert!(tab.get(&key("a")).is_none());
        assert!(tab.get(&key("b")).is_some());
        // active calls never expire
        assert_eq!(tab.expire(t(1_000_000), linger), 1);
        assert_eq!(tab.len(), 1);
        assert!(tab.get(&key("live")).is_some());
    }

    #[test]
    fn bound_counts_active_calls_and_evicts_terminated_ones() {
        let mut tab = CallTable::new(2);
        assert!(invite(&mut tab, 0, "a"));
        assert!(invite(&mut tab, 0, "b"));
        assert!(!invite(&mut tab, 0, "c"));
        assert!(tab.get(&key("c")).is_none());
        tab.on_failed(t(10), &key("a"), 486, EndReason::Rejected);
        // the terminated call makes room
        assert!(invite(&mut tab, 20, "c"));
        assert!(tab.get(&key("a")).is_none());
        assert_eq!(tab.len(), 2);
        assert!(!invite(&mut tab, 30, "d"));
    }

    #[test]
    fn take_finished_returns_each_call_once() {
        let mut tab = CallTable::new(10);
        invite(&mut tab, 0, "a");
        invite(&mut tab, 0, "b");
        tab.on_answered(t(100), &key("a"), "tt", "x", None);
        assert!(tab.take_finished().is_empty());
        tab.on_failed(t(200), &key("b"), 480, EndReason::Rejected);
        tab.on_bye(t(300), &dialog("a", "ft", "tt"));
        let f = tab.take_finished();
        assert_eq!(
            f.iter().map(|c| c.key.call_id.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert!(tab.take_finished().is_empty());
        // they stay visible in the table until they expire
        assert_eq!(tab.len(), 2);
    }

    #[test]
    fn finished_queue_is_bounded() {
        let mut tab = CallTable::new(2);
        for i in 0..5u64 {
            let id = format!("c{i}");
            assert!(invite(&mut tab, i, &id));
            tab.on_failed(t(i + 1), &key(&id), 404, EndReason::Rejected);
        }
        let f = tab.take_finished();
        assert_eq!(
            f.iter().map(|c| c.key.call_id.as_str()).collect::<Vec<_>>(),
            ["c3", "c4"]
        );
    }

    #[test]
    fn snapshot_lists_active_calls_first_then_recently_ended() {
        let mut tab = CallTable::new(10);
        for (i, id) in ["old-end", "new-end", "active2", "active1"]
            .iter()
            .enumerate()
        {
            invite(&mut tab, 10 - i as u64, id);
        }
        tab.on_failed(t(100), &key("old-end"), 404, EndReason::Rejected);
        tab.on_failed(t(200), &key("new-end"), 404, EndReason::Rejected);
        let ids: Vec<String> = tab.snapshot().into_iter().map(|c| c.key.call_id).collect();
        assert_eq!(ids, ["active1", "active2", "new-end", "old-end"]);
    }

    #[test]
    fn serializes_lowercase_states_and_unix_ms() {
        let mut tab = CallTable::new(10);
        invite(&mut tab, 0, "c1");
        tab.on_answered(t(1_000), &key("c1"), "tt", "10.0.0.5:5060", Some("gw1"));
        tab.on_bye(t(3_000), &dialog("c1", "tt", "ft"));
        let v = serde_json::to_value(tab.get(&key("c1")).unwrap()).unwrap();
        assert_eq!(v["state"], "terminated");
        assert_eq!(v["end_reason"], "bye");
        assert_eq!(v["started_at"], 1_700_000_000_000u64);
        assert_eq!(v["dialog"]["to_tag"], "tt");
        assert_eq!(v["key"]["from_tag"], "ft");
        assert_eq!(v["callee"], "sip:1001@example.com");
        let back: Call = serde_json::from_value(v).unwrap();
        assert_eq!(&back, tab.get(&key("c1")).unwrap());
    }
}
