//! The dial plan's and the gateways' configuration (`[[routes]]`, `[[gateways]]`
//! in the TOML file): plain data, deserialised by `crate::config`, which owns the
//! file and its error messages; the routing module owns what the entries mean.

use serde::Deserialize;
use std::net::SocketAddr;

/// A gateway (`[[gateways]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// A name for logs, metrics and the call-state table.
    pub name: String,
    /// Where requests for this gateway are sent (IP address and port; UDP).
    pub address: SocketAddr,
    /// The gateway group route patterns name.
    pub group: String,
    /// Order within the group: lower is tried first; 503 or a timeout tries the next.
    #[serde(default)]
    pub order: u32,
    /// Probe with OPTIONS and skip the gateway while it does not answer. Turn off
    /// for a peer that does not answer OPTIONS (it would be skipped for good).
    #[serde(default = "yes")]
    pub probe: bool,
}

fn yes() -> bool {
    true
}

/// One route pattern of the dial plan (`docs/dial-plan.md`): dialed numbers that
/// match `pattern` go to `gateway_group`, translated (part before `.` stripped, then
/// `strip` more leading digits, then `prefix` prepended).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route pattern (`docs/dial-plan.md`).
    pub pattern: String,
    /// The gateway group (`[[gateways]] group`) matching numbers go to.
    pub gateway_group: String,
    /// Leading digits removed after the part before `.`.
    #[serde(default)]
    pub strip: u32,
    /// Prepended to the number after stripping.
    #[serde(default)]
    pub prefix: String,
}
