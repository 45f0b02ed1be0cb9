//! Stateful proxy (RFC 3261 §16): forwarding, forking, CANCEL, Record-Route, and
//! the call-state table.

pub mod calls;
pub mod cdr;
pub mod flow_token;
pub mod probe;
pub mod stateful;
