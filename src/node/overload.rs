//! The node's side of call overload control (`crate::admission::overload`):
//! one call from `forward` for each new out-of-dialog INVITE, kept here so the
//! INVITE path in `mod.rs` stays a single line.

use super::{Node, Now};
use crate::admission::overload::{stamp_oc, wants_oc, CallVerdict};
use crate::sip::message::build::{new_tag, response_to};
use crate::sip::message::{HeaderName, Request, Response};

impl Node {
    /// Decides a new INVITE: `Some(503)` to answer it with at once, or `None`
    /// to proxy it. Either way an upstream that asked for RFC 7339 overload
    /// control finds the feedback in its Via: it is stamped on the request's
    /// top Via here, as `received` is (§18.2.1), and every response built
    /// from the request or relayed for it carries that Via back (§5.2).
    pub(super) fn admit_call(&self, now: Now, req: &mut Request) -> Option<Response> {
        let overload = self.overload.as_ref()?;
        let load = self.proxy.lock().invite_load();
        let (verdict, feedback, wait) = {
            let mut c = overload.lock();
            let v = c.on_invite(now.at, load);
            (v, c.feedback(), c.projected_wait())
        };
        metrics::gauge!("tandem_calls_unanswered_invites").set(load.unanswered as f64);
        metrics::gauge!("tandem_calls_projected_wait_seconds").set(wait.as_secs_f64());
        if req.top_via().is_some_and(|v| wants_oc(&v)) {
            if let Some(h) = req.headers.first_mut(&HeaderName::Via) {
                if let Some(v) = stamp_oc(&h.value, feedback) {
                    h.value = v;
                }
            }
        }
        match verdict {
            CallVerdict::Admit => None,
            CallVerdict::Refuse { retry_after_secs } => {
                metrics::counter!("tandem_calls_refused_total", "reason" => "overload")
                    .increment(1);
                let mut r = response_to(req, 503, Some(&new_tag()));
                r.headers
                    .push(HeaderName::RetryAfter, retry_after_secs.to_string());
                Some(r)
            }
        }
    }
}
