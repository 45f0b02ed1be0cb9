mod common;
use common::*;

#[tokio::test]
async fn options_and_register_round_trip() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "cid1",
            1,
            "Contact: <sip:alice@127.0.0.1:5999>\r\nExpires: 600\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let contacts = headers(&r, "Contact");
    assert_eq!(contacts.len(), 1);
    assert!(
        contacts[0].starts_with("<sip:alice@127.0.0.1:5999>;expires="),
        "{r}"
    );
    let health = http_get(n.admin(), "/health").await;
    assert!(health.contains("\"bindings\":1"), "{health}");
}
