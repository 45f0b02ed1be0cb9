#!/usr/bin/env python3
"""Helpers of sip-tests/bench/cluster_pg.sh (issue 4): sample Tandem's /health,
compute replication lag from a packet capture and the samples, and time a join.

  cluster_probe.py poll OUT INTERVAL_S URL...
      Until SIGTERM/SIGINT, every INTERVAL_S: GET each URL (/health, one kept-alive
      connection each) and append "unix_time,url_index,bindings" to OUT; the time is
      taken when the answer has arrived.

  cluster_probe.py lag PCAP SAMPLES [B_INDEX [A_INDEX]]
      PCAP: tcpdump capture (-w) of node A's SIP responses. Every distinct Call-ID
      whose "SIP/2.0 200" left A is one registration acknowledged at A, at the
      capture's kernel timestamp: the k-th 200 OK (in time) is level k. B's samples
      give the first time B's bindings count (minus its count in the first sample)
      reached k. lag(k) = that time - time of the k-th 200 OK. Prints p50/p90/p99/
      max as an upper bound (the first sample showing level k) and a lower bound
      (the sample before it; negative when B showed the binding before its 200 OK
      was on the wire: A answers after its commit, B reads on the commit's NOTIFY),
      and how far B's count is behind A's own count (A counts a binding when it
      takes the REGISTER, before the commit: this includes A's commit wait).

  cluster_probe.py wait URL TARGET T0_FILE TIMEOUT_S
      Polls URL (/health) every 10 ms from now until its bindings reach TARGET;
      prints the seconds from T0 (unix time the node was started, read from T0_FILE
      at the end: start this first, then the node) to the first answer and to
      bindings >= TARGET.
"""
import http.client
import json
import signal
import struct
import sys
import time
import urllib.parse


class Health:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path or "/health"
        self.conn = None

    def bindings(self):
        """The bindings count, or None if the node does not answer (yet)."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
            self.conn.request("GET", self.path)
            r = self.conn.getresponse()
            body = r.read()
            if r.status != 200:
                return None
            return int(json.loads(body)["bindings"])
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None


def poll(out, interval, urls):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    nodes = [Health(u) for u in urls]
    with open(out, "w") as f:
        nxt = time.time()
        while not stop:
            for i, n in enumerate(nodes):
                c = n.bindings()
                t = time.time()
                if c is not None:
                    f.write(f"{t:.6f},{i},{c}\n")
            nxt += interval
            d = nxt - time.time()
            if d > 0:
                time.sleep(d)
            else:
                nxt = time.time()


def pcap_ok_times(path):
    """Kernel timestamps of the first 200 OK of each Call-ID in a pcap file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    else:
        endian = ">"
        magic = struct.unpack(">I", data[:4])[0]
    frac = 1e-9 if magic == 0xA1B23C4D else 1e-6
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    l2 = {0: 4, 1: 14, 113: 16, 276: 20}.get(linktype)
    if l2 is None:
        sys.exit(f"unsupported pcap link type {linktype}")
    seen = {}
    off = 24
    while off + 16 <= len(data):
        sec, sub, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ip = pkt[l2:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        payload = ip[(ip[0] & 15) * 4 + 8:]
        if not payload.startswith(b"SIP/2.0 200"):
            continue
        cid = None
        for line in payload.split(b"\r\n"):
            k, _, v = line.partition(b":")
            if k.strip().lower() in (b"call-id", b"i"):
                cid = v.strip()
                break
            if not line:
                break
        if cid is not None and cid not in seen:
            seen[cid] = sec + sub * frac
    return sorted(seen.values())


def read_samples(path):
    s = {}
    with open(path) as f:
        for line in f:
            t, i, c = line.strip().split(",")
            s.setdefault(int(i), []).append((float(t), int(c)))
    return s


def pct(v, p):
    v = sorted(v)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def level_times(samples, n):
    """For levels 1..n: (time of the first sample at or above the level, time of the
    sample before it), counted from the first sample's count; None if never."""
    base = samples[0][1]
    out = []
    j = 0
    for k in range(1, n + 1):
        while j < len(samples) and samples[j][1] - base < k:
            j += 1
        if j == len(samples):
            out.append(None)
        else:
            out.append((samples[j][0], samples[j - 1][0] if j > 0 else samples[j][0]))
    return out


def ms_stats(v):
    return " ".join(f"{n}={pct(v, p) * 1000:.1f}" for n, p in
                    (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)))


def lag(pcap, samples_path, b_index=1, a_index=0):
    ok = pcap_ok_times(pcap)
    s = read_samples(samples_path)
    b = s.get(b_index, [])
    if not ok or len(b) < 2:
        print(f"lag: not enough data (200 OKs captured={len(ok)}, B samples={len(b)})")
        return
    gaps = [y[0] - x[0] for x, y in zip(b, b[1:])]
    lt = level_times(b, len(ok))
    upper = [x[0] - t for x, t in zip(lt, ok) if x is not None]
    lower = [x[1] - t for x, t in zip(lt, ok) if x is not None]
    missing = sum(1 for x in lt if x is None)
    print(f"200 OKs captured at A (distinct Call-IDs)={len(ok)} over {ok[-1] - ok[0]:.2f} s; "
          f"B samples={len(b)} (interval p50={pct(gaps, 50) * 1000:.1f} ms, "
          f"max={max(gaps) * 1000:.1f} ms); levels B never reached={missing}")
    print(f"lag 200 OK at A -> visible in B's table, ms (upper bound): {ms_stats(upper)}")
    print(f"lag 200 OK at A -> visible in B's table, ms (lower bound): {ms_stats(lower)}")
    a = s.get(a_index, [])
    if len(a) >= 2:
        n = min(a[-1][1] - a[0][1], b[-1][1] - b[0][1])
        la, lb = level_times(a, n), level_times(b, n)
        d = [y[0] - x[0] for x, y in zip(la, lb) if x is not None and y is not None]
        if d:
            print(f"B's count behind A's count at the same level, ms (both sampled): {ms_stats(d)}")


def wait(url, target, t0_file, timeout):
    h = Health(url)
    first = first_n = None
    end = time.time() + timeout
    polls = 0
    while time.time() < end:
        c = h.bindings()
        t = time.time()
        polls += 1
        if c is not None and first is None:
            first, first_n = t, c
        if c is not None and c >= target:
            t0 = float(open(t0_file).read())
            print(f"first_answer_s={first - t0:.3f} (bindings={first_n}) "
                  f"bindings_{target}_s={t - t0:.3f} polls={polls}")
            return
        time.sleep(0.01)
    c = h.bindings()
    t0 = float(open(t0_file).read())
    print(f"timeout after {timeout} s: first_answer_s="
          f"{'-' if first is None else f'{first - t0:.3f}'} bindings={c} (target {target})")


def main(a):
    if len(a) >= 4 and a[0] == "poll":
        poll(a[1], float(a[2]), a[3:])
    elif len(a) >= 3 and a[0] == "lag":
        lag(a[1], a[2], *(int(x) for x in a[3:5]))
    elif len(a) == 5 and a[0] == "wait":
        wait(a[1], int(a[2]), a[3], float(a[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
