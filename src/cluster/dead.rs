//! Which peers are dead, from successive readings of the nodes table (pure).

use crate::location::NodeId;
use crate::store::postgres::Peer;
use std::collections::HashSet;

#[derive(Default)]
pub struct DeadPeers {
    dead: HashSet<NodeId>,
}

impl DeadPeers {
    /// Takes a reading; returns the peers that are newly dead. A dead peer that
    /// heartbeats again (restarted) is alive from then on.
    pub fn observe(&mut self, peers: &[Peer]) -> Vec<NodeId> {
        let mut newly = Vec::new();
        for p in peers {
            if p.stale {
                if self.dead.insert(p.node.clone()) {
                    newly.push(p.node.clone());
                }
            } else {
                self.dead.remove(&p.node);
            }
        }
        newly
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: &str, stale: bool) -> Peer {
        Peer {
            node: NodeId(n.into()),
            sip_addr: "127.0.0.1:5060".into(),
            stale,
        }
    }

    #[test]
    fn a_peer_dies_once_and_comes_back_when_it_heartbeats() {
        let mut d = DeadPeers::default();
        assert!(d.observe(&[peer("a", false), peer("b", false)]).is_empty());
        assert_eq!(
            d.observe(&[peer("a", true), peer("b", false)]),
            vec![NodeId("a".into())]
        );
        // still stale: not reported again
        assert!(d.observe(&[peer("a", true)]).is_empty());
        // restarted
        assert!(d.observe(&[peer("a", false)]).is_empty());
        // and when it dies again, it is reported again
        assert_eq!(d.observe(&[peer("a", true)]), vec![NodeId("a".into())]);
    }
}
