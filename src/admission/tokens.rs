//! Token information (seed 002 FIG. 2 item 64, FIG. 5 steps 108–112): the
//! registration tokens granted and not yet expired.
//!
//! Two kinds. *Explicit* tokens answer a token request (the OPTIONS
//! `Registration-Token: request` exchange) and come back in the REGISTER: opaque,
//! 128 random bits, validated by one hash lookup. *Implicit* tokens serve phones
//! that know nothing of tokens: a REGISTER refused with `503 + Retry-After N`
//! leaves an entry for its AOR and instance, valid from N to N + window, so the
//! retry the phone makes on time is served at token priority (seed 002: "the
//! requesting device 18 matches an entry in token information 64", FIG. 6 step 126).
//!
//! Memory is bounded: each kind has a cap, and expired entries leave through a
//! deadline queue in amortised O(1) (as `ReplyTargets` in `node` and the pinger's
//! deadlines do), so no scan ever walks the table.

use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// An explicit registration token: 128 random bits as 32 lowercase hex digits.
/// Unguessable when the generator is seeded from the OS (a `StdRng` is a CSPRNG),
/// and bound to the device it was granted to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistrationToken(String);

impl RegistrationToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegistrationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a token presented in a REGISTER turned out to be (seed 002 FIG. 6
/// steps 128–130). Only `Valid` raises the request's priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    /// Granted once, but its timeout has passed (step 130).
    Expired,
    /// Granted to another device.
    WrongDevice,
    /// Never granted, or expired long enough ago to be forgotten (step 128).
    Unknown,
}

/// Where a request stands against the implicit token of its AOR and instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImplicitCheck {
    None,
    /// The retry came before its window: `remaining` until it opens.
    Early {
        remaining: Duration,
    },
    Inside,
    /// The window has closed.
    Late,
}

/// The token table was full: grant nothing until some expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

struct Explicit {
    aor: String,
    expires: Instant,
    /// Presented in a REGISTER at least once. A token stays valid until its
    /// timeout (the challenged REGISTER comes back with credentials and the
    /// same token), but only counts as load to come until first used.
    redeemed: bool,
}

#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

pub struct TokenTable {
    explicit: HashMap<String, Explicit>,
    /// Expiry order: one timeout for all explicit tokens, so insertion order.
    explicit_order: VecDeque<(Instant, String)>,
    /// Granted and not yet presented: load that is on its way.
    pending: usize,
    max_explicit: usize,
    implicit: HashMap<String, Window>,
    /// Window ends, roughly in order (retry slots grow with time; jitter and
    /// overwrites make an entry leave a little late, never early: lookups check
    /// the window themselves). A popped entry removes the map's entry only if it
    /// is the same window, so an overwritten one is skipped.
    implicit_order: VecDeque<(Instant, String)>,
    max_implicit: usize,
    rng: StdRng,
}

impl TokenTable {
    pub fn new(max_explicit: usize, max_implicit: usize, rng: StdRng) -> TokenTable {
        TokenTable {
            explicit: HashMap::new(),
            explicit_order: VecDeque::new(),
            pending: 0,
            max_explicit,
            implicit: HashMap::new(),
            implicit_order: VecDeque::new(),
            max_implicit,
            rng,
        }
    }

    /// Grants a token to `aor` valid for `timeout` (seed 002 FIG. 5 steps 108–112).
    pub fn grant(
        &mut self,
        now: Instant,
        aor: &str,
        timeout: Duration,
    ) -> Result<RegistrationToken, TableFull> {
        self.expire(now);
        if self.explicit.len() >= self.max_explicit {
            return Err(TableFull);
        }
        let token = loop {
            let t = format!("{:032x}", self.rng.random::<u128>());
            if !self.explicit.contains_key(&t) {
                break t;
            }
        };
        let expires = now + timeout;
        self.explicit.insert(
            token.clone(),
            Explicit {
                aor: aor.to_string(),
                expires,
                redeemed: false,
            },
        );
        self.explicit_order.push_back((expires, token.clone()));
        self.pending += 1;
        Ok(RegistrationToken(token))
    }

    /// Checks the token a REGISTER for `aor` carries (seed 002 FIG. 6 steps
    /// 128–130). O(1): one lookup.
    pub fn check(&mut self, now: Instant, token: &str, aor: &str) -> TokenCheck {
        let Some(e) = self.explicit.get_mut(token) else {
            return TokenCheck::Unknown;
        };
        if e.expires <= now {
            return TokenCheck::Expired;
        }
        if e.aor != aor {
            return TokenCheck::WrongDevice;
        }
        if !e.redeemed {
            e.redeemed = true;
            self.pending -= 1;
        }
        TokenCheck::Valid
    }

    /// Records the implicit token of a request refused with Retry-After
    /// `retry_after`: its retry is expected from then until `window` later.
    /// Returns false (and records nothing: the retry will be an initial request)
    /// when the table is full of live windows.
    pub fn record_implicit(
        &mut self,
        now: Instant,
        key: &str,
        retry_after: Duration,
        window: Duration,
    ) -> bool {
        self.expire(now);
        if !self.implicit.contains_key(key) && self.implicit.len() >= self.max_implicit {
            return false;
        }
        let w = Window {
            from: now + retry_after,
            until: now + retry_after + window,
        };
        self.implicit.insert(key.to_string(), w);
        self.implicit_order.push_back((w.until, key.to_string()));
        // Overwrites leave stale entries behind; keep the queue within twice
        // the map (amortised O(1): each compaction halves it at least).
        if self.implicit_order.len() > 2 * self.max_implicit.max(8) {
            let map = &self.implicit;
            self.implicit_order
                .retain(|(until, k)| map.get(k).is_some_and(|w| w.until == *until));
        }
        true
    }

    /// Where a request with this key stands against its implicit token.
    pub fn check_implicit(&self, now: Instant, key: &str) -> ImplicitCheck {
        match self.implicit.get(key) {
            None => ImplicitCheck::None,
            Some(w) if now < w.from => ImplicitCheck::Early {
                remaining: w.from - now,
            },
            Some(w) if now < w.until => ImplicitCheck::Inside,
            Some(_) => ImplicitCheck::Late,
        }
    }

    /// Forgets what expired by `now`: amortised O(1) per entry.
    /// Forgets expired tokens; returns how many explicit ones expired unused.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut unused = 0;
        while let Some((at, _)) = self.explicit_order.front() {
            if *at > now {
                break;
            }
            let Some((_, t)) = self.explicit_order.pop_front() else {
                break;
            };
            if let Some(e) = self.explicit.remove(&t) {
                if !e.redeemed {
                    self.pending -= 1;
                    unused += 1;
                }
            }
        }
        while let Some((at, _)) = self.implicit_order.front() {
            if *at > now {
                break;
            }
            let Some((until, k)) = self.implicit_order.pop_front() else {
                break;
            };
            if self.implicit.get(&k).is_some_and(|w| w.until == until) {
                self.implicit.remove(&k);
            }
        }
        unused
    }

    /// Explicit tokens outstanding (granted, not yet forgotten).
    pub fn explicit_len(&self) -> usize {
        self.explicit.len()
    }

    /// Explicit tokens granted and not yet presented.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Implicit tokens outstanding.
    pub fn implicit_len(&self) -> usize {
        self.implicit.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn table(max_explicit: usize, max_implicit: usize) -> TokenTable {
        TokenTable::new(max_explicit, max_implicit, StdRng::seed_from_u64(2))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_granted_token_is_valid_for_its_device_until_its_timeout() {
        let t0 = Instant::now();
        let mut t = table(10, 10);
        let tok = t.grant(t0, "sip:a@h", secs(30)).unwrap();
        assert_eq!(tok.as_str().len(), 32);
        assert!(tok.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(t.pending(), 1);
        assert_eq!(
            t.check(t0, tok.as_str(), "sip:b@h"),
            TokenCheck::WrongDevice
        );
        assert_eq!(t.pending(), 1, "a wrong device redeems nothing");
        assert_eq!(
            t.check(t0 + secs(1), tok.as_str(), "sip:a@h"),
            TokenCheck::Valid
        );
        assert_eq!(t.pending(), 0, "presented: no longer load to come");
        // the challenged REGISTER comes back with the same token
        assert_eq!(
            t.check(t0 + secs(2), tok.as_str(), "sip:a@h"),
            TokenCheck::Valid
        );
        assert_eq!(
            t.check(t0 + secs(30), tok.as_str(), "sip:a@h"),
            TokenCheck::Expired
        );
        t.expire(t0 + secs(30));
        assert_eq!(
            t.check(t0 + secs(30), tok.as_str(), "sip:a@h"),
            TokenCheck::Unknown
        );
        assert_eq!(t.explicit_len(), 0);
    }

    #[test]
    fn forged_tokens_are_unknown_and_tokens_differ() {
        let t0 = Instant::now();
        let mut t = table(10, 10);
        let a = t.grant(t0, "sip:a@h", secs(30)).unwrap();
        let b = t.grant(t0, "sip:a@h", secs(30)).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            t.check(t0, "0123456789abcdef0123456789abcdef", "sip:a@h"),
            TokenCheck::Unknown
        );
        assert_eq!(t.check(t0, "", "sip:a@h"), TokenCheck::Unknown);
    }

    #[test]
    fn the_explicit_table_is_bounded_and_expired_tokens_make_room() {
        let t0 = Instant::now();
        let mut t = table(3, 10);
        for k in 0..3 {
            t.grant(t0 + secs(k), "sip:a@h", secs(10)).unwrap();
        }
        assert_eq!(t.grant(t0 + secs(5), "sip:a@h", secs(10)), Err(TableFull));
        assert_eq!(t.pending(), 3);
        // the first expires at 10 s: exactly one slot frees
        assert!(t.grant(t0 + secs(10), "sip:a@h", secs(10)).is_ok());
        assert_eq!(t.grant(t0 + secs(10), "sip:a@h", secs(10)), Err(TableFull));
        assert_eq!(t.explicit_len(), 3);
        t.expire(t0 + secs(60));
        assert_eq!((t.explicit_len(), t.pending()), (0, 0));
    }

    #[test]
    fn an_implicit_token_opens_after_the_retry_time_and_closes_after_the_window() {
        let t0 = Instant::now();
        let mut t = table(10, 10);
        assert!(t.record_implicit(t0, "sip:a@h|inst", secs(20), secs(30)));
        assert_eq!(
            t.check_implicit(t0, "sip:other@h|inst"),
            ImplicitCheck::None
        );
        assert_eq!(
            t.check_implicit(t0 + secs(5), "sip:a@h|inst"),
            ImplicitCheck::Early {
                remaining: secs(15)
            }
        );
        assert_eq!(
            t.check_implicit(t0 + secs(20), "sip:a@h|inst"),
            ImplicitCheck::Inside
        );
        assert_eq!(
            t.check_implicit(t0 + secs(49), "sip:a@h|inst"),
            ImplicitCheck::Inside
        );
        assert_eq!(
            t.check_implicit(t0 + secs(50), "sip:a@h|inst"),
            ImplicitCheck::Late
        );
        t.expire(t0 + secs(50));
        assert_eq!(
            t.check_implicit(t0 + secs(50), "sip:a@h|inst"),
            ImplicitCheck::None
        );
        assert_eq!(t.implicit_len(), 0);
    }

    #[test]
    fn the_implicit_table_is_bounded_and_overwrites_do_not_grow_it() {
        let t0 = Instant::now();
        let mut t = table(10, 2);
        assert!(t.record_implicit(t0, "a", secs(1), secs(10)));
        assert!(t.record_implicit(t0, "b", secs(2), secs(10)));
        assert!(
            !t.record_implicit(t0, "c", secs(3), secs(10)),
            "full of live windows"
        );
        // an overwrite is not a new entry, and the stale deadline does not
        // remove the new window
        for k in 0..100 {
            assert!(t.record_implicit(t0 + secs(k), "a", secs(1), secs(10)));
        }
        assert!(t.implicit_order.len() <= 16, "{}", t.implicit_order.len());
        t.expire(t0 + secs(50));
        assert_eq!(t.check_implicit(t0 + secs(100), "a"), ImplicitCheck::Inside);
        assert_eq!(t.implicit_len(), 1, "b expired at 12 s");
        assert!(t.record_implicit(t0 + secs(100), "c", secs(1), secs(10)));
    }
}
