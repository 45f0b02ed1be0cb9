//! Live TCP connections by peer address: a phone registered over TCP is reached
//! over the connection its REGISTER came on (RFC 5626 §5.3: the flow), because
//! the address in its Contact is usually not one anyone can connect to.

use super::Replier;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::sync::mpsc;

#[derive(Default)]
pub struct Flows {
    by_peer: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
}

impl Flows {
    /// A connection from `peer` opened; its writer queue is `tx`.
    pub fn opened(&self, peer: SocketAddr, tx: mpsc::Sender<Bytes>) {
        self.by_peer.lock().insert(peer, tx);
    }

    /// The connection from `peer` whose writer queue is `tx` closed. A newer
    /// connection from the same address (the port reused) is left alone.
    pub fn closed(&self, peer: SocketAddr, tx: &mpsc::Sender<Bytes>) {
        let mut m = self.by_peer.lock();
        if m.get(&peer).is_some_and(|t| t.same_channel(tx)) {
            m.remove(&peer);
        }
    }

    /// How to send to `peer` over its connection, if it is still open.
    pub fn get(&self, peer: SocketAddr) -> Option<Replier> {
        let m = self.by_peer.lock();
        let tx = m.get(&peer)?;
        (!tx.is_closed()).then(|| Replier::Tcp(tx.clone()))
    }

    pub fn is_open(&self, peer: SocketAddr) -> bool {
        self.get(peer).is_some()
    }

    pub fn len(&self) -> usize {
        self.by_peer.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_is_forgotten_but_not_its_successor() {
        let f = Flows::default();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (old, _old_rx) = mpsc::channel(1);
        let (new, _new_rx) = mpsc::channel(1);
        f.opened(peer, old.clone());
        assert!(f.is_open(peer));
        // the port is reused by a new connection before the old one's close is seen
        f.opened(peer, new.clone());
        f.closed(peer, &old);
        assert!(f.is_open(peer), "the newer connection must stay");
        f.closed(peer, &new);
        assert!(!f.is_open(peer));
        assert!(f.is_empty());
    }

    #[test]
    fn a_connection_whose_writer_ended_is_not_offered() {
        let f = Flows::default();
        let peer: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let (tx, rx) = mpsc::channel(1);
        f.opened(peer, tx);
        drop(rx); // the writer task ended (write error)
        assert!(f.get(peer).is_none());
    }
}
