//! UDP listener: one datagram = one message (RFC 3261 §18.1.2). A datagram larger
//! than the configured maximum is answered 513 (RFC 3261 §18.1.1) and dropped.

use super::via::response_dest;
use super::{Handler, Protocol, Replier, Source};
use crate::sip::message::build::{raw_top_via, stateless_error};
use bytes::Bytes;
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;

/// Binds a UDP socket with large kernel buffers (registration storms arrive in bursts).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(8 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// Receives datagrams forever, handing each to `handler`.
pub async fn serve(sock: Arc<UdpSocket>, max_message_size: usize, handler: Arc<dyn Handler>) {
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    // one byte more than allowed, so an oversize datagram is detected, not truncated
    let mut buf = vec![0u8; max_message_size + 1];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP port unreachable from an earlier send shows up here on some
                // systems; it concerns that send, not this socket.
                tracing::trace!(error = %e, "udp recv error");
                continue;
            }
        };
        if n == 0 {
            continue;
        }
        if n > max_message_size {
            metrics::counter!("tandem_sip_parse_errors_total", "transport" => "udp", "reason" => "too_large").increment(1);
            if let Some(resp) = stateless_error(&buf[..n], 513, "Message Too Large") {
                // RFC 3261 §18.2.2: the Via port unless the request asked for rport
                let dest =
                    response_dest(raw_top_via(&buf[..n]).as_ref(), super::Protocol::Udp, peer);
                Replier::Udp(sock.clone()).send(dest, resp);
            }
            continue;
        }
        if buf[..n]
            .iter()
            .all(|c| matches!(c, b'\r' | b'\n' | b' ' | b'\0'))
        {
            continue; // keep-alive padding some NATs/phones send
        }
        let source = Source {
            protocol: Protocol::Udp,
            peer,
            local,
            reply: Replier::Udp(sock.clone()),
        };
        handler.on_message(Bytes::copy_from_slice(&buf[..n]), source);
    }
}
