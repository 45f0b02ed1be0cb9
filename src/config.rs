//! TOML configuration. One file; every error names the file, the key and the reason.
//!
//! Unknown keys are errors (`deny_unknown_fields`) so a typo never silently falls
//! back to a default. Durations are integers whose unit is in the key name.

pub use crate::admission::config::AdmissionConfig;
pub use crate::routing::{GatewayConfig, RouteConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`: this node's identity.
    #[serde(default)]
    pub node: NodeConfig,
    /// `[sip]`: listeners, served domains, limits and RFC 3261 timers.
    #[serde(default)]
    pub sip: SipConfig,
    /// `[registrar]`: authentication, expiry bounds, polls.
    #[serde(default)]
    pub registrar: RegistrarConfig,
    /// `[store]`: where bindings are made durable.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[cluster]`: membership and replication (PostgreSQL store only).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// `[admin]`: the HTTP listener (`/health`, `/metrics`, `/calls`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[calls]`: the call-state table, CDRs, call authentication, Timer C, gateway probes.
    #[serde(default)]
    pub calls: CallsConfig,
    /// `[admission]`: seed 002's REGISTER front end (tokens, priority queue).
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// `[log]`: the tracing filter.
    #[serde(default)]
    pub log: LogConfig,
    /// Accounts (`[[users]]`).
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Route patterns of the dial plan (`[[routes]]`), see `docs/dial-plan.md`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Gateways (`[[gateways]]`): where route patterns' gateway groups lead.
    #[serde(default)]
    pub gateways: Vec<GatewayConfig>,
    /// Directory of the config file; relative paths in it are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's identity: owner of every binding it registers.
    pub id: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "tandem-1".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP listeners (IPv4 or IPv6); empty: no UDP.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners; empty: no TCP.
    pub tcp: Vec<SocketAddr>,
    /// Domains this node is responsible for; empty accepts any.
    pub domains: Vec<String>,
    /// Largest SIP message accepted, in bytes (larger: 513 on UDP, connection closed on TCP).
    pub max_message_size: usize,
    /// Simultaneous TCP connections; beyond this, new ones are refused.
    pub tcp_max_connections: usize,
    /// A TCP message, once started, must be complete within this time or the connection is closed.
    pub tcp_message_timeout_ms: u64,
    /// A TCP connection with no traffic for this long is closed.
    pub tcp_idle_timeout_secs: u64,
    /// Upper bound of live server transactions; when full, new requests get 503.
    pub max_transactions: usize,
    /// RFC 3261 §17 T1: the round-trip estimate.
    pub t1_ms: u64,
    /// RFC 3261 §17 T2: the longest retransmission interval.
    pub t2_ms: u64,
    /// RFC 3261 §17 T4: the longest a message stays in the network.
    pub t4_ms: u64,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: vec!["127.0.0.1:5060".parse().unwrap()],
            tcp: vec!["127.0.0.1:5060".parse().unwrap()],
            domains: Vec::new(),
            max_message_size: 65_535,
            tcp_max_connections: 4096,
            tcp_message_timeout_ms: 10_000,
            tcp_idle_timeout_secs: 300,
            max_transactions: 1_000_000,
            t1_ms: 500,
            t2_ms: 4_000,
            t4_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DigestAlgorithm {
    #[serde(rename = "SHA-256")]
    Sha256,
    #[serde(rename = "MD5")]
    Md5,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    /// Challenge REGISTERs with digest authentication (RFC 3261 §22, RFC 8760).
    pub authenticate: bool,
    /// The authentication realm.
    pub realm: String,
    /// Digest algorithms offered, one challenge each, in this order.
    pub algorithms: Vec<DigestAlgorithm>,
    /// A nonce older than this is stale: the phone is re-challenged with `stale=true`.
    pub nonce_ttl_secs: u64,
    /// Shortest registration accepted (shorter: 423 with Min-Expires).
    pub min_expires_secs: u32,
    /// Longest registration granted (longer requests are shortened).
    pub max_expires_secs: u32,
    /// Expiry when the REGISTER gives none.
    pub default_expires_secs: u32,
    /// Bindings per address-of-record; more gets 403 unless it replaces one.
    pub max_contacts_per_aor: usize,
    /// Poll this node's UDP bindings with OPTIONS (seed 000 FIG. 4B); a phone
    /// that misses `poll_max_misses` polls in a row is unregistered.
    pub poll_contacts: bool,
    /// How often each polled phone gets an OPTIONS.
    pub poll_interval_secs: u64,
    /// A poll unanswered for this long is a miss.
    pub poll_timeout_ms: u64,
    /// Misses in a row after which the phone is unregistered.
    pub poll_max_misses: u32,
    /// A binding registered over TCP is removed when its connection closes (the
    /// phone stopped its CRLF keep-alives and the idle timeout closed it, or it
    /// went away): nothing can reach it any more (RFC 5626 §5.3).
    pub unregister_on_flow_close: bool,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            authenticate: true,
            realm: "tandem.local".into(),
            algorithms: vec![DigestAlgorithm::Sha256, DigestAlgorithm::Md5],
            nonce_ttl_secs: 300,
            min_expires_secs: 60,
            max_expires_secs: 7200,
            default_expires_secs: 3600,
            max_contacts_per_aor: 10,
            poll_contacts: false,
            poll_interval_secs: 30,
            poll_timeout_ms: 5000,
            poll_max_misses: 3,
            unregister_on_flow_close: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Sqlite,
    Memory,
    /// Shared by the nodes of a cluster, replicated with LISTEN/NOTIFY.
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (embedded, default), `memory` (nothing survives a restart) or `postgres` (a cluster).
    pub backend: StoreBackend,
    /// The SQLite file, relative to the config file's directory.
    pub path: PathBuf,
    /// Most binding changes committed in one transaction (group commit).
    pub batch_max: usize,
    /// `postgres://user@host:port/db` when `backend = "postgres"`.
    pub url: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sqlite,
            path: "tandem.db".into(),
            batch_max: 2048,
            url: None,
        }
    }
}

/// Membership of a PostgreSQL cluster (seed 000 FIG. 4C/4D).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// How often this node writes its heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A peer whose heartbeat counter has not moved for this long, by this
    /// node's clock, is dead: its bindings are dropped (`cluster::membership`).
    pub node_timeout_ms: u64,
    /// Changes are read on every notification, and at least this often (a
    /// notification lost while reconnecting delays a change by at most this).
    pub poll_interval_ms: u64,
    /// The SIP address peers forward calls for this node's phones to (UDP);
    /// default: the first UDP listener.
    pub advertise: Option<SocketAddr>,
    /// How often deletions every live node has applied are pruned from the
    /// database (their tombstones are no longer needed).
    pub tombstone_prune_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            heartbeat_interval_ms: 1000,
            node_timeout_ms: 5000,
            poll_interval_ms: 1000,
            advertise: None,
            tombstone_prune_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin listener.
    pub enabled: bool,
    /// Its address.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: "127.0.0.1:9060".parse().unwrap(),
        }
    }
}

/// The call-state table and CDRs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// CDR file (one JSON line per finished call), relative to the config file's
    /// directory. `None`: no CDRs.
    pub cdr_file: Option<PathBuf>,
    /// How long a finished call stays visible in `GET /calls`.
    pub linger_secs: u64,
    /// Most calls in the table (active and lingering); when every one is active,
    /// new INVITEs get 503.
    pub max_calls: usize,
    /// Calls (and other requests Tandem forwards) must carry the caller's digest
    /// credentials (407 Proxy Authentication Required), unless they come from a
    /// gateway's address or one listed in `trusted`.
    pub authenticate: bool,
    /// Source IP addresses whose requests are forwarded without authentication.
    pub trusted: Vec<std::net::IpAddr>,
    /// Timer C (RFC 3261 §16.6 step 11): a proxied INVITE with no final answer
    /// after this long is cancelled (the RFC asks for more than 3 minutes).
    pub timer_c_secs: u64,
    /// How often each gateway (`probe = true`) is sent an OPTIONS probe.
    pub gateway_probe_interval_ms: u64,
    /// A gateway silent for this long after a probe is down (skipped by routing)
    /// until it answers again.
    pub gateway_probe_timeout_ms: u64,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            cdr_file: None,
            linger_secs: 300,
            max_calls: 100_000,
            authenticate: true,
            trusted: Vec::new(),
            timer_c_secs: 181,
            gateway_probe_interval_ms: 10_000,
            gateway_probe_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `tandem=debug,sqlx=warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The account's user name (the user part of its AOR).
    pub username: String,
    /// Its digest password.
    pub password: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot read file: {e}"),
        })?;
        let mut cfg = Config::from_toml(&text, &file)?;
        cfg.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(cfg)
    }

    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let reason = inner.message().to_string();
            let at = inner
                .span()
                .map(|s| {
                    // 1-based line of the span's start (counting newlines before it:
                    // `lines()` would miss the line a span starts at the beginning of)
                    let before = text.get(..s.start.min(text.len())).unwrap_or(text);
                    format!(" (line {})", before.matches('\n').count() + 1)
                })
                .unwrap_or_default();
            ConfigError {
                file: file.to_string(),
                key: if key == "." { "-".into() } else { key },
                reason: format!("{reason}{at}"),
            }
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        if self.node.id.is_empty() {
            return Err(err("node.id", "must not be empty".into()));
        }
        if self.sip.udp.is_empty() && self.sip.tcp.is_empty() {
            return Err(err(
                "sip.udp",
                "no SIP listener: set sip.udp or sip.tcp".into(),
            ));
        }
        if !(1024..=1_048_576).contains(&self.sip.max_message_size) {
            return Err(err(
                "sip.max_message_size",
                "must be between 1024 and 1048576 bytes".into(),
            ));
        }
        if self.sip.t1_ms == 0 || self.sip.t2_ms < self.sip.t1_ms {
            return Err(err("sip.t2_ms", "T1 must be > 0 and T2 >= T1".into()));
        }
        if self.store.backend == StoreBackend::Postgres && self.store.url.is_none() {
            return Err(err(
                "store.url",
                "backend = \"postgres\" needs url = \"postgres://user@host:port/db\"".into(),
            ));
        }
        let c = &self.cluster;
        if c.heartbeat_interval_ms == 0 || c.node_timeout_ms <= c.heartbeat_interval_ms {
            return Err(err(
                "cluster.node_timeout_ms",
                "heartbeat_interval_ms must be > 0 and node_timeout_ms longer than it".into(),
            ));
        }
        if c.poll_interval_ms == 0 {
            return Err(err("cluster.poll_interval_ms", "must be > 0".into()));
        }
        if self.sip.max_transactions == 0 {
            return Err(err("sip.max_transactions", "must be > 0".into()));
        }
        let calls = &self.calls;
        for (key, v) in [
            ("calls.timer_c_secs", calls.timer_c_secs),
            (
                "calls.gateway_probe_interval_ms",
                calls.gateway_probe_interval_ms,
            ),
            (
                "calls.gateway_probe_timeout_ms",
                calls.gateway_probe_timeout_ms,
            ),
        ] {
            if v == 0 {
                return Err(err(key, "must be > 0".into()));
            }
        }
        let r = &self.registrar;
        if r.poll_contacts && (r.poll_interval_secs == 0 || r.poll_timeout_ms == 0) {
            return Err(err(
                "registrar.poll_interval_secs",
                "poll_interval_secs and poll_timeout_ms must be > 0".into(),
            ));
        }
        if r.min_expires_secs == 0 || r.min_expires_secs > r.max_expires_secs {
            return Err(err(
                "registrar.min_expires_secs",
                "must be > 0 and <= registrar.max_expires_secs".into(),
            ));
        }
        if r.default_expires_secs < r.min_expires_secs
            || r.default_expires_secs > r.max_expires_secs
        {
            return Err(err(
                "registrar.default_expires_secs",
                "must lie between min_expires_secs and max_expires_secs".into(),
            ));
        }
        if r.max_contacts_per_aor == 0 {
            return Err(err("registrar.max_contacts_per_aor", "must be > 0".into()));
        }
        if r.authenticate && r.algorithms.is_empty() {
            return Err(err(
                "registrar.algorithms",
                "at least one algorithm is needed when authenticate = true".into(),
            ));
        }
        if r.realm.is_empty() || r.realm.contains(['"', '\\']) {
            return Err(err(
                "registrar.realm",
                "must be non-empty and contain no quote or backslash".into(),
            ));
        }
        if self.store.batch_max == 0 {
            return Err(err("store.batch_max", "must be > 0".into()));
        }
        if self.calls.max_calls == 0 {
            return Err(err("calls.max_calls", "must be > 0".into()));
        }
        if self
            .calls
            .cdr_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(err(
                "calls.cdr_file",
                "must not be empty (leave it out for no CDRs)".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.username.is_empty()
                || !u
                    .username
                    .bytes()
                    .all(|c| c.is_ascii_graphic() && c != b'@' && c != b':')
            {
                return Err(err(
                    &format!("users[{i}].username"),
                    "must be non-empty, printable, without '@' or ':'".into(),
                ));
            }
            if u.password.is_empty() {
                return Err(err(
                    &format!("users[{i}].password"),
                    "must not be empty".into(),
                ));
            }
            if !seen.insert(u.username.as_str()) {
                return Err(err(
                    &format!("users[{i}].username"),
                    format!("duplicate user {:?}", u.username),
                ));
            }
        }
        crate::routing::DialPlan::new(self.routes.clone()).map_err(|e| err(&e.key(), e.reason))?;
        let mut names = std::collections::HashSet::new();
        for (i, g) in self.gateways.iter().enumerate() {
            if g.name.is_empty() || !names.insert(g.name.as_str()) {
                return Err(err(
                    &format!("gateways[{i}].name"),
                    "must be non-empty and unique".into(),
                ));
            }
            if g.group.is_empty() {
                return Err(err(
                    &format!("gateways[{i}].group"),
                    "must not be empty".into(),
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !self.gateways.iter().any(|g| g.group == r.gateway_group) {
                return Err(err(
                    &format!("routes[{i}].gateway_group"),
                    format!("no gateway in group {:?}", r.gateway_group),
                ));
            }
        }
        self.admission_front()
            .map_err(|e| err(&format!("admission.{}", e.key), e.reason))?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| err("log.level", format!("invalid filter: {e}")))?;
        Ok(())
    }

    /// The admission front's configuration (`[admission]`), AORs normalised as
    /// the registrar keys them.
    pub fn admission_front(
        &self,
    ) -> Result<crate::admission::FrontConfig, crate::admission::config::Invalid> {
        self.admission.front(|a| {
            crate::sip::message::Uri::parse(a)
                .ok()
                .filter(|u| u.is_sip() && u.user.is_some())
                .map(|u| u.aor_key())
                .ok_or_else(|| format!("{a:?} is not a SIP URI with a user part"))
        })
    }

    /// The store path, resolved against the config file's directory.
    pub fn store_path(&self) -> PathBuf {
        if self.store.path.is_absolute() {
            self.store.path.clone()
        } else {
            self.base_dir.join(&self.store.path)
        }
    }

    /// The CDR file, resolved against the config file's directory; `None`: no CDRs.
    pub fn cdr_path(&self) -> Option<PathBuf> {
        let p = self.calls.cdr_file.as_ref()?;
        Some(if p.is_absolute() {
            p.clone()
        } else {
            self.base_dir.join(p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_file_is_valid() {
        let text = include_str!("../config/tandem.toml");
        let cfg = Config::from_toml(text, "config/tandem.toml").unwrap();
        assert_eq!(
            cfg.sip.udp,
            vec!["127.0.0.1:5060".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            cfg.admin.listen,
            "127.0.0.1:9060".parse::<SocketAddr>().unwrap()
        );
        assert!(!cfg.users.is_empty());
    }

    #[test]
    fn unknown_key_names_the_key() {
        let e = Config::from_toml("[sip]\nudpp = []\n", "x.toml").unwrap_err();
        assert_eq!(e.file, "x.toml");
        assert!(e.key.contains("sip"), "{e}");
        assert!(e.reason.contains("udpp"), "{e}");
        assert!(e.reason.ends_with("(line 2)"), "{e}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let e = Config::from_toml("[sip]\nudp = [\"nonsense\"]\n", "x.toml").unwrap_err();
        assert!(e.key.starts_with("sip.udp"), "{e}");
        let e = Config::from_toml("[registrar]\nmin_expires_secs = 9000\n", "x.toml").unwrap_err();
        assert_eq!(e.key, "registrar.min_expires_secs");
        let e = Config::from_toml("[[users]]\nusername = \"a\"\npassword = \"\"\n", "x.toml")
            .unwrap_err();
        assert_eq!(e.key, "users[0].password");
    }

    #[test]
    fn calls_section() {
        let cfg = Config::from_toml("", "x.toml").unwrap();
        assert_eq!(cfg.calls.cdr_file, None);
        assert_eq!(cfg.cdr_path(), None);
        assert_eq!((cfg.calls.linger_secs, cfg.calls.max_calls), (300, 100_000));
        let mut cfg = Config::from_toml(
            "[calls]\ncdr_file = \"cdr.jsonl\"\nlinger_secs = 5\nmax_calls = 7\n",
            "x.toml",
        )
        .unwrap();
        cfg.base_dir = PathBuf::from("/etc/tandem");
        assert_eq!(cfg.cdr_path(), Some(PathBuf::from("/etc/tandem/cdr.jsonl")));
        assert_eq!((cfg.calls.linger_secs, cfg.calls.max_calls), (5, 7));
        let e = Config::from_toml("[calls]\nmax_calls = 0\n", "x.toml").unwrap_err();
        assert_eq!(e.key, "calls.max_calls");
        let e = Config::from_toml("[calls]\ncdr_file = \"\"\n", "x.toml").unwrap_err();
        assert_eq!(e.key, "calls.cdr_file");
        let e = Config::from_toml("[calls]\ncdr = \"x\"\n", "x.toml").unwrap_err();
        assert!(e.key.contains("calls"), "{e}");
    }

    #[test]
    fn commented_route_example_is_valid() {
        // uncommenting the [[routes]] example of the default config gives a valid route
        let text = include_str!("../config/tandem.toml");
        let start = text.find("# [[routes]]").expect("example present");
        let example: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = Config::from_toml(&example, "example").unwrap();
        assert_eq!(cfg.gateways.len(), 1);
        assert_eq!(cfg.gateways[0].group, "pstn");
        assert_eq!(
            cfg.routes,
            vec![RouteConfig {
                pattern: "9.!".into(),
                gateway_group: "pstn".into(),
                strip: 0,
                prefix: "".into(),
            }]
        );
        let default = Config::from_toml(text, "config/tandem.toml").unwrap();
        assert!(default.routes.is_empty());
    }

    #[test]
    fn routes_are_parsed_and_validated() {
        let gws = "[[gateways]]\nname = \"a\"\naddress = \"127.0.0.1:5090\"\ngroup = \"pstn\"\n\
                   [[gateways]]\nname = \"b\"\naddress = \"127.0.0.1:5091\"\ngroup = \"e\"\n";
        let cfg = Config::from_toml(
            &format!(
                "{gws}[[routes]]\npattern = \"9.!\"\ngateway_group = \"pstn\"\n\n\
             [[routes]]\npattern = \"911\"\ngateway_group = \"e\"\nstrip = 3\nprefix = \"+1911\"\n"
            ),
            "x.toml",
        )
        .unwrap();
        assert_eq!(cfg.routes.len(), 2);
        assert_eq!(cfg.routes[0].strip, 0);
        assert_eq!(cfg.routes[0].prefix, "");
        assert_eq!(cfg.routes[1].prefix, "+1911");
        let e = Config::from_toml(
            &format!(
                "{gws}[[routes]]\npattern = \"9.!\"\ngateway_group = \"pstn\"\n\n\
             [[routes]]\npattern = \"[9-2]X\"\ngateway_group = \"pstn\"\n"
            ),
            "x.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "routes[1].pattern");
        assert!(e.reason.contains("bad range"), "{e}");
        let e = Config::from_toml(
            "[[routes]]\npattern = \"9.!\"\ngateway_group = \"pstn\"\nstrp = 1\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.key.starts_with("routes"), "{e}");
        assert!(e.reason.contains("strp"), "{e}");
        let e = Config::from_toml("[[routes]]\npattern = \"9.!\"\n", "x.toml").unwrap_err();
        assert!(e.reason.contains("gateway_group"), "{e}");
        // a route must lead to a configured gateway group
        let e = Config::from_toml(
            "[[routes]]\npattern = \"9.!\"\ngateway_group = \"none\"\n",
            "x.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "routes[0].gateway_group");
    }

    /// `pub field:` names of each struct in a source file, with whether a `///`
    /// comment precedes the field (attributes in between allowed).
    fn fields(src: &str) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        let mut current = None;
        let lines: Vec<&str> = src.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("pub struct ") {
                current = rest.split([' ', '{']).next().map(str::to_string);
            } else if line.starts_with('}') {
                current = None;
            } else if let (Some(st), Some(rest)) = (&current, line.strip_prefix("    pub ")) {
                let name = rest.split(':').next().unwrap().to_string();
                let documented = lines[..i]
                    .iter()
                    .rev()
                    .find(|l| !l.trim_start().starts_with("#["))
                    .is_some_and(|l| l.trim_start().starts_with("///"));
                out.push((st.clone(), name, documented));
            }
        }
        out
    }

    const SOURCES: [(&str, &str); 3] = [
        ("src/config.rs", include_str!("config.rs")),
        (
            "src/admission/config.rs",
            include_str!("admission/config.rs"),
        ),
        ("src/routing/config.rs", include_str!("routing/config.rs")),
    ];

    #[test]
    fn every_config_field_is_documented() {
        let mut seen = 0;
        for (file, src) in SOURCES {
            for (st, name, documented) in fields(src) {
                if st == "ConfigError" {
                    continue;
                }
                seen += 1;
                assert!(documented, "{file}: {st}.{name} has no /// comment");
            }
        }
        assert!(seen > 40, "the field scan found only {seen} fields");
    }

    #[test]
    fn the_default_config_file_shows_every_key_with_its_default() {
        let text = include_str!("../config/tandem.toml");
        let file = Config::from_toml(text, "config/tandem.toml").unwrap();
        let default = Config::from_toml("", "empty").unwrap();
        // every section's values in the file are the defaults
        let pairs: [(&str, String, String); 10] = [
            (
                "node",
                format!("{:?}", file.node),
                format!("{:?}", default.node),
            ),
            (
                "sip",
                format!("{:?}", file.sip),
                format!("{:?}", default.sip),
            ),
            (
                "registrar",
                format!("{:?}", file.registrar),
                format!("{:?}", default.registrar),
            ),
            (
                "store",
                format!("{:?}", file.store),
                format!("{:?}", default.store),
            ),
            (
                "cluster",
                format!("{:?}", file.cluster),
                format!("{:?}", default.cluster),
            ),
            (
                "admin",
                format!("{:?}", file.admin),
                format!("{:?}", default.admin),
            ),
            (
                "calls",
                format!("{:?}", file.calls),
                format!("{:?}", default.calls),
            ),
            (
                "admission",
                format!("{:?}", file.admission),
                format!("{:?}", default.admission),
            ),
            (
                "admission.calls",
                format!("{:?}", file.admission.calls),
                format!("{:?}", default.admission.calls),
            ),
            (
                "log",
                format!("{:?}", file.log),
                format!("{:?}", default.log),
            ),
        ];
        for (section, in_file, dflt) in pairs {
            assert_eq!(
                in_file, dflt,
                "config/tandem.toml [{section}] differs from the defaults"
            );
        }
        // and every key of those sections is shown, set or commented out
        let sections = [
            ("NodeConfig", "node"),
            ("SipConfig", "sip"),
            ("RegistrarConfig", "registrar"),
            ("StoreConfig", "store"),
            ("ClusterConfig", "cluster"),
            ("AdminConfig", "admin"),
            ("CallsConfig", "calls"),
            ("LogConfig", "log"),
            ("AdmissionConfig", "admission"),
            ("CallOverloadConfig", "admission.calls"),
        ];
        let all = fields(include_str!("config.rs"))
            .into_iter()
            .chain(fields(include_str!("admission/config.rs")));
        for (st, name, _) in all {
            let Some((_, section)) = sections.iter().find(|(s, _)| *s == st) else {
                continue;
            };
            // a nested table (`[admission.calls]`) is its own section
            if sections
                .iter()
                .any(|(_, s)| *s == format!("{section}.{name}"))
            {
                continue;
            }
            let body = text
                .split(&format!("[{section}]\n"))
                .nth(1)
                .and_then(|b| b.split("\n[").next())
                .unwrap_or_else(|| panic!("no [{section}] in config/tandem.toml"));
            let shown = body.lines().any(|l| {
                let l = l.trim_start_matches("# ");
                l.starts_with(&format!("{name} ="))
            });
            assert!(
                shown,
                "config/tandem.toml [{section}] does not show `{name}`"
            );
        }
    }

    #[test]
    fn zero_call_timers_are_refused_with_their_key() {
        for key in [
            "timer_c_secs",
            "gateway_probe_interval_ms",
            "gateway_probe_timeout_ms",
        ] {
            let e = Config::from_toml(&format!("[calls]\n{key} = 0\n"), "x.toml").unwrap_err();
            assert_eq!(e.key, format!("calls.{key}"), "{e}");
            assert_eq!(e.file, "x.toml");
            assert!(e.reason.contains("> 0"), "{e}");
        }
    }

    #[test]
    fn bad_admission_keys_are_named() {
        let e = Config::from_toml(
            "[admission]\npriority_networks = [\"10.0.0.0/40\"]\n",
            "x.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "admission.priority_networks[0]", "{e}");
        let e = Config::from_toml("[admission]\npriority_aors = [\"gw\"]\n", "x.toml").unwrap_err();
        assert_eq!(e.key, "admission.priority_aors[0]", "{e}");
        let e = Config::from_toml("[admission]\nmax_wait_ms = 40000\n", "x.toml").unwrap_err();
        assert_eq!(e.key, "admission.max_wait_ms", "{e}");
        let e =
            Config::from_toml("[admission]\ncpu_saturation_percent = 101\n", "x.toml").unwrap_err();
        assert_eq!(e.key, "admission.cpu_saturation_percent", "{e}");
        let e = Config::from_toml("[admission.calls]\ntarget_wait_ms = 0\n", "x.toml").unwrap_err();
        assert_eq!(e.key, "admission.calls.target_wait_ms", "{e}");
        let e = Config::from_toml("[admission.calls]\nretry_after = 1\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("retry_after"), "{e}");
        let cfg = Config::from_toml("[admission.calls]\nenabled = false\n", "x.toml").unwrap();
        assert_eq!(cfg.admission.calls.overload().unwrap(), None);
        let cfg = Config::from_toml(
            "[admission]\npriority_aors = [\"sip:GW@Example.com\"]\n",
            "x.toml",
        )
        .unwrap();
        let front = cfg.admission_front().unwrap();
        assert!(front.rules.aors.contains("sip:GW@example.com") || front.rules.aors.len() == 1);
    }
}
