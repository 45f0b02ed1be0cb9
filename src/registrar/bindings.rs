//! RFC 3261 §10.3 steps 6–7: applying a REGISTER's contacts to an AOR's bindings.
//! Pure: no clock, no IO, so every rule is unit-tested directly.

use crate::location::Flow;
use crate::location::{Binding, NodeId, UnixMs};
use crate::sip::message::values::{param, NameAddr};
use crate::sip::message::Contacts;

pub struct Limits {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
}

/// What one REGISTER asks for, extracted from the request.
pub struct RegisterRequest<'a> {
    pub aor: &'a str,
    pub contacts: Option<Contacts>,
    /// The `Expires` header, if any.
    pub expires: Option<u32>,
    pub call_id: &'a str,
    pub cseq: u32,
    pub path: Vec<String>,
    pub source: Flow,
    pub user_agent: Option<&'a str>,
    pub owner: &'a NodeId,
    /// This AOR's registrations replaced by another node's (key, Call-ID they
    /// had): `LocationTable::moved_away`.
    pub moved: &'a [(String, String)],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// 400: `*` mixed with other contacts or with a non-zero expiry (§10.3 step 6).
    BadWildcard,
    /// 423 with Min-Expires (§10.3 step 7).
    IntervalTooBrief { min: u32 },
    /// Call-ID same and CSeq not higher than the binding's (§10.3 step 7): out of order.
    OutOfOrder,
    /// More contacts than `max_contacts`.
    TooManyContacts,
}

/// The changes to make durable.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub upserted: Vec<Binding>,
    pub removed: Vec<Binding>,
}

fn q_thousandths(v: &str) -> Option<u16> {
    // RFC 3261 §25.1: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
    let f: f64 = v.parse().ok()?;
    (0.0..=1.0)
        .contains(&f)
        .then(|| (f * 1000.0).round() as u16)
}

/// The key identifying a binding within its AOR (RFC 5626 §6: instance + reg-id;
/// RFC 5627: instance alone; else the contact URI compared per RFC 3261 §19.1.4,
/// approximated by scheme, user, lower-cased host, port and transport).
fn binding_key(na: &NameAddr, instance: Option<&str>, reg_id: Option<u32>) -> String {
    match (instance, reg_id) {
        (Some(i), Some(r)) => format!("inst:{i}:{r}"),
        (Some(i), None) => format!("inst:{i}"),
        _ => {
            let u = &na.uri;
            format!(
                "uri:{:?}:{}@{}:{}:{}",
                u.scheme,
                u.user_unescaped().unwrap_or_default(),
                u.host,
                u.port.unwrap_or(0),
                u.param("transport")
                    .flatten()
                    .unwrap_or("")
                    .to_ascii_lowercase()
            )
        }
    }
}

/// Orders an AOR's bindings highest q first (RFC 3261 §20.10: q is the relative
/// preference; absent means 1.0), so the 200 OK of §10.3 step 8 lists contacts in
/// the order a caller would try them. Stable: equal q keeps registration order.
fn by_preference(bindings: &mut [Binding]) {
    bindings.sort_by_key(|b| std::cmp::Reverse(b.q.unwrap_or(1000)));
}

/// Applies the request to `existing`, returning the AOR's new bindings and the changes.
/// All-or-nothing: on error nothing is changed (§10.3 step 7, "the update MUST be aborted").
pub fn apply(
    existing: &[Binding],
    req: &RegisterRequest<'_>,
    limits: &Limits,
    now: UnixMs,
) -> Result<(Vec<Binding>, Changes), RegisterError> {
    let mut bindings: Vec<Binding> = existing
        .iter()
        .filter(|b| b.expires_at > now)
        .cloned()
        .collect();
    let live = bindings.len();
    let mut changes = Changes::default();
    // Bindings that already lapsed are removed now (durably too).
    changes
        .removed
        .extend(existing.iter().filter(|b| b.expires_at <= now).cloned());
    let list = match &req.contacts {
        None => {
            // a query: §10.3 step 6 "no Contact"
            by_preference(&mut bindings);
            return Ok((bindings, changes));
        }
        Some(Contacts::Wildcard) => {
            // §10.3 step 6: `*` only with Expires: 0 and no other contact.
            if req.expires != Some(0) {
                return Err(RegisterError::BadWildcard);
            }
            let mut kept = Vec::new();
            for b in bindings.drain(..) {
                // Remove only if this Call-ID/CSeq is not older than the binding's.
                if b.call_id == req.call_id && req.cseq <= b.cseq {
                    return Err(RegisterError::OutOfOrder);
                }
                if moved_away(&b, req) {
                    kept.push(b);
                } else {
                    changes.removed.push(b);
                }
            }
            by_preference(&mut kept);
            return Ok((kept, changes));
        }
        Some(Contacts::List(list)) => list,
    };
    for na in list {
        let expires = match param(&na.params, "expires") {
            Some(Some(v)) => v.parse::<u64>().unwrap_or(u64::MAX).min(u32::MAX as u64) as u32,
            _ => req.expires.unwrap_or(limits.default_expires),
        };
        if expires != 0 && expires < limits.min_expires {
            return Err(RegisterError::IntervalTooBrief {
                min: limits.min_expires,
            });
        }
        let expires = expires.min(limits.max_expires);
        let instance = param(&na.params, "+sip.instance")
            .flatten()
            .map(str::to_string);
        let reg_id = param(&na.params, "reg-id")
            .flatten()
            .and_then(|r| r.parse::<u32>().ok());
        let key = binding_key(na, instance.as_deref(), reg_id);
        let pos = bindings.iter().position(|b| b.key == key);
        if let Some(i) = pos {
            let b = &bindings[i];
            if b.call_id == req.call_id && req.cseq <= b.cseq {
                return Err(RegisterError::OutOfOrder);
            }
        }
        if expires == 0 {
            if let Some(i) = pos.filter(|i| !moved_away(&bindings[*i], req)) {
                changes.removed.push(bindings.remove(i));
            }
            continue;
        }
        let binding = Binding {
            aor: req.aor.to_string(),
            key,
            contact: na.uri.as_str().to_string(),
            instance,
            reg_id,
            q: param(&na.params, "q").flatten().and_then(q_thousandths),
            call_id: req.call_id.to_string(),
            cseq: req.cseq,
            expires_at: now + expires as u64 * 1000,
            path: req.path.clone(),
            source: req.source,
            user_agent: req.user_agent.map(str::to_string),
            owner: req.owner.clone(),
            version: crate::location::next_version(),
        };
        match pos {
            Some(i) => bindings[i] = binding.clone(),
            None => bindings.push(binding.clone()),
        }
        changes.upserted.push(binding);
    }
    // Only a request that adds bindings beyond the bound is refused: an AOR already
    // over it (the bound was lowered and the node restarted) must still be able to
    // refresh or remove its bindings (RFC 3261 §10.3 step 7 allows removal always).
    if bindings.len() > limits.max_contacts && bindings.len() > live {
        return Err(RegisterError::TooManyContacts);
    }
    by_preference(&mut bindings);
    // A contact listed twice in one request: keep only its last state in `upserted`.
    let mut seen = std::collections::HashSet::new();
    changes.upserted.reverse();
    changes.upserted.retain(|b| seen.insert(b.key.clone()));
    changes.upserted.reverse();
    Ok((bindings, changes))
}

/// A binding another node holds, which replaced the registration this request
/// belongs to (its Call-ID is the one the replaced registration had here): the
/// phone registered there since. An unregistration here speaks of that older
/// registration and must not remove the newer one (seed 002 FIG. 7: a phone
/// re-homing to its primary tells its backup to forget it; in a cluster the
/// backup already holds the primary's binding, replicated). Any other
/// unregistration removes the binding wherever it is held (RFC 3261 §10.3
/// step 7: the nodes are one registrar).
fn moved_away(b: &Binding, req: &RegisterRequest<'_>) -> bool {
    &b.owner != req.owner
        && req
            .moved
            .iter()
            .any(|(key, call_id)| key == &b.key && call_id == req.call_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        min_expires: 60,
        max_expires: 7200,
        default_expires: 3600,
        max_contacts: 3,
    };

    fn node() -> NodeId {
        NodeId("n1".into())
    }

    fn req<'a>(
        contacts: &str,
        expires: Option<u32>,
        call_id: &'a str,
        cseq: u32,
        owner: &'a NodeId,
    ) -> RegisterRequest<'a> {
        RegisterRequest {
            aor: "sip:alice@example.com",
            contacts: Some(Contacts::parse(contacts).unwrap()),
            expires,
            call_id,
            cseq,
            path: vec![],
            source: "udp:127.0.0.1:5070".parse().unwrap(),
            user_agent: None,
            owner,
            moved: &[],
        }
    }

    #[test]
    fn adds_refreshes_and_removes() {
        let n = node();
        let (b, ch) = apply(
            &[],
            &req("<sip:a@1.2.3.4>", Some(600), "c1", 1, &n),
            &LIMITS,
            1_000,
        )
        .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].expires_at, 601_000);
        assert_eq!(ch.upserted.len(), 1);
        // refresh with per-contact expires overriding the header
        let (b, _) = apply(
            &b,
            &req("<sip:a@1.2.3.4>;expires=120", Some(600), "c1", 2, &n),
            &LIMITS,
            2_000,
        )
        .unwrap();
        assert_eq!(b[0].expires_at, 122_000);
        // removal
        let (b, ch) = apply(
            &b,
            &req("<sip:a@1.2.3.4>", Some(0), "c1", 3, &n),
            &LIMITS,
            3_000,
        )
        .unwrap();
        assert!(b.is_empty());
        assert_eq!(ch.removed.len(), 1);
    }

    #[test]
    fn an_unregistration_here_leaves_the_newer_registration_at_another_node() {
        // the phone moved to node n2 (its primary) with another Call-ID; its
        // unregistration from n1 (the backup it left) must not remove that
        let (here, primary) = (node(), NodeId("n2".into()));
        let (b, _) = apply(
            &[],
            &req("<sip:a@1.2.3.4>", Some(600), "at-primary", 1, &primary),
            &LIMITS,
            1_000,
        )
        .unwrap();
        // n1 saw its own registration (Call-ID "at-backup") replaced
        let moved = [(b[0].key.clone(), "at-backup".to_string())];
        for contacts in ["<sip:a@1.2.3.4>", "*"] {
            let mut r = req(contacts, Some(0), "at-backup", 7, &here);
            r.moved = &moved;
            let (left, ch) = apply(&b, &r, &LIMITS, 2_000).unwrap();
            assert_eq!(left.len(), 1, "{contacts}");
            assert!(ch.removed.is_empty(), "{contacts}");
        }
        // any other unregistration here removes it wherever it is held (the
        // phone moved here and unregisters: the nodes are one registrar)
        for call_id in ["at-primary", "somewhere-else"] {
            let mut r = req("<sip:a@1.2.3.4>", Some(0), call_id, 2, &here);
            r.moved = &moved;
            let (left, ch) = apply(&b, &r, &LIMITS, 2_000).unwrap();
            assert!(left.is_empty(), "{call_id}");
            assert_eq!(ch.removed.len(), 1);
        }
    }

    #[test]
    fn interval_too_brief_and_clamping() {
        let n = node();
        assert_eq!(
            apply(&[], &req("<sip:a@h>", Some(30), "c", 1, &n), &LIMITS, 0).unwrap_err(),
            RegisterError::IntervalTooBrief { min: 60 }
        );
        let (b, _) = apply(
            &[],
            &req("<sip:a@h>", Some(999_999), "c", 1, &n),
            &LIMITS,
            0,
        )
        .unwrap();
        assert_eq!(b[0].expires_at, 7_200_000);
    }

    #[test]
    fn out_of_order_cseq_is_rejected_but_new_call_id_wins() {
        let n = node();
        let (b, _) = apply(&[], &req("<sip:a@h>", None, "c", 5, &n), &LIMITS, 0).unwrap();
        assert_eq!(
            apply(&b, &req("<sip:a@h>", None, "c", 5, &n), &LIMITS, 0).unwrap_err(),
            RegisterError::OutOfOrder
        );
        assert_eq!(
            apply(&b, &req("<sip:a@h>", None, "c", 4, &n), &LIMITS, 0).unwrap_err(),
            RegisterError::OutOfOrder
        );
        assert!(apply(&b, &req("<sip:a@h>", None, "other", 1, &n), &LIMITS, 0).is_ok());
    }

    #[test]
    fn wildcard_rules() {
        let n = node();
        let (b, _) = apply(
            &[],
            &req("<sip:a@h>, <sip:b@h>", None, "c", 1, &n),
            &LIMITS,
            0,
        )
        .unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(
            apply(&b, &req("*", Some(10), "c", 2, &n), &LIMITS, 0).unwrap_err(),
            RegisterError::BadWildcard
        );
        assert_eq!(
            apply(&b, &req("*", None, "c", 2, &n), &LIMITS, 0).unwrap_err(),
            RegisterError::BadWildcard
        );
        let (b, ch) = apply(&b, &req("*", Some(0), "c", 2, &n), &LIMITS, 0).unwrap();
        assert!(b.is_empty());
        assert_eq!(ch.removed.len(), 2);
    }

    #[test]
    fn instance_replaces_earlier_binding_and_limit_applies() {
        let n = node();
        let inst = r#"+sip.instance="<urn:uuid:1>";reg-id=1"#;
        let (b, _) = apply(
            &[],
            &req(&format!("<sip:a@10.0.0.1:5060>;{inst}"), None, "c1", 1, &n),
            &LIMITS,
            0,
        )
        .unwrap();
        // same instance from a new address and new Call-ID (phone rebooted, new IP)
        let (b, _) = apply(
            &b,
            &req(&format!("<sip:a@10.0.0.2:5062>;{inst}"), None, "c2", 1, &n),
            &LIMITS,
            0,
        )
        .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].contact, "sip:a@10.0.0.2:5062");
        assert_eq!(b[0].reg_id, Some(1));
        let e = apply(
            &b,
            &req("<sip:x@h1>, <sip:x@h2>, <sip:x@h3>", None, "c3", 1, &n),
            &LIMITS,
            0,
        )
        .unwrap_err();
        assert_eq!(e, RegisterError::TooManyContacts);
    }

    #[test]
    fn over_the_bound_bindings_can_still_be_refreshed_and_removed() {
        let n = node();
        let wide = Limits {
            max_contacts: 10,
            ..LIMITS
        };
        let (b, _) = apply(
            &[],
            &req(
                "<sip:x@h1>, <sip:x@h2>, <sip:x@h3>, <sip:x@h4>",
                None,
                "c",
                1,
                &n,
            ),
            &wide,
            0,
        )
        .unwrap();
        // the bound is now 3 (config changed): refresh, removal, replacement work
        let (b, _) = apply(&b, &req("<sip:x@h1>", Some(600), "c", 2, &n), &LIMITS, 0).unwrap();
        assert_eq!(b.len(), 4);
        let (b, _) = apply(&b, &req("<sip:x@h2>", Some(0), "c", 3, &n), &LIMITS, 0).unwrap();
        assert_eq!(b.len(), 3);
        // but nothing is added beyond it
        assert_eq!(
            apply(&b, &req("<sip:x@h5>", None, "c", 4, &n), &LIMITS, 0).unwrap_err(),
            RegisterError::TooManyContacts
        );
    }

    #[test]
    fn q_values_parsed() {
        let n = node();
        let (b, _) = apply(
            &[],
            &req("<sip:a@h>;q=0.7, <sip:b@h>;q=1", None, "c", 1, &n),
            &LIMITS,
            0,
        )
        .unwrap();
        // listed highest preference first
        assert_eq!(b[0].q, Some(1000));
        assert_eq!(b[0].contact, "sip:b@h");
        assert_eq!(b[1].q, Some(700));
        assert_eq!(q_thousandths("1.5"), None);
    }
}
