//! Flow tokens (RFC 5626 §5.3): the user part of a Record-Route URI that names the
//! TCP connection a dialog's party is reached over, so in-dialog requests towards
//! it go back over that connection rather than to its Contact address.
//!
//! The token is the peer address with an HMAC over it: a Route from the wire is
//! untrusted, and a forged token must not steer requests into someone else's
//! connection.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the MAC kept in a token (64 bits: forging one blindly is hopeless).
const MAC_LEN: usize = 8;
const PREFIX: &str = "ft";

pub struct FlowTokens {
    key: [u8; 32],
}

impl FlowTokens {
    pub fn new(key: [u8; 32]) -> FlowTokens {
        FlowTokens { key }
    }

    pub fn random() -> FlowTokens {
        FlowTokens::new(rand::random())
    }

    fn mac(&self, addr: &str) -> [u8; MAC_LEN] {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        m.update(addr.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A token for the connection from `peer`: only characters allowed unescaped
    /// in a SIP URI user part (RFC 3261 §25.1), whatever the address family.
    pub fn encode(&self, peer: SocketAddr) -> String {
        let addr = peer.to_string();
        format!(
            "{PREFIX}{}-{}",
            hex::encode(addr.as_bytes()),
            hex::encode(self.mac(&addr))
        )
    }

    /// The peer a token names, if it is one of ours and unaltered.
    pub fn decode(&self, token: &str) -> Option<SocketAddr> {
        let (addr_hex, mac_hex) = token.strip_prefix(PREFIX)?.split_once('-')?;
        let addr = String::from_utf8(hex::decode(addr_hex).ok()?).ok()?;
        let mac = hex::decode(mac_hex).ok()?;
        if mac.len() != MAC_LEN {
            return None;
        }
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        m.update(addr.as_bytes());
        // constant-time comparison of the truncated MAC
        m.verify_truncated_left(&mac).ok()?;
        addr.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6_and_is_a_plain_user_part() {
        let t = FlowTokens::new([7; 32]);
        for a in ["127.0.0.1:40000", "[::1]:5060", "[2001:db8::1%0]:1"] {
            let Ok(addr) = a.parse::<SocketAddr>() else {
                continue;
            };
            let tok = t.encode(addr);
            assert!(
                tok.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{tok}"
            );
            assert_eq!(t.decode(&tok), Some(addr));
        }
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let t = FlowTokens::new([7; 32]);
        let other = FlowTokens::new([8; 32]);
        let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let tok = t.encode(addr);
        assert_eq!(other.decode(&tok), None, "another node's key");
        // the address swapped, MAC kept
        let forged_addr = hex::encode("127.0.0.1:40001");
        let mac = tok.rsplit_once('-').unwrap().1;
        assert_eq!(t.decode(&format!("ft{forged_addr}-{mac}")), None);
        // a MAC shortened to one byte must not pass the truncated check
        assert_eq!(
            t.decode(&format!(
                "{}-{}",
                tok.rsplit_once('-').unwrap().0,
                &mac[..2]
            )),
            None
        );
        for junk in ["", "ft", "ft-", "alice", "ftzz-00", "ft3132-"] {
            assert_eq!(t.decode(junk), None, "{junk:?}");
        }
    }
}
