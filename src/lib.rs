//! Tandem: a clustered SIP softswitch. See `ARCHITECTURE.md` in the design notes
//! and `docs/` for how the modules fit together.

pub mod admin;
pub mod admission;
pub mod app;
pub mod cluster;
pub mod config;
pub mod location;
pub mod node;
pub mod proxy;
pub mod registrar;
pub mod routing;
pub mod sim;
pub mod sip;
pub mod store;
