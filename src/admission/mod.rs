//! Seed 002's REGISTER front end. For now the node admits every REGISTER through
//! [`AdmitAll`]; the pure core that replaces it is here, not yet wired:
//!
//! - `classify`: FIG. 6, the three priorities of a REGISTER;
//! - `tokens`: token information 64, explicit and implicit tokens;
//! - `load`: FIG. 5 step 102, the service rate and the projected wait;
//! - `schedule`: staggered retry times, spaced at the service rate;
//! - `queue`: registration queue 62, bounded, by class, with aging;
//! - `front`: [`Front`], which composes them;
//! - `overload`: call overload control, new INVITEs refused past capacity, and
//!   RFC 7339 feedback to upstream servers (wired into the node).
//!
//! The seam is here so the registrar never changes when it is wired.

pub mod classify;
pub mod config;
pub mod front;
pub mod load;
pub mod overload;
pub mod queue;
pub mod schedule;
pub mod tokens;

pub use classify::{Basis, Classification, IpNetwork, PriorityRules, RegisterFacts};
pub use front::{Expired, Front, FrontConfig, Snapshot, TokenVerdict, Verdict};
pub use queue::{Capacity, Dequeued};
pub use tokens::RegistrationToken;

use std::net::SocketAddr;

/// Seed 002's three classes, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RegistrationClass {
    /// Configured priority devices (gateways) and `Resource-Priority` (RFC 4412).
    Priority,
    /// A device holding a registration token.
    TokenHolder,
    /// Anything else: an initial registration.
    Initial,
}

/// What the front end needs to know about one REGISTER.
#[derive(Debug, Clone)]
pub struct RegisterAttempt<'a> {
    pub aor: &'a str,
    pub source: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Admit(RegistrationClass),
    /// Refuse with `503 Service Unavailable` and this `Retry-After` (seconds).
    Deny {
        retry_after_secs: u32,
    },
}

pub trait Admission: Send + Sync {
    fn admit(&self, attempt: &RegisterAttempt<'_>) -> Decision;
}

/// Admits everything as an initial registration.
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn admit(&self, _attempt: &RegisterAttempt<'_>) -> Decision {
        Decision::Admit(RegistrationClass::Initial)
    }
}
