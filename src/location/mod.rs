//! The location table (seed 000's "registration table"): bindings per address-of-
//! record, in memory. Lookups never touch the store; the store only makes the table
//! durable (and, in the cluster issues, replicated). Knows nothing of SIP transports.

pub use crate::sip::transport::Flow;
use parking_lot::RwLock;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// Wall-clock milliseconds since the Unix epoch. Bindings outlive the process (they
/// are persisted), so their expiry is wall-clock time, not a monotonic `Instant`.
pub type UnixMs = u64;

pub fn now_ms() -> UnixMs {
    unix_ms(std::time::SystemTime::now())
}

/// A wall-clock time in Unix milliseconds (0 before the epoch).
pub fn unix_ms(t: std::time::SystemTime) -> UnixMs {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A version for a registration made now: wall-clock microseconds, bumped past
/// the last value handed out so it is unique and increasing on this node.
pub fn next_version() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let v = now.max(last + 1);
        match LAST.compare_exchange_weak(last, v, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return v,
            Err(seen) => last = seen,
        }
    }
}

/// The identity of a node (owner of the bindings it registered).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(pub Arc<str>);

/// One contact bound to an address-of-record (RFC 3261 §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Normalised AOR (`sip:user@host`).
    pub aor: String,
    /// What identifies this binding within its AOR: `+sip.instance` (+ `reg-id`)
    /// when the phone sent one (RFC 5626 §6), else the normalised contact URI.
    pub key: String,
    /// Contact URI exactly as the phone sent it.
    pub contact: String,
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    /// q-value in thousandths (RFC 3261 §20.10), `None` when not given.
    pub q: Option<u16>,
    pub call_id: String,
    pub cseq: u32,
    pub expires_at: UnixMs,
    /// Path header values (RFC 3327), in order.
    pub path: Vec<String>,
    /// Where the REGISTER came from, for NAT'd delivery later: UDP to that
    /// address, or TCP over that connection (a plain value type of `sip::transport`,
    /// the only thing this module takes from the transports).
    pub source: Flow,
    pub user_agent: Option<String>,
    pub owner: NodeId,
    /// When this registration was made, in microseconds of a clock that never
    /// repeats a value on one node ([`next_version`]). Two nodes' claims to one
    /// binding are settled by it the same way everywhere: the latest wins.
    pub version: u64,
}

impl Binding {
    pub fn remaining_secs(&self, now: UnixMs) -> u64 {
        self.expires_at.saturating_sub(now).div_ceil(1000)
    }
}

#[derive(Default)]
struct Inner {
    by_aor: HashMap<String, Vec<Binding>>,
    /// Registrations replaced by another node's newer one (the phone moved):
    /// AOR → (binding key, the Call-ID it had here), oldest first in `moved_order`,
    /// at most [`MAX_MOVED`]. See [`LocationTable::moved_away`].
    moved: HashMap<String, Vec<(String, String)>>,
    moved_order: std::collections::VecDeque<String>,
    /// Min-heap of (expiry, aor) with lazy deletion: an entry is checked against the
    /// table when it pops, so refreshes need no heap update.
    expiry: BinaryHeap<Reverse<(UnixMs, String)>>,
    count: usize,
}

/// Moved registrations remembered (a phone re-homing remembers its old one's
/// Call-ID here until this many others moved after it).
const MAX_MOVED: usize = 200_000;

impl Inner {
    fn remember_moved(&mut self, old: &Binding, new_owner: &NodeId) {
        if &old.owner == new_owner {
            return;
        }
        let list = self.moved.entry(old.aor.clone()).or_default();
        list.retain(|(k, _)| k != &old.key);
        list.push((old.key.clone(), old.call_id.clone()));
        self.moved_order.push_back(old.aor.clone());
        while self.moved_order.len() > MAX_MOVED {
            if let Some(aor) = self.moved_order.pop_front() {
                if let Some(l) = self.moved.get_mut(&aor) {
                    if !l.is_empty() {
                        l.remove(0);
                    }
                    if l.is_empty() {
                        self.moved.remove(&aor);
                    }
                }
            }
        }
    }
}

/// Thread-safe location table.
#[derive(Default)]
pub struct LocationTable {
    inner: RwLock<Inner>,
}

impl LocationTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Current (unexpired) bindings of an AOR, highest q first.
    pub fn lookup(&self, aor: &str, now: UnixMs) -> Vec<Binding> {
        let inner = self.inner.read();
        let mut v: Vec<Binding> = inner
            .by_aor
            .get(aor)
            .map(|b| b.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|b| Reverse(b.q.unwrap_or(1000)));
        v
    }

    /// Whether any unexpired binding of the AOR satisfies `pred` (no copies).
    pub fn any(&self, aor: &str, now: UnixMs, pred: impl Fn(&Binding) -> bool) -> bool {
        let inner = self.inner.read();
        inner
            .by_aor
            .get(aor)
            .is_some_and(|b| b.iter().any(|b| b.expires_at > now && pred(b)))
    }

    /// The registrations of `aor` this table saw replaced by another node's
    /// newer registration: (binding key, the Call-ID the replaced one had). A
    /// phone re-homing from this node (seed 002 FIG. 7) unregisters here with
    /// that Call-ID, and means the old registration, not the newer one.
    pub fn moved_away(&self, aor: &str) -> Vec<(String, String)> {
        self.inner
            .read()
            .moved
            .get(aor)
            .cloned()
            .unwrap_or_default()
    }

    /// Runs `f` on the AOR's bindings under the write lock (read-modify-write of one
    /// REGISTER is atomic). `f` returns the new list or an error that leaves it as is.
    pub fn update<T, E>(
        &self,
        aor: &str,
        f: impl FnOnce(&[Binding]) -> Result<(Vec<Binding>, T), E>,
    ) -> Result<T, E> {
        self.update_knowing_moves(aor, |existing, _| f(existing))
    }

    /// [`update`](Self::update), with the AOR's [`moved_away`](Self::moved_away)
    /// list read under the same lock (read before it, a replicated change could
    /// slip in between and be judged by a stale list).
    pub fn update_knowing_moves<T, E>(
        &self,
        aor: &str,
        f: impl FnOnce(&[Binding], &[(String, String)]) -> Result<(Vec<Binding>, T), E>,
    ) -> Result<T, E> {
        let mut inner = self.inner.write();
        let old = inner.by_aor.get(aor).map(Vec::as_slice).unwrap_or(&[]);
        let moved = inner.moved.get(aor).map(Vec::as_slice).unwrap_or(&[]);
        let old_len = old.len();
        let (new, out) = f(old, moved)?;
        let new_len = new.len();
        let earliest = new.iter().map(|b| b.expires_at).min();
        if new.is_empty() {
            inner.by_aor.remove(aor);
        } else {
            inner.by_aor.insert(aor.to_string(), new);
        }
        inner.count = inner.count + new_len - old_len;
        if let Some(t) = earliest {
            inner.expiry.push(Reverse((t, aor.to_string())));
        }
        Ok(out)
    }

    /// Inserts bindings loaded from the store at start-up.
    pub fn load(&self, bindings: Vec<Binding>) {
        let mut inner = self.inner.write();
        for b in bindings {
            inner.expiry.push(Reverse((b.expires_at, b.aor.clone())));
            let list = inner.by_aor.entry(b.aor.clone()).or_default();
            if let Some(old) = list.iter_mut().find(|o| o.key == b.key) {
                // a registration made meanwhile (a newer version) stays
                if b.version >= old.version {
                    *old = b;
                }
            } else {
                list.push(b);
                inner.count += 1;
            }
        }
    }

    /// Removes every binding whose expiry has passed; returns them.
    pub fn purge_expired(&self, now: UnixMs) -> Vec<Binding> {
        self.purge_expired_then(now, |_| {})
    }

    /// Like [`purge_expired`](Self::purge_expired), calling `removed` while the table
    /// is still locked, so whoever records the removal (the store) sees it in order
    /// with the updates around it.
    pub fn purge_expired_then(
        &self,
        now: UnixMs,
        removed_hook: impl FnOnce(&[Binding]),
    ) -> Vec<Binding> {
        let mut inner = self.inner.write();
        let mut removed = Vec::new();
        while let Some(Reverse((t, _))) = inner.expiry.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, aor))) = inner.expiry.pop() else {
                break;
            };
            let Some(list) = inner.by_aor.get_mut(&aor) else {
                continue;
            };
            let before = list.len();
            let mut kept = Vec::with_capacity(before);
            for b in list.drain(..) {
                if b.expires_at <= now {
                    removed.push(b);
                } else {
                    kept.push(b);
                }
            }
            let after = kept.len();
            let next = kept.iter().map(|b| b.expires_at).min();
            if kept.is_empty() {
                inner.by_aor.remove(&aor);
            } else {
                *inner.by_aor.get_mut(&aor).expect("present") = kept;
            }
            inner.count -= before - after;
            if let Some(next) = next {
                // keep one heap entry per AOR alive for its next expiry
                if before != after {
                    inner.expiry.push(Reverse((next, aor)));
                }
            }
        }
        if !removed.is_empty() {
            removed_hook(&removed);
        }
        removed
    }

    /// Applies a change another node made (replication): `deleted` says the
    /// binding at `b.version` or older is gone, else `b` is its latest state. The
    /// higher version wins, so every node ends with the same table whatever order
    /// conflicting changes reached it in. Returns whether the table changed.
    pub fn apply_remote(&self, b: Binding, deleted: bool) -> bool {
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        let aor = b.aor.clone();
        let list = inner.by_aor.entry(aor.clone()).or_default();
        let pos = list.iter().position(|o| o.key == b.key);
        let mut moved = None;
        let changed = match (pos, deleted) {
            (Some(i), true) if list[i].version <= b.version => {
                list.remove(i);
                inner.count -= 1;
                true
            }
            (Some(i), false) if list[i].version < b.version => {
                inner.expiry.push(Reverse((b.expires_at, b.aor.clone())));
                let owner = b.owner.clone();
                moved = Some((std::mem::replace(&mut list[i], b), owner));
                true
            }
            (None, false) => {
                inner.expiry.push(Reverse((b.expires_at, b.aor.clone())));
                list.push(b);
                inner.count += 1;
                true
            }
            _ => false,
        };
        if list.is_empty() {
            inner.by_aor.remove(&aor);
        }
        if let Some((old, owner)) = moved {
            inner.remember_moved(&old, &owner);
        }
        changed
    }

    /// Removes every binding `owner` holds (a node that stopped heartbeating);
    /// returns how many.
    pub fn remove_owner(&self, owner: &NodeId) -> usize {
        let mut inner = self.inner.write();
        let mut removed = 0;
        inner.by_aor.retain(|_, list| {
            let before = list.len();
            list.retain(|b| &b.owner != owner);
            removed += before - list.len();
            !list.is_empty()
        });
        inner.count -= removed;
        removed
    }

    /// Removes `owner`'s bindings of one AOR (a stale entry: the owner said it
    /// no longer has them); returns how many.
    pub fn remove_owned(&self, aor: &str, owner: &NodeId) -> usize {
        let mut inner = self.inner.write();
        let Some(list) = inner.by_aor.get_mut(aor) else {
            return 0;
        };
        let before = list.len();
        list.retain(|b| &b.owner != owner);
        let removed = before - list.len();
        if list.is_empty() {
            inner.by_aor.remove(aor);
        }
        inner.count -= removed;
        removed
    }

    /// Every binding held, for the admin listener and tests (a copy).
    pub fn snapshot(&self) -> Vec<Binding> {
        self.inner
            .read()
            .by_aor
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Number of bindings held (including ones expired but not yet purged).
    pub fn len(&self) -> usize {
        self.inner.read().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(aor: &str, key: &str, exp: UnixMs, q: Option<u16>) -> Binding {
        Binding {
            aor: aor.into(),
            key: key.into(),
            contact: key.into(),
            instance: None,
            reg_id: None,
            q,
            call_id: "c".into(),
            cseq: 1,
            expires_at: exp,
            path: vec![],
            source: "udp:127.0.0.1:5070".parse().unwrap(),
            user_agent: None,
            owner: NodeId("n".into()),
            version: 1,
        }
    }

    fn owned(key: &str, owner: &str, version: u64) -> Binding {
        Binding {
            owner: NodeId(owner.into()),
            version,
            ..b("sip:1000@h", key, 10_000, None)
        }
    }

    #[test]
    fn a_registration_replaced_by_another_nodes_is_remembered_with_its_call_id() {
        let t = LocationTable::new();
        let mine = Binding {
            call_id: "at-b".into(),
            ..owned("k", "b", 1)
        };
        t.apply_remote(mine, false);
        assert!(t.moved_away("sip:1000@h").is_empty());
        // a newer state from the same node is no move
        t.apply_remote(
            Binding {
                call_id: "at-b".into(),
                ..owned("k", "b", 2)
            },
            false,
        );
        assert!(t.moved_away("sip:1000@h").is_empty());
        // the phone registered at a
        t.apply_remote(
            Binding {
                call_id: "at-a".into(),
                ..owned("k", "a", 3)
            },
            false,
        );
        assert_eq!(
            t.moved_away("sip:1000@h"),
            vec![("k".to_string(), "at-b".to_string())]
        );
    }

    #[test]
    fn remote_changes_settle_by_version_in_any_order() {
        // the seed's race: 1000 registered at A (v1), then at C (v2); A's deletion
        // of v1 arrives anywhere before or after C's registration
        let orders: [&[(Binding, bool)]; 2] = [
            &[
                (owned("k", "a", 1), false),
                (owned("k", "c", 2), false),
                (owned("k", "a", 1), true),
            ],
            &[
                (owned("k", "a", 1), false),
                (owned("k", "a", 1), true),
                (owned("k", "c", 2), false),
            ],
        ];
        for order in orders {
            let t = LocationTable::new();
            for (bnd, deleted) in order {
                t.apply_remote(bnd.clone(), *deleted);
            }
            let held = t.lookup("sip:1000@h", 0);
            assert_eq!(held.len(), 1);
            assert_eq!(held[0].owner, NodeId("c".into()));
            assert_eq!(t.len(), 1);
        }
        // an older state never replaces a newer one
        let t = LocationTable::new();
        assert!(t.apply_remote(owned("k", "c", 2), false));
        assert!(!t.apply_remote(owned("k", "a", 1), false));
        assert_eq!(t.lookup("sip:1000@h", 0)[0].owner, NodeId("c".into()));
    }

    #[test]
    fn a_dead_owners_bindings_are_removed_and_no_one_elses() {
        let t = LocationTable::new();
        t.apply_remote(owned("k1", "a", 1), false);
        t.apply_remote(owned("k2", "b", 1), false);
        t.apply_remote(
            Binding {
                aor: "sip:x@h".into(),
                ..owned("k3", "a", 1)
            },
            false,
        );
        assert_eq!(t.remove_owner(&NodeId("a".into())), 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.snapshot()[0].key, "k2");
        assert!(t.lookup("sip:x@h", 0).is_empty());
    }

    #[test]
    fn lookup_orders_by_q_and_hides_expired() {
        let t = LocationTable::new();
        t.update::<_, ()>("sip:a@h", |_| {
            Ok((
                vec![
                    b("sip:a@h", "x", 5000, Some(500)),
                    b("sip:a@h", "y", 9000, Some(900)),
                    b("sip:a@h", "z", 100, None),
                ],
                (),
            ))
        })
        .unwrap();
        let l = t.lookup("sip:a@h", 1000);
        assert_eq!(
            l.iter().map(|b| b.key.as_str()).collect::<Vec<_>>(),
            vec!["y", "x"]
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn purge_removes_on_time_even_after_refresh() {
        let t = LocationTable::new();
        t.update::<_, ()>("sip:a@h", |_| Ok((vec![b("sip:a@h", "x", 1000, None)], ())))
            .unwrap();
        // refreshed to a later expiry: the stale heap entry must not remove it
        t.update::<_, ()>("sip:a@h", |_| Ok((vec![b("sip:a@h", "x", 5000, None)], ())))
            .unwrap();
        assert!(t.purge_expired(1500).is_empty());
        assert_eq!(t.len(), 1);
        let gone = t.purge_expired(5000);
        assert_eq!(gone.len(), 1);
        assert_eq!(t.len(), 0);
        assert!(t.lookup("sip:a@h", 0).is_empty());
    }

    #[test]
    fn failed_update_changes_nothing() {
        let t = LocationTable::new();
        let r: Result<(), &str> = t.update("sip:a@h", |_| Err("no"));
        assert!(r.is_err());
        assert!(t.is_empty());
    }
}
