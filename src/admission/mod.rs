//! Seed 002's REGISTER front end. For now every REGISTER is admitted; the token
//! issue replaces [`AdmitAll`] with load-based tokens and a priority queue. The seam
//! is here so the registrar never changes when it does.

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
