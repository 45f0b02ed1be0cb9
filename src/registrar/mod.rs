//! The registrar (RFC 3261 §10.3): authenticates a REGISTER, applies its contacts to
//! the location table, persists the changes and answers with every current binding.

pub mod bindings;
pub mod poll;

use crate::config::{Config, DigestAlgorithm};
use crate::location::Flow;
use crate::location::{LocationTable, NodeId, UnixMs};
use crate::sip::auth::Algorithm;
use crate::sip::authenticator::{Authenticator, Denied, Role};
use crate::sip::message::build::response_to;
use crate::sip::message::values::{parse_scalar, NameAddr};
use crate::sip::message::{Contacts, HeaderName, Request, Response};
use crate::store::{PendingCommit, StoreOp, StoreWriter};
use bindings::{Limits, RegisterError, RegisterRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the core does with a REGISTER's answer.
pub enum Outcome {
    /// Send this final response now.
    Respond(Response),
    /// Send this response once the store committed these changes.
    AfterCommit(Response, PendingCommit),
}

/// A REGISTER whose AOR is served and whose credentials were accepted.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// The normalised AOR (`sip:user@host`) the bindings belong to.
    pub aor: String,
}

pub struct Registrar {
    authenticate: bool,
    /// Shared with the proxy's authentication of calls (one account set, one
    /// nonce space).
    auth: Arc<Authenticator>,
    limits: Limits,
    domains: Vec<String>,
    location: Arc<LocationTable>,
    store: StoreWriter,
    node: NodeId,
}

impl Registrar {
    pub fn new(
        cfg: &Config,
        store_users: Vec<(String, String)>,
        location: Arc<LocationTable>,
        store: StoreWriter,
        now: Instant,
    ) -> Registrar {
        let r = &cfg.registrar;
        let mut users: HashMap<String, String> = store_users.into_iter().collect();
        // the config file wins over the store for a user present in both
        users.extend(
            cfg.users
                .iter()
                .map(|u| (u.username.clone(), u.password.clone())),
        );
        let algorithms = r
            .algorithms
            .iter()
            .map(|a| match a {
                DigestAlgorithm::Sha256 => Algorithm::Sha256,
                DigestAlgorithm::Md5 => Algorithm::Md5,
            })
            .collect();
        Registrar {
            authenticate: r.authenticate,
            auth: Arc::new(Authenticator::new(
                r.realm.clone(),
                algorithms,
                users,
                Duration::from_secs(r.nonce_ttl_secs),
                now,
            )),
            limits: Limits {
                min_expires: r.min_expires_secs,
                max_expires: r.max_expires_secs,
                default_expires: r.default_expires_secs,
                max_contacts: r.max_contacts_per_aor,
            },
            domains: cfg
                .sip
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            location,
            store,
            node: NodeId(cfg.node.id.as_str().into()),
        }
    }

    /// Whether `user` has an account (a known user without bindings gets 480, §16).
    pub fn is_user(&self, user: &str) -> bool {
        self.auth.is_user(user)
    }

    /// The digest authenticator, shared with the proxy (calls get 407).
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// This node's identity (the owner of the bindings registered here).
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// Removes one binding of this node's (its phone stopped answering polls, or
    /// its TCP flow closed), if it is still the registration at `version`: a
    /// newer registration of the same binding stays. Deleted everywhere through
    /// the store (seed 000 FIG. 4B). Returns whether it was removed.
    pub fn drop_binding(&self, aor: &str, key: &str, version: u64) -> bool {
        let store = &self.store;
        self.location
            .update(aor, |existing| {
                let Some(gone) = existing
                    .iter()
                    .find(|b| b.key == key && b.version == version)
                else {
                    return Err(());
                };
                // queued under the table's lock, in order with the changes around it
                store.submit_detached(vec![StoreOp::Delete {
                    aor: gone.aor.clone(),
                    key: gone.key.clone(),
                    version,
                }]);
                let kept = existing.iter().filter(|b| b.key != key).cloned().collect();
                Ok((kept, ()))
            })
            .is_ok()
    }

    pub fn location(&self) -> &Arc<LocationTable> {
        &self.location
    }

    /// The cheap first half of a REGISTER (RFC 3261 §10.3 steps 1–4): the AOR is a
    /// SIP URI of a served domain, and the credentials are valid. What fails gets
    /// its answer (400, 404, 401 challenge). Admission control runs between the
    /// halves, so challenges are never queued (seed 002: the queue holds the
    /// binding writes, the work that costs).
    pub fn authorize(&self, req: &Request, now: Instant) -> Result<Authorized, Response> {
        // §10.3 step 5: the AOR is the To URI; it must be SIP or SIPS (RFC 4475 `unksm2`).
        let Some(to) = req.to() else {
            return Err(error(req, 400, None));
        };
        if !to.uri.is_sip() || to.uri.user.is_none() {
            metrics::counter!("tandem_register_total", "outcome" => "invalid_aor").increment(1);
            return Err(error(req, 400, Some("Invalid AOR")));
        }
        if !self.domains.is_empty() && !self.domains.contains(&to.uri.host) {
            metrics::counter!("tandem_register_total", "outcome" => "foreign_domain").increment(1);
            return Err(error(req, 404, Some("Domain Not Served")));
        }
        let aor = to.uri.aor_key();
        // §10.3 step 4 (after the AOR check so foreign junk is not challenged).
        if self.authenticate {
            let user = to.uri.user_unescaped().unwrap_or_default();
            match self.auth.check(req, Role::Registrar, &user, now) {
                Ok(()) => {}
                Err(Denied::Challenge(r)) => {
                    metrics::counter!("tandem_register_total", "outcome" => "challenged")
                        .increment(1);
                    return Err(r);
                }
                Err(Denied::Malformed(r)) => return Err(r),
            }
        }
        Ok(Authorized { aor })
    }

    /// The second half of a REGISTER (§10.3 steps 5–8): applies its contacts to
    /// the AOR's bindings, queues the store changes, and answers (after the
    /// commit) with every current binding.
    pub fn apply(
        &self,
        req: &Request,
        authorized: &Authorized,
        source: Flow,
        now_ms: UnixMs,
    ) -> Outcome {
        let fail = |status: u16, why: &str| Outcome::Respond(error(req, status, Some(why)));
        let aor = authorized.aor.as_str();
        let contacts = {
            let mut all: Vec<NameAddr> = Vec::new();
            let mut wildcard = false;
            let Some(fields) = req.contacts() else {
                return fail(400, "Malformed Contact");
            };
            for c in fields {
                match c {
                    Contacts::Wildcard => wildcard = true,
                    Contacts::List(l) => all.extend(l.iter().cloned()),
                }
            }
            match (wildcard, all.is_empty()) {
                (true, true) => Some(Contacts::Wildcard),
                (true, false) => return fail(400, "Wildcard With Other Contacts"),
                (false, true) => None,
                (false, false) => Some(Contacts::List(all)),
            }
        };
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        let mut path = Vec::new();
        for v in req.headers.get_all(&HeaderName::Path) {
            match crate::sip::message::scan::split_commas(v) {
                Some(parts) => path.extend(parts.into_iter().map(str::to_string)),
                None => return fail(400, "Malformed Path"),
            }
        }
        let register = RegisterRequest {
            aor,
            contacts,
            expires: req
                .headers
                .get(&HeaderName::Expires)
                .and_then(|e| parse_scalar(e, u32::MAX as u64))
                .map(|e| e as u32),
            call_id: req.call_id().unwrap_or(""),
            cseq,
            path,
            source,
            user_agent: req.headers.get(&HeaderName::UserAgent),
            owner: &self.node,
            moved: &[],
        };
        let result = self.location.update_knowing_moves(aor, |existing, moved| {
            let register = RegisterRequest { moved, ..register };
            let (new, changes) = bindings::apply(existing, &register, &self.limits, now_ms)?;
            let ok = self.ok_response(req, &new, now_ms);
            let mut ops: Vec<StoreOp> = changes
                .removed
                .into_iter()
                .map(|b| StoreOp::Delete {
                    aor: b.aor,
                    key: b.key,
                    version: b.version,
                })
                .collect();
            ops.extend(changes.upserted.into_iter().map(StoreOp::Upsert));
            // Queued under the table's lock, so the store sees changes to one
            // binding in the order the table made them (a racing expiry purge or a
            // second REGISTER cannot overtake this one).
            let pending = (!ops.is_empty()).then(|| self.store.submit_pending(ops));
            Ok::<_, RegisterError>((new, (ok, pending)))
        });
        match result {
            Ok((ok, pending)) => {
                metrics::gauge!("tandem_bindings_active").set(self.location.len() as f64);
                match pending {
                    None => {
                        metrics::counter!("tandem_register_total", "outcome" => "query")
                            .increment(1);
                        Outcome::Respond(ok)
                    }
                    Some(pending) => {
                        metrics::counter!("tandem_register_total", "outcome" => "ok").increment(1);
                        Outcome::AfterCommit(ok, pending)
                    }
                }
            }
            Err(e) => {
                let (status, outcome, why) = match e {
                    RegisterError::BadWildcard => (400, "bad_wildcard", "Invalid Wildcard"),
                    RegisterError::IntervalTooBrief { .. } => {
                        (423, "interval_too_brief", "Interval Too Brief")
                    }
                    RegisterError::OutOfOrder => (500, "out_of_order", "Out Of Order Request"),
                    RegisterError::TooManyContacts => {
                        (403, "too_many_contacts", "Too Many Contacts")
                    }
                };
                metrics::counter!("tandem_register_total", "outcome" => outcome).increment(1);
                let mut r = response_to(req, status, Some(&crate::sip::message::build::new_tag()));
                r.reason = why.to_string();
                if let RegisterError::IntervalTooBrief { min } = e {
                    r.headers.push(HeaderName::MinExpires, min.to_string());
                }
                Outcome::Respond(r)
            }
        }
    }

    /// §10.3 step 8: 200 OK listing every current binding with its remaining time.
    fn ok_response(
        &self,
        req: &Request,
        bindings: &[crate::location::Binding],
        now_ms: UnixMs,
    ) -> Response {
        let mut r = response_to(req, 200, Some(&crate::sip::message::build::new_tag()));
        for b in bindings {
            let mut v = format!("<{}>;expires={}", b.contact, b.remaining_secs(now_ms));
            if let Some(q) = b.q {
                v.push_str(&format!(";q={}.{:03}", q / 1000, q % 1000));
            }
            if let Some(i) = &b.instance {
                v.push_str(";+sip.instance=");
                v.push_str(i);
            }
            if let Some(r) = b.reg_id {
                v.push_str(&format!(";reg-id={r}"));
            }
            r.headers.push(HeaderName::Contact, v);
        }
        // RFC 3327 §5.3: the registrar returns the Path it stored.
        for p in req.headers.get_all(&HeaderName::Path) {
            r.headers.push(HeaderName::Path, p);
        }
        r.headers.push(HeaderName::Date, httpdate(now_ms));
        r
    }
}

/// A final error answer to `req` with a fresh To tag, and `why` as its reason
/// phrase in place of the standard one.
fn error(req: &Request, status: u16, why: Option<&str>) -> Response {
    let mut r = response_to(req, status, Some(&crate::sip::message::build::new_tag()));
    if let Some(why) = why {
        r.reason = why.to_string();
    }
    r
}

/// RFC 3261 §20.17 Date (RFC 1123 format, GMT).
pub fn httpdate(ms: UnixMs) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(mo - 1) as usize];
    format!("{wd}, {d:02} {mon} {y} {h:02}:{m:02}:{s:02} GMT")
}

#[cfg(test)]
mod tests {
    #[test]
    fn httpdate_formats_rfc1123() {
        assert_eq!(super::httpdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            super::httpdate(1_795_000_000_000),
            "Wed, 18 Nov 2026 11:06:40 GMT"
        );
    }
}
