//! What all simulated phones share: registrars, credentials, mode and timers, and
//! the names derived from a phone's index (user, Call-ID, tags, instance UUID).

use crate::sip::transaction::TimerConfig;
use std::net::SocketAddr;
use std::time::Duration;

/// Token-aware phones, or unmodified ones (docs/token-protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Ask for a token (OPTIONS `Registration-Token: request`) before registering.
    Token,
    /// No tokens: rely on the implicit token of a 503 + Retry-After.
    Plain,
}

#[derive(Debug, Clone)]
pub struct Profile {
    /// Primary, secondary, tertiary (FIG. 7); 1 to 3 of them.
    pub registrars: Vec<SocketAddr>,
    pub domain: String,
    pub user_prefix: String,
    pub password: String,
    pub expires: u32,
    pub mode: Mode,
    /// How often a phone on a backup pings the primary; zero: never (no re-homing).
    pub ping_interval: Duration,
    /// REGISTER attempts before giving up (the answer to a 401 is not one).
    pub max_attempts: u32,
    pub timers: TimerConfig,
    /// Random per run: in Call-IDs, tags and branches, so a run never matches
    /// another run's leftovers.
    pub salt: u32,
}

impl Profile {
    pub fn user(&self, index: u32) -> String {
        format!("{}{index}", self.user_prefix)
    }

    /// `kind` is `r` (REGISTER) or `o` (OPTIONS): one Call-ID per registrar and
    /// kind, kept for the whole run (RFC 3261 §10.2.4). The index inside lets the
    /// driver find the phone of a response without a map ([`Profile::phone_of`]).
    pub fn call_id(&self, index: u32, kind: char, reg: u8) -> String {
        format!("{:08x}-{index}-{kind}{reg}@tandem-sim", self.salt)
    }

    pub fn tag(&self, index: u32, kind: char, reg: u8) -> String {
        format!("{:x}{index}{kind}{reg}", self.salt)
    }

    /// The phone index in one of our Call-IDs.
    pub fn phone_of(&self, call_id: &str) -> Option<u32> {
        let mut parts = call_id.trim().splitn(3, '-');
        let salt = u32::from_str_radix(parts.next()?, 16).ok()?;
        if salt != self.salt {
            return None;
        }
        parts.next()?.parse().ok()
    }

    /// A stable UUID per phone (same user and domain, same UUID in every run) for
    /// `+sip.instance` (RFC 5626 §4.1): a hash formatted as a version-4 UUID.
    pub fn instance(&self, index: u32) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a over user@domain
        for b in self
            .user(index)
            .bytes()
            .chain(b"@".iter().copied())
            .chain(self.domain.bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let a = splitmix(h);
        let b = splitmix(a);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
