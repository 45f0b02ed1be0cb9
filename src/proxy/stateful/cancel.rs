//! Cancelling branches (RFC 3261 §16.10, §9.1): when the caller cancels, when a
//! branch answers 2xx or 6xx (§16.7 steps 5 and 10), and when Timer C fires.

use super::branch::BranchKey;
use super::Proxy;
use crate::sip::message::Method;
use crate::sip::transaction::key::TxKey;
use std::time::Instant;

impl Proxy {
    /// The caller cancelled (§16.10): every pending branch is cancelled; the
    /// branches' 487s then make the final answer. Returns whether `server` is ours.
    pub fn cancel(&mut self, now: Instant, server: &TxKey) -> bool {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return false;
        };
        ctx.cancelled = true;
        ctx.next.clear();
        let keys: Vec<BranchKey> = ctx.branch_keys().collect();
        for k in keys {
            self.cancel_branch(now, &k);
        }
        true
    }

    /// Cancels every branch of `server` but `except` (the one that answered).
    pub(super) fn cancel_others(&mut self, now: Instant, server: &TxKey, except: &BranchKey) {
        let Some(ctx) = self.contexts.get(server) else {
            return;
        };
        let keys: Vec<BranchKey> = ctx.branch_keys().filter(|k| k != except).collect();
        for k in keys {
            self.cancel_branch(now, &k);
        }
    }

    fn cancel_branch(&mut self, now: Instant, key: &BranchKey) {
        // §9.1: only an INVITE's branch is worth cancelling; a non-INVITE
        // transaction ends on its own within Timer F.
        if key.method != Method::Invite {
            return;
        }
        let Some(b) = self.branches.get_mut(key) else {
            return;
        };
        if b.done {
            return;
        }
        if b.ringing {
            self.send_cancel(now, key);
        } else {
            // §9.1: a CANCEL may only follow a provisional response.
            b.cancel_pending = true;
        }
    }

    /// §9.1: CANCEL with the branch's Request-URI, Via, From, To, Call-ID, CSeq
    /// number and Route, in a client transaction of its own.
    pub(super) fn send_cancel(&mut self, now: Instant, key: &BranchKey) {
        let Some(b) = self.branches.get(key) else {
            return;
        };
        let cancel = b.cancel(now, self.cfg.timers);
        let ckey = BranchKey {
            branch: key.branch.clone(),
            method: Method::Cancel,
        };
        self.branches.insert(ckey.clone(), cancel);
        self.drive(now, &ckey, None);
    }
}
