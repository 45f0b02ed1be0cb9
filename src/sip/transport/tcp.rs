//! TCP listener with Content-Length framing, bounded connections, bounded message
//! size and two timeouts: a connection that sends nothing is closed after the idle
//! timeout, and a message that has started must complete within the message timeout
//! (a peer sending an endless header is cut off, holding at most `max` bytes).

use super::flows::Flows;
use super::framing::{check, Frame, FrameError};
use super::{Handler, Protocol, Replier, Source};
use crate::sip::message::build::stateless_error;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct TcpLimits {
    pub max_message_size: usize,
    pub max_connections: usize,
    pub message_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Accepts connections until the task is dropped. Every open connection is listed
/// in `flows` so requests can be sent to the peer over it.
pub async fn serve(
    listener: TcpListener,
    limits: TcpLimits,
    handler: Arc<dyn Handler>,
    flows: Arc<Flows>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= limits.max_connections {
            metrics::counter!("tandem_tcp_connections_refused_total").increment(1);
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("tandem_tcp_connections").increment(1.0);
        let open = open.clone();
        let limits = limits.clone();
        let handler = handler.clone();
        let flows = flows.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, peer, &limits, handler, &flows).await {
                tracing::debug!(%peer, reason = %e, "tcp connection closed");
            }
            open.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("tandem_tcp_connections").decrement(1.0);
        });
    }
}

/// Removes the connection from the flows when its reader ends, however it ends.
struct Listed<'a> {
    flows: &'a Flows,
    peer: SocketAddr,
    tx: mpsc::Sender<Bytes>,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.flows.closed(self.peer, &self.tx);
    }
}

#[derive(Debug, thiserror::Error)]
enum CloseReason {
    #[error("peer closed")]
    Eof,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("idle timeout")]
    Idle,
    #[error("message not completed in time")]
    Slow,
    #[error("framing: {0}")]
    Framing(#[from] FrameError),
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    limits: &TcpLimits,
    handler: Arc<dyn Handler>,
    flows: &Flows,
) -> Result<(), CloseReason> {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr()?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    // The writer lives as long as anyone holds a sender (the reader, pending replies).
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    flows.opened(peer, tx.clone());
    let _listed = Listed {
        flows,
        peer,
        tx: tx.clone(),
    };
    let source = Source {
        protocol: Protocol::Tcp,
        peer,
        local,
        reply: Replier::Tcp(tx.clone()),
    };
    let mut buf = BytesMut::with_capacity(4096);
    // When the current partial message must be complete by.
    let mut deadline: Option<Instant> = None;
    loop {
        loop {
            match check(&buf, limits.max_message_size) {
                Ok(Frame::Message(n)) => {
                    let msg = buf.split_to(n).freeze();
                    handler.on_message(msg, source.clone());
                    deadline = None;
                }
                Ok(Frame::Ping(n)) => {
                    let _ = buf.split_to(n);
                    let _ = tx.try_send(Bytes::from_static(b"\r\n")); // RFC 5626 §3.5.1 pong
                    deadline = None;
                }
                Ok(Frame::Skip(n)) => {
                    let _ = buf.split_to(n);
                }
                Ok(Frame::Incomplete) => break,
                Err(e) => {
                    metrics::counter!("tandem_sip_parse_errors_total", "transport" => "tcp", "reason" => "framing").increment(1);
                    // Answer what can be answered, then close: framing is lost (RFC 4475 `ncl`).
                    let status = if matches!(e, FrameError::TooLarge(_)) {
                        513
                    } else {
                        400
                    };
                    if let Some(r) = stateless_error(&buf, status, &e.to_string()) {
                        let _ = tx.try_send(r);
                    }
                    return Err(e.into());
                }
            }
        }
        // CRLFs before a start line are ignored (RFC 3261 §7.5): a lone CRLF, or the
        // start of a ping, leaves the connection idle rather than mid-message.
        let idle = buf.is_empty() || b"\r\n\r\n".starts_with(&buf);
        let wait = if idle {
            deadline = None;
            limits.idle_timeout
        } else {
            let d = *deadline.get_or_insert_with(|| Instant::now() + limits.message_timeout);
            d.saturating_duration_since(Instant::now())
        };
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(8192);
        }
        match tokio::time::timeout(wait, rd.read_buf(&mut buf)).await {
            Err(_) if idle => return Err(CloseReason::Idle),
            Err(_) => return Err(CloseReason::Slow),
            Ok(Ok(0)) => return Err(CloseReason::Eof),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}
