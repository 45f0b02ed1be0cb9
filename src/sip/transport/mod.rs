//! Transports: UDP datagrams and TCP streams (RFC 3261 §18). A transport delivers
//! whole messages to a [`Handler`] with a [`Source`] that says how to answer.

pub mod flows;
pub mod framing;
pub mod tcp;
pub mod udp;
pub mod via;

use bytes::Bytes;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }

    /// Whether the transport retransmits for us (RFC 3261 §17: timers differ).
    pub fn is_reliable(self) -> bool {
        matches!(self, Protocol::Tcp)
    }
}

/// A transport and a peer's address: where a message came from, and the way back
/// to that peer (over TCP, the connection from that address: an RFC 5626 flow).
/// Written `udp:192.0.2.1:5060` in logs and in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl Flow {
    pub fn new(protocol: Protocol, addr: SocketAddr) -> Flow {
        Flow { protocol, addr }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol.as_str(), self.addr)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a flow (expected `udp:ADDR:PORT` or `tcp:ADDR:PORT`): {0:?}")]
pub struct FlowParseError(String);

impl std::str::FromStr for Flow {
    type Err = FlowParseError;

    fn from_str(s: &str) -> Result<Flow, FlowParseError> {
        let bad = || FlowParseError(s.chars().take(80).collect());
        let (protocol, addr) = s.split_once(':').ok_or_else(bad)?;
        let protocol = match protocol {
            "udp" => Protocol::Udp,
            "tcp" => Protocol::Tcp,
            _ => return Err(bad()),
        };
        Ok(Flow {
            protocol,
            addr: addr.parse().map_err(|_| bad())?,
        })
    }
}

/// How to send back to where a message came from.
#[derive(Clone)]
pub enum Replier {
    Udp(Arc<UdpSocket>),
    /// The connection's writer queue; dropping all senders closes the connection.
    Tcp(mpsc::Sender<Bytes>),
}

impl Replier {
    /// Sends without waiting. UDP: a full socket buffer defers the send to a task.
    /// TCP: a full queue means the peer is not reading; the message is dropped.
    pub fn send(&self, to: SocketAddr, data: Bytes) {
        match self {
            Replier::Udp(sock) => match sock.try_send_to(&data, to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let sock = sock.clone();
                    tokio::spawn(async move {
                        let _ = sock.send_to(&data, to).await;
                    });
                }
                Err(e) => tracing::debug!(%to, error = %e, "udp send failed"),
            },
            Replier::Tcp(tx) => {
                if tx.try_send(data).is_err() {
                    tracing::debug!(%to, "tcp writer queue full or closed; dropping message");
                }
            }
        }
    }
}

/// Where a message came from.
#[derive(Clone)]
pub struct Source {
    pub protocol: Protocol,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub reply: Replier,
}

impl Source {
    /// The transport and peer this message came over.
    pub fn flow(&self) -> Flow {
        Flow::new(self.protocol, self.peer)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.flow().fmt(f)
    }
}

/// Receives every message a transport framed.
pub trait Handler: Send + Sync + 'static {
    fn on_message(&self, data: Bytes, source: Source);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_written_and_read_back() {
        for text in ["udp:127.0.0.1:5070", "tcp:[2001:db8::1]:5060"] {
            let f: Flow = text.parse().unwrap();
            assert_eq!(f.to_string(), text);
        }
        let f: Flow = "tcp:10.0.0.1:5061".parse().unwrap();
        assert_eq!(f.protocol, Protocol::Tcp);
        assert_eq!(f.addr, "10.0.0.1:5061".parse().unwrap());
        for bad in ["", "udp", "sctp:1.2.3.4:5", "udp:1.2.3.4", "udp:host:5060"] {
            assert!(bad.parse::<Flow>().is_err(), "{bad}");
        }
    }
}
