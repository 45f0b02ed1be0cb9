//! The cluster (seed 000 FIG. 4A–4D, issue 4): three nodes on 127.0.0.2–4 sharing
//! a throwaway PostgreSQL that the test starts itself, replicating bindings with
//! LISTEN/NOTIFY and the change log.
mod common;
use common::pg::TestPostgres;
use common::*;
use std::time::Duration;
use tandem::app::start;
use tandem::config::Config;
use tandem::location::Binding;

/// Long enough for a change to cross the cluster on a loaded CI machine.
const SPREAD: Duration = Duration::from_secs(10);

fn cluster_config(id: &str, ip: &str, url: &str) -> Config {
    let text = format!(
        r#"
[node]
id = "{id}"

[sip]
udp = ["{ip}:0"]
tcp = ["{ip}:0"]

[registrar]
authenticate = false

[store]
backend = "postgres"
url = "{url}"

[cluster]
# tests that count tombstones run well within a minute
tombstone_prune_secs = 60
heartbeat_interval_ms = 200
node_timeout_ms = 1500
poll_interval_ms = 200

[admin]
listen = "{ip}:0"

[calls]
authenticate = false

[log]
level = "warn"
"#
    );
    Config::from_toml(&text, "cluster-test.toml").expect("cluster test config is valid")
}

async fn cluster_node(pg: &TestPostgres, id: &str, ip: &str) -> TestNode {
    start_node(cluster_config(id, ip, &pg.url())).await
}

/// A node on a config a test adjusted (see `cluster_config`).
async fn start_node(cfg: Config) -> TestNode {
    let node = start(cfg.clone()).await.expect("cluster node starts");
    TestNode {
        node: Some(node),
        dir: tempfile::tempdir().unwrap(),
        cfg,
    }
}

/// The deletion of `b` (at its version) committed by its owner's store, the way
/// the owner's expiry task or a failed poll queues it.
async fn delete_as_owner(pg: &TestPostgres, b: &Binding) {
    use tandem::store::BindingStore;
    let mut store = tandem::store::postgres::PgStore::connect(&pg.url(), b.owner.clone())
        .await
        .unwrap();
    store
        .apply(&[tandem::store::StoreOp::Delete {
            aor: b.aor.clone(),
            key: b.key.clone(),
            version: b.version,
        }])
        .await
        .unwrap();
}

fn table(n: &TestNode) -> Vec<Binding> {
    let mut v = n
        .node
        .as_ref()
        .unwrap()
        .node
        .registrar()
        .location()
        .snapshot();
    v.sort_by(|a, b| (&a.aor, &a.key).cmp(&(&b.aor, &b.key)));
    v
}

/// (AOR, owner) of every binding a node holds.
fn owners(n: &TestNode) -> Vec<(String, String)> {
    table(n)
        .into_iter()
        .map(|b| (b.aor, b.owner.0.to_string()))
        .collect()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SPREAD;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers `user` at node `n` from a socket on the node's address.
async fn register_at(n: &TestNode, user: &str, expires: u32, extra: &str) -> UdpClient {
    let c = UdpClient::new(n.udp()).await;
    let contact = format!(
        "Contact: <sip:{user}@127.0.0.1:{}>{extra};expires={expires}\r\n",
        c.port()
    );
    let r = c
        .request(&register(
            c.port(),
            user,
            &format!("reg-{user}-{}", c.port()),
            1,
            &contact,
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    c
}

fn pair(aor_user: &str, owner: &str) -> (String, String) {
    (format!("sip:{aor_user}@127.0.0.1"), owner.to_string())
}

#[tokio::test]
async fn registration_and_deletion_reach_every_peer() {
    let pg = TestPostgres::start().await;
    let a = cluster_node(&pg, "a", "127.0.0.2").await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    let c = cluster_node(&pg, "c", "127.0.0.4").await;

    // FIG. 4A: registered at A, B and C learn it with A as the owner
    let phone = register_at(&a, "alice", 3600, "").await;
    for n in [&b, &c] {
        eventually("alice reaches the peers", || {
            owners(n) == vec![pair("alice", "a")]
        })
        .await;
    }
    assert_eq!(table(&b)[0].contact, table(&a)[0].contact);
    assert_eq!(table(&c)[0].version, table(&a)[0].version);

    // FIG. 4B: unregistered at A, deleted everywhere (and a tombstone in the log)
    let contact = format!(
        "Contact: <sip:alice@127.0.0.1:{}>;expires=0\r\n",
        phone.port()
    );
    let r = phone
        .request(&register(
            phone.port(),
            "alice",
            &format!("reg-alice-{}", phone.port()),
            2,
            &contact,
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    for n in [&a, &b, &c] {
        eventually("alice is gone everywhere", || table(n).is_empty()).await;
    }
    assert_eq!(
        pg.psql_async("SELECT count(*) FROM bindings WHERE deleted")
            .await,
        "1"
    );
}

#[tokio::test]
async fn a_binding_that_expires_at_its_owner_is_deleted_everywhere() {
    let pg = TestPostgres::start().await;
    let a = cluster_node(&pg, "a", "127.0.0.2").await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    // Expiry at the owner (min_expires is 60 s, too long to wait): A's table
    // purges the binding as if its time had come, and A's store records the
    // deletion the way the expiry task does; B follows the tombstone.
    let _p = register_at(&a, "carol", 3600, "").await;
    eventually("carol reaches b", || owners(&b) == vec![pair("carol", "a")]).await;
    let purged = a
        .node
        .as_ref()
        .unwrap()
        .node
        .registrar()
        .location()
        .purge_expired(u64::MAX);
    assert_eq!(purged.len(), 1);
    // B's own expiry check sees nothing expired; the deletion must come from A
    // through the database.
    delete_as_owner(&pg, &purged[0]).await;
    eventually("carol is gone at b", || table(&b).is_empty()).await;
}

#[tokio::test]
async fn a_dead_node_is_dropped_by_its_peers_and_purged_once() {
    let pg = TestPostgres::start().await;
    let mut a = cluster_node(&pg, "a", "127.0.0.2").await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    let c = cluster_node(&pg, "c", "127.0.0.4").await;
    let _p1 = register_at(&a, "alice", 3600, "").await;
    let _p2 = register_at(&b, "bob", 3600, "").await;
    for n in [&a, &b, &c] {
        eventually("both bindings everywhere", || table(n).len() == 2).await;
    }

    // A stops heartbeating (its tasks end; nothing is deleted by A itself)
    a.node.take().unwrap().shutdown().await;
    let t0 = tokio::time::Instant::now();
    for n in [&b, &c] {
        eventually("A's bindings dropped", || {
            owners(n) == vec![pair("bob", "b")]
        })
        .await;
    }
    eprintln!(
        "A's bindings dropped by B and C after {:?} (timeout 1.5 s)",
        t0.elapsed()
    );
    // purged in the database: one tombstone for alice, by one of the peers, A
    // marked dead. That it happens once is the claim's doing
    // (`purge_dead_claims_a_dead_node_once_and_only_by_the_beat_it_died_with`)
    // and the state machine's (`cluster::membership` unit tests), with no
    // real-time wait here.
    eventually("A purged", || {
        pg.psql("SELECT count(*) FROM bindings WHERE deleted AND owner_node = 'a'") == "1"
    })
    .await;
    let purger = pg
        .psql_async("SELECT changed_by FROM bindings WHERE owner_node = 'a'")
        .await;
    assert!(purger == "b" || purger == "c", "purged by {purger}");
    assert_eq!(
        pg.psql_async("SELECT alive FROM nodes WHERE node_id = 'a'")
            .await,
        "f"
    );

    // FIG. 4C: A comes back and receives the snapshot (bob from B), not its purged alice
    a.node = Some(start(a.cfg.clone()).await.expect("A restarts"));
    assert_eq!(owners(&a), vec![pair("bob", "b")]);
    // and from now on its registrations reach the others again
    let _p3 = register_at(&a, "carol", 3600, "").await;
    for n in [&b, &c] {
        eventually("carol reaches the peers", || table(n).len() == 2).await;
    }
}

/// FIG. 4D's "once", in the database: every peer that sees a death asks for the
/// purge, at about the same time; one claim wins. And a claim names the beat the
/// node was judged dead by, so a node that beat since is left alone.
#[tokio::test]
async fn purge_dead_claims_a_dead_node_once_and_only_by_the_beat_it_died_with() {
    use tandem::location::NodeId;
    use tandem::store::postgres::{migrate, PgCluster, PgStore};
    use tandem::store::{BindingStore, StoreOp};
    let pg = TestPostgres::start().await;
    let url = pg.url();
    migrate(&url).await.unwrap();
    let x = PgCluster::connect(&url, NodeId("x".into())).await.unwrap();
    x.announce("127.0.0.1:9").await.unwrap();
    x.heartbeat(0).await.unwrap();
    let beat: i64 = pg
        .psql_async("SELECT beat FROM nodes WHERE node_id = 'x'")
        .await
        .parse()
        .unwrap();
    let mut store = PgStore::connect(&url, NodeId("x".into())).await.unwrap();
    let binding = Binding {
        aor: "sip:xavier@127.0.0.1".into(),
        key: "sip:xavier@127.0.0.1:9".into(),
        contact: "sip:xavier@127.0.0.1:9".into(),
        instance: None,
        reg_id: None,
        q: None,
        call_id: "x1".into(),
        cseq: 1,
        expires_at: tandem::location::now_ms() + 3_600_000,
        path: vec![],
        source: "udp:127.0.0.1:9".parse().unwrap(),
        user_agent: None,
        owner: NodeId("x".into()),
        version: 1,
    };
    store.apply(&[StoreOp::Upsert(binding)]).await.unwrap();
    let mut peers = Vec::new();
    for id in ["b", "c", "d"] {
        peers.push(PgCluster::connect(&url, NodeId(id.into())).await.unwrap());
    }

    // judged by a beat x has moved past: nobody purges
    for p in &peers {
        assert_eq!(
            p.purge_dead(&NodeId("x".into()), beat - 1).await.unwrap(),
            0
        );
    }
    assert_eq!(
        pg.psql_async("SELECT alive FROM nodes WHERE node_id = 'x'")
            .await,
        "t"
    );
    // judged by its last beat, by three peers at once: one purge of one binding
    let dead = NodeId("x".into());
    let (r1, r2, r3) = tokio::join!(
        peers[0].purge_dead(&dead, beat),
        peers[1].purge_dead(&dead, beat),
        peers[2].purge_dead(&dead, beat),
    );
    let mut purged = vec![r1.unwrap(), r2.unwrap(), r3.unwrap()];
    purged.sort();
    assert_eq!(purged, vec![0, 0, 1]);
    // and asking again later changes nothing
    assert_eq!(peers[0].purge_dead(&dead, beat).await.unwrap(), 0);
    assert_eq!(
        pg.psql_async(&format!(
            "SELECT alive, beat = {beat} FROM nodes WHERE node_id = 'x'"
        ))
        .await,
        "f|t"
    );
    assert_eq!(
        pg.psql_async("SELECT count(*) FROM bindings WHERE owner_node = 'x' AND deleted")
            .await,
        "1"
    );
}

#[tokio::test]
async fn a_joining_node_gets_the_snapshot_then_live_changes() {
    let pg = TestPostgres::start().await;
    let a = cluster_node(&pg, "a", "127.0.0.2").await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    let mut phones = Vec::new();
    for i in 0..50 {
        let n = if i % 2 == 0 { &a } else { &b };
        phones.push(register_at(n, &format!("u{i}"), 3600, "").await);
    }
    let c = cluster_node(&pg, "c", "127.0.0.4").await;
    // the snapshot is loaded before start() returns
    assert_eq!(table(&c).len(), 50);
    let _late = register_at(&a, "late", 3600, "").await;
    // (B is waited for too: it learns the change through the same replication,
    // and comparing its table before it did raced under load)
    eventually("a registration after the join reaches C and B", || {
        table(&c).len() == 51 && table(&b).len() == 51
    })
    .await;
    assert_eq!(table(&c), table(&a));
    assert_eq!(table(&b), table(&a));
}

#[tokio::test]
async fn the_seed_race_latest_registration_wins_everywhere() {
    let pg = TestPostgres::start().await;
    let a = cluster_node(&pg, "a", "127.0.0.2").await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    let c = cluster_node(&pg, "c", "127.0.0.4").await;
    // extension 1000 with one instance id: the same binding wherever it registers
    let inst = ";+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-000000001000>\"";
    let _at_a = register_at(&a, "1000", 3600, inst).await;
    for n in [&b, &c] {
        eventually("1000 at A everywhere", || {
            owners(n) == vec![pair("1000", "a")]
        })
        .await;
    }
    let old = table(&a)[0].clone();
    // the device moves to C
    let _at_c = register_at(&c, "1000", 3600, inst).await;
    for n in [&a, &b, &c] {
        eventually("1000 now owned by C everywhere", || {
            owners(n) == vec![pair("1000", "c")]
        })
        .await;
    }
    // A's deletion of the binding it had (its expiry, or a failed poll) arrives
    // late: it names the old version, so C's newer registration stays
    delete_as_owner(&pg, &old).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in [&a, &b, &c] {
        assert_eq!(owners(n), vec![pair("1000", "c")]);
    }
    assert_eq!(
        pg.psql_async("SELECT owner_node, deleted FROM bindings")
            .await,
        "c|f"
    );
}

#[tokio::test]
async fn after_postgres_restarts_every_table_equals_the_database() {
    let pg = TestPostgres::start().await;
    let a = cluster_node(&pg, "a", "127.0.0.2").await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    // a stream of 30 phones registering one after another at A; PostgreSQL
    // restarts in the middle of it. A REGISTER that meets the restart gets an
    // error answer (500) and its phone retries, as phones do.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a_udp = a.udp();
    let counter = done.clone();
    let stream = tokio::spawn(async move {
        let mut phones = Vec::new();
        let mut errors = 0;
        for i in 0..30 {
            let user = format!("s{i:02}");
            let c = UdpClient::new(a_udp).await;
            let contact = format!("Contact: <sip:{user}@127.0.0.1:{}>\r\n", c.port());
            let mut ok = false;
            for attempt in 1..=50 {
                let reg = register(c.port(), &user, &format!("reg-{user}"), attempt, &contact);
                let r = c.request(&reg).await;
                if status(&r) == 200 {
                    ok = true;
                    break;
                }
                errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(ok, "{user} never registered");
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            phones.push(c);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        (phones, errors)
    });
    eventually("the stream is under way", || {
        done.load(std::sync::atomic::Ordering::SeqCst) >= 10
    })
    .await;
    pg.restart_async().await;
    let (_phones, errors) = stream.await.expect("the stream ends");
    eprintln!("REGISTERs answered with an error during the restart: {errors}");
    let db_rows = || {
        pg.psql("SELECT aor || ' ' || owner_node FROM bindings WHERE NOT deleted ORDER BY aor, binding_key")
    };
    let mem = |n: &TestNode| {
        table(n)
            .into_iter()
            .map(|b| format!("{} {}", b.aor, b.owner.0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    eventually("A and B equal the database", || {
        let db = db_rows();
        db.lines().count() == 30 && mem(&a) == db && mem(&b) == db
    })
    .await;
}

fn cluster_of(n: &TestNode) -> &std::sync::Arc<tandem::cluster::Cluster> {
    n.node
        .as_ref()
        .unwrap()
        .node
        .cluster()
        .expect("a cluster node")
}

async fn knows_peer(n: &TestNode, peer: &str) {
    let id = tandem::location::NodeId(peer.into());
    eventually("the peer's SIP address is known", || {
        cluster_of(n).sip_addr_of(&id).is_some()
    })
    .await;
}

#[tokio::test]
async fn a_call_from_a_phone_on_b_reaches_a_phone_on_a() {
    let pg = TestPostgres::start().await;
    let a = cluster_node(&pg, "a", "127.0.0.2").await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    let alice = register_at(&a, "alice", 3600, "").await;
    eventually("B knows alice", || owners(&b) == vec![pair("alice", "a")]).await;
    knows_peer(&b, "a").await;

    // the caller is B's; B forwards to A, the owner, which delivers to alice
    let caller = UdpClient::new(b.udp()).await;
    // the cluster's one domain (every node serves it; the phones registered in it)
    let ruri = "sip:alice@127.0.0.1".to_string();
    caller
        .send(invite(&caller, &ruri, "x-node", "xn1").as_bytes())
        .await;
    let inv = next_request(&alice, "INVITE").await;
    assert!(
        inv.starts_with(&format!("INVITE sip:alice@127.0.0.1:{} ", alice.port())),
        "A put alice's contact in the Request-URI: {inv}"
    );
    let vias = headers(&inv, "Via");
    assert_eq!(vias.len(), 3, "caller, B, A: {inv}");
    assert!(vias[0].contains(&a.udp().to_string()) && vias[1].contains(&b.udp().to_string()));
    let rr = headers(&inv, "Record-Route");
    assert_eq!(rr.len(), 2, "both nodes stay in the dialog: {inv}");

    let contact = format!("Contact: <sip:alice@127.0.0.1:{}>\r\n", alice.port());
    reply(&alice, &answer(&inv, 200, "OK", "alicetag", &contact)).await;
    let ok = next_status(&caller, 200).await;
    assert_eq!(headers(&ok, "Via").len(), 1, "{ok}");

    // ACK and BYE follow the route set (Record-Route reversed) through B and A
    let routes: String = headers(&ok, "Record-Route")
        .into_iter()
        .rev()
        .map(|r| format!("Route: {r}\r\n"))
        .collect();
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:alice@127.0.0.1:{alice_port} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK{method}{cseq}\r\n\
             {routes}\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: x-node\r\n\
             CSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            alice_port = alice.port(),
            port = caller.port(),
            from = headers(&ok, "From")[0],
            to = headers(&ok, "To")[0],
        )
    };
    caller.send(in_dialog("ACK", 1).as_bytes()).await;
    let ack = next_request(&alice, "ACK").await;
    assert!(headers(&ack, "Route").is_empty(), "{ack}");
    caller.send(in_dialog("BYE", 2).as_bytes()).await;
    let bye = next_request(&alice, "BYE").await;
    reply(&alice, &answer(&bye, 200, "OK", "alicetag", "")).await;
    let bye_ok = next_status(&caller, 200).await;
    assert!(bye_ok.contains("CSeq: 2 BYE"), "{bye_ok}");
}

#[tokio::test]
async fn a_stale_entry_is_removed_when_its_owner_no_longer_has_the_phone() {
    let pg = TestPostgres::start().await;
    let a = cluster_node(&pg, "a", "127.0.0.2").await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    let _bob = register_at(&a, "bob", 3600, "").await;
    eventually("B knows bob", || owners(&b) == vec![pair("bob", "a")]).await;
    knows_peer(&b, "a").await;
    // A lost bob (as if he moved and A's deletion has not reached B yet)
    let removed = a
        .node
        .as_ref()
        .unwrap()
        .node
        .registrar()
        .location()
        .remove_owned("sip:bob@127.0.0.1", &tandem::location::NodeId("a".into()));
    assert_eq!(removed, 1);

    let caller = UdpClient::new(b.udp()).await;
    let ruri = "sip:bob@127.0.0.1".to_string();
    caller
        .send(invite(&caller, &ruri, "stale", "st1").as_bytes())
        .await;
    let fin = loop {
        let m = caller.recv(CALL_WAIT).await.expect("an answer");
        if status(&m) >= 200 {
            break m;
        }
    };
    assert!(matches!(status(&fin), 404 | 480), "{fin}");
    // B dropped its stale entry for bob
    assert!(owners(&b).is_empty(), "{:?}", owners(&b));
}

#[tokio::test]
async fn a_phone_that_stops_answering_polls_is_deleted_everywhere() {
    let pg = TestPostgres::start().await;
    let mut cfg = cluster_config("a", "127.0.0.2", &pg.url());
    cfg.registrar.poll_contacts = true;
    cfg.registrar.poll_interval_secs = 1;
    cfg.registrar.poll_timeout_ms = 300;
    cfg.registrar.poll_max_misses = 2;
    let a = start_node(cfg).await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    let alive = register_at(&a, "alive", 3600, "").await;
    let silent = register_at(&a, "silent", 3600, "").await;
    eventually("both reach B", || table(&b).len() == 2).await;
    // `alive` answers every OPTIONS its owner sends; `silent` never does
    let answering = tokio::spawn(async move {
        loop {
            let Some(m) = alive.recv(Duration::from_secs(30)).await else {
                return;
            };
            if m.starts_with("OPTIONS ") {
                alive
                    .send(answer(&m, 200, "OK", "pong", "").as_bytes())
                    .await;
            }
        }
    });
    for n in [&a, &b] {
        eventually("the silent phone is deleted everywhere", || {
            owners(n) == vec![pair("alive", "a")]
        })
        .await;
    }
    // it was polled: OPTIONS reached it
    let polled = silent.recv(Duration::from_millis(100)).await;
    assert!(polled.is_some_and(|m| m.starts_with("OPTIONS sip:silent@")));
    answering.abort();
}

#[tokio::test]
async fn a_tcp_phone_whose_connection_closes_is_deleted_everywhere() {
    let pg = TestPostgres::start().await;
    let mut cfg = cluster_config("a", "127.0.0.2", &pg.url());
    cfg.registrar.unregister_on_flow_close = true;
    let a = start_node(cfg).await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    let mut phone = TcpClient::connect(a.tcp()).await;
    let contact = "Contact: <sip:tcpbob@127.0.0.1:9;transport=tcp>\r\n";
    let reg = register(phone.port(), "tcpbob", "reg-tcpbob", 1, contact)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    phone.send(reg.as_bytes()).await;
    assert_eq!(status(&phone.next(CALL_WAIT).await.expect("200")), 200);
    eventually("tcpbob reaches B", || {
        owners(&b) == vec![pair("tcpbob", "a")]
    })
    .await;
    drop(phone); // the connection closes (no more keep-alives)
    for n in [&a, &b] {
        eventually("tcpbob is deleted everywhere", || table(n).is_empty()).await;
    }
}

#[tokio::test]
async fn a_phone_unregistering_at_another_node_is_gone_at_its_owner_and_tombstones_are_pruned() {
    let pg = TestPostgres::start().await;
    let mut nodes = Vec::new();
    for (id, ip) in [("a", "127.0.0.2"), ("b", "127.0.0.3")] {
        let mut cfg = cluster_config(id, ip, &pg.url());
        cfg.cluster.tombstone_prune_secs = 1;
        nodes.push(start_node(cfg).await);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let inst = ";+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000beef>\"";
    let phone = register_at(a, "dave", 3600, inst).await;
    eventually("dave reaches B", || owners(b) == vec![pair("dave", "a")]).await;
    // the phone now talks to B and unregisters there (Expires 0, same instance)
    let at_b = UdpClient::new(b.udp()).await;
    let contact = format!(
        "Contact: <sip:dave@127.0.0.1:{}>{inst};expires=0\r\n",
        phone.port()
    );
    let r = at_b
        .request(&register(at_b.port(), "dave", "unreg-dave", 1, &contact))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    for n in [&a, &b] {
        eventually("dave is gone at both nodes, A included", || {
            table(n).is_empty()
        })
        .await;
    }
    // the tombstone is pruned once every other live node has applied it
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if pg.psql_async("SELECT count(*) FROM bindings").await == "0" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tombstone never pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_call_is_retried_where_the_phone_is_now_after_its_stale_owner_says_no() {
    let pg = TestPostgres::start().await;
    let b = cluster_node(&pg, "b", "127.0.0.3").await;
    let c = cluster_node(&pg, "c", "127.0.0.4").await;
    // node "x" is a socket this test drives, alive in the nodes table
    let x = UdpClient::new(b.udp()).await;
    pg.psql_async(&format!(
        "INSERT INTO nodes (node_id, sip_addr) VALUES ('x', '127.0.0.1:{}')",
        x.port()
    ))
    .await;
    let url = pg.url();
    let heartbeat = tokio::spawn(async move {
        let db = sqlx::PgPool::connect(&url).await.unwrap();
        loop {
            let _ = sqlx::query(
                "UPDATE nodes SET heartbeat_at = now(), beat = beat + 1 WHERE node_id = 'x'",
            )
            .execute(&db)
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    knows_peer(&b, "x").await;
    // B believes erin is registered at x (x's deletion has not reached B yet)
    let stale = Binding {
        aor: "sip:erin@127.0.0.1".into(),
        key: "sip:erin@127.0.0.1:9".into(),
        contact: "sip:erin@127.0.0.1:9".into(),
        instance: None,
        reg_id: None,
        q: None,
        call_id: "old".into(),
        cseq: 1,
        expires_at: tandem::location::now_ms() + 3_600_000,
        path: vec![],
        source: "udp:127.0.0.1:9".parse().unwrap(),
        user_agent: None,
        owner: tandem::location::NodeId("x".into()),
        version: 1,
    };
    let b_table = b.node.as_ref().unwrap().node.registrar().location().clone();
    assert!(b_table.apply_remote(stale, false));

    let caller = UdpClient::new(b.udp()).await;
    caller
        .send(invite(&caller, "sip:erin@127.0.0.1", "retry-call", "rc1").as_bytes())
        .await;
    let to_x = next_request(&x, "INVITE").await;
    // meanwhile erin has registered at C, and B has learnt it
    let erin = register_at(&c, "erin", 3600, "").await;
    eventually("B knows erin at C", || {
        owners(&b).contains(&pair("erin", "c"))
    })
    .await;
    knows_peer(&b, "c").await;
    // x answers that it has no such phone: B drops the entry and tries C
    x.send(answer(&to_x, 480, "Temporarily Unavailable", "xtag", "").as_bytes())
        .await;
    let inv = next_request(&erin, "INVITE").await;
    let contact = format!("Contact: <sip:erin@127.0.0.1:{}>\r\n", erin.port());
    reply(&erin, &answer(&inv, 200, "OK", "erintag", &contact)).await;
    let ok = next_status(&caller, 200).await;
    assert!(ok.contains("tag=erintag"), "{ok}");
    assert_eq!(
        owners(&b),
        vec![pair("erin", "c")],
        "the stale entry is gone"
    );
    heartbeat.abort();
}
