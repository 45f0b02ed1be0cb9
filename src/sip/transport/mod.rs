//! Transports: UDP datagrams and TCP streams (RFC 3261 §18). A transport delivers
//! whole messages to a [`Handler`] with a [`Source`] that says how to answer.

pub mod flows;
pub mod framing;
pub mod tcp;
pub mod udp;

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

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol.as_str(), self.peer)
    }
}

/// Receives every message a transport framed.
pub trait Handler: Send + Sync + 'static {
    fn on_message(&self, data: Bytes, source: Source);
}
