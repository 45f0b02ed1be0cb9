//! The thin tokio layer under the phones: a handful of UDP sockets shared by all
//! phones, one timer heap, one loop. No task per phone, so one core drives
//! 100,000 of them: a phone costs its state (well under a kilobyte) and a heap
//! entry while it waits.

use super::phone::Phone;
use super::profile::Profile;
use super::report::{phone_line, summarize, Summary};
use crate::sip::message::build::response_to;
use crate::sip::message::{parse, Message, Method};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How the phones are laid out over time and sockets.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Phones `start..start + phones`.
    pub start: u32,
    pub phones: u32,
    /// The first `priority` phones send `Resource-Priority: ets.0`.
    pub priority: u32,
    /// Phones started per second; 0: all at once.
    pub rate: f64,
    pub sockets: usize,
    pub bind: IpAddr,
    /// Stop after this long even if phones are still busy.
    pub duration: Duration,
    /// Keep one line per phone in the outcome.
    pub per_phone: bool,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub summary: Summary,
    /// One line per phone when `Plan::per_phone`.
    pub phone_lines: Vec<String>,
}

/// Work done between two looks at the sockets: enough to amortise the loop, little
/// enough that a burst of timers (`--rate 0`) does not starve the readers and
/// overflow the sockets' receive buffers.
const BATCH: usize = 256;

/// Kernel receive buffer asked for each socket (capped by `net.core.rmem_max`).
const RECV_BUFFER: usize = 8 << 20;

struct Sim {
    p: Profile,
    start: u32,
    phones: Vec<Phone>,
    socks: Vec<Arc<UdpSocket>>,
    heap: BinaryHeap<Reverse<(Instant, u32)>>,
    /// The deadline each phone's heap entry is for; older entries are stale.
    scheduled: Vec<Option<Instant>>,
    settled: Vec<bool>,
    settled_count: usize,
}

impl Sim {
    /// Sends what phone `i` queued, and files its next deadline.
    async fn after(&mut self, i: usize) {
        let sock = self.socks[i % self.socks.len()].clone();
        while let Some((dest, b)) = self.phones[i].poll_transmit() {
            send(&sock, &b, dest).await;
        }
        let t = self.phones[i].poll_timeout();
        if t != self.scheduled[i] {
            self.scheduled[i] = t;
            if let Some(t) = t {
                self.heap.push(Reverse((t, i as u32)));
            }
        }
        let s = self.phones[i].is_settled(&self.p);
        if s != self.settled[i] {
            self.settled[i] = s;
            if s {
                self.settled_count += 1;
            } else {
                self.settled_count -= 1;
            }
        }
    }

    async fn on_datagram(&mut self, sock: usize, from: SocketAddr, data: Bytes) {
        match parse(&data) {
            Ok(Message::Response(resp)) => {
                let Some(idx) = resp
                    .header(&crate::sip::message::HeaderName::CallId)
                    .and_then(|c| self.p.phone_of(c))
                else {
                    return;
                };
                let Some(i) = idx.checked_sub(self.start).map(|i| i as usize) else {
                    return;
                };
                if i < self.phones.len() {
                    self.phones[i].handle_response(&self.p, Instant::now(), &resp);
                    self.after(i).await;
                }
            }
            // the node polling a phone (RFC 3261 §11): the phone is alive
            Ok(Message::Request(req)) if req.method != Method::Ack => {
                let answer = response_to(&req, 200, Some("tandem-sim")).to_bytes();
                send(&self.socks[sock], &answer, from).await;
            }
            _ => {}
        }
    }

    /// Runs the phones whose deadline passed, at most `BATCH`; how many ran.
    async fn fire_due(&mut self, now: Instant) -> usize {
        let mut fired = 0;
        while fired < BATCH {
            match self.heap.peek() {
                Some(&Reverse((t, i))) if t <= now => {
                    self.heap.pop();
                    let i = i as usize;
                    if self.scheduled[i] != Some(t) {
                        continue; // superseded
                    }
                    self.scheduled[i] = None;
                    self.phones[i].handle_timeout(&self.p, now);
                    self.after(i).await;
                    fired += 1;
                }
                _ => break,
            }
        }
        fired
    }
}

async fn send(sock: &UdpSocket, b: &[u8], dest: SocketAddr) {
    // a lost datagram is what UDP is for: the transaction retransmits
    match sock.try_send_to(b, dest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let _ = sock.send_to(b, dest).await;
        }
        Err(_) => {}
    }
}

fn bind(ip: IpAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, 0);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    let _ = s.set_send_buffer_size(RECV_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Runs the simulation to its end: every phone settled, or `plan.duration` passed.
pub async fn run(p: Profile, plan: &Plan) -> std::io::Result<RunOutcome> {
    let mut socks = Vec::new();
    for _ in 0..plan.sockets.max(1) {
        socks.push(Arc::new(bind(plan.bind)?));
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, SocketAddr, Bytes)>();
    let readers: Vec<_> = socks
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let (s, tx) = (s.clone(), tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    match s.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            if tx
                                .send((k, from, Bytes::copy_from_slice(&buf[..n])))
                                .is_err()
                            {
                                break;
                            }
                        }
                        // e.g. an ICMP error surfacing on Linux: keep reading
                        Err(_) => tokio::task::yield_now().await,
                    }
                }
            })
        })
        .collect();
    drop(tx);

    let t0 = Instant::now();
    let n = plan.phones as usize;
    let mut phones = Vec::with_capacity(n);
    for i in 0..n {
        let local = socks[i % socks.len()].local_addr()?;
        let at = if plan.rate > 0.0 {
            t0 + Duration::from_secs_f64(i as f64 / plan.rate)
        } else {
            t0
        };
        phones.push(Phone::new(
            &p,
            plan.start + i as u32,
            local,
            (i as u32) < plan.priority,
            at,
        ));
    }
    let mut sim = Sim {
        start: plan.start,
        heap: BinaryHeap::with_capacity(n),
        scheduled: vec![None; n],
        settled: vec![false; n],
        settled_count: 0,
        phones,
        socks,
        p,
    };
    for i in 0..n {
        sim.after(i).await;
    }

    let deadline = t0 + plan.duration;
    let stopped = loop {
        if sim.settled_count == n {
            break "settled";
        }
        let now = Instant::now();
        if now >= deadline {
            break "duration";
        }
        let mut worked = 0;
        while worked < BATCH {
            let Ok((k, from, data)) = rx.try_recv() else {
                break;
            };
            sim.on_datagram(k, from, data).await;
            worked += 1;
        }
        worked += sim.fire_due(Instant::now()).await;
        if worked > 0 {
            // let the readers drain the sockets before the next batch
            tokio::task::yield_now().await;
            continue;
        }
        let next = sim.heap.peek().map_or(deadline, |r| r.0 .0).min(deadline);
        tokio::select! {
            m = rx.recv() => match m {
                Some((k, from, data)) => sim.on_datagram(k, from, data).await,
                None => break "duration",
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
        }
    };
    let end = Instant::now();
    for r in readers {
        r.abort();
    }
    let summary = summarize(&sim.p, &sim.phones, t0, end, stopped);
    let phone_lines = if plan.per_phone {
        sim.phones
            .iter()
            .map(|ph| phone_line(&sim.p, ph, t0))
            .collect()
    } else {
        Vec::new()
    };
    Ok(RunOutcome {
        summary,
        phone_lines,
    })
}
