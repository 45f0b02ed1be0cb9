//! The wire and the protocol machinery: messages, transports, transactions and
//! digest authentication. Knows nothing of registrars or business logic.

pub mod auth;
pub mod authenticator;
pub mod message;
pub mod ping;
pub mod transaction;
pub mod transport;
