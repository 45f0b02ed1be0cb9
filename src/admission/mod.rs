//! Seed 002's REGISTER front end, pure (docs/token-protocol.md); the node drives
//! it (`node/register.rs`):
//!
//! - `classify`: FIG. 6, the three priorities of a REGISTER;
//! - `tokens`: token information 64, explicit and implicit tokens;
//! - `load`: FIG. 5 step 102, the service rate and the projected wait;
//! - `schedule`: staggered retry times, spaced at the service rate;
//! - `queue`: registration queue 62, bounded, by class, with aging;
//! - `front`: [`Front`], which composes them;
//! - `overload`: call overload control, new INVITEs refused past capacity, and
//!   RFC 7339 feedback to upstream servers (wired into the node);
//! - `pace`: the optional cap on registrations served a second;
//! - `config`: the `[admission]` section.

pub mod classify;
pub mod config;
pub mod front;
pub mod load;
pub mod overload;
pub mod pace;
pub mod queue;
pub mod schedule;
pub mod tokens;

pub use classify::{Basis, Classification, IpNetwork, PriorityRules, RegisterFacts};
pub use front::{Counts, Expired, Front, FrontConfig, Refused, Snapshot, TokenVerdict, Verdict};
pub use queue::{Capacity, Dequeued};
pub use tokens::RegistrationToken;

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
