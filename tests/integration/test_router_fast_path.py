"""The router's fast path (Sources/Node/Router/Fast) and its hand-off to the general router, with real uWSGI vassals.

Plain HTTP/1.x requests to uwsgi backends are served by the fast path (epoll loops, responses relayed with only
the head parsed); anything else on the same connection is handed, with the bytes already read, to the general
SwiftNIO router. Checked here, beyond test_router_interop.py (which runs against the same default):

* a slow reader gets a 20 MB response intact (backpressure: the router stops reading the backend, does not
  buffer it all), while other clients are served meanwhile;
* a request head trickled byte by byte is served; pipelined plain + chunked (general path) + plain requests in
  one write are all answered in order (the hand-off replays the unread bytes);
* unframed backend responses: chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0; HEAD has no body;
* uploads over the fast path's 1 MiB limit are streamed by the general path and arrive intact;
* hand-made backends: garbage instead of HTTP -> 502 with a reason; a response cut short -> the client sees
  the connection close (no hang); the router keeps serving;
* out of file descriptors (a low ``ulimit -n``, more clients than it allows): the router says so, pauses accepting
  instead of spinning, and serves again once clients leave;
* ``fast_path = false`` runs everything on the general router (same answers);
* the internal router (cluster domains' second hop), spoken to in uwsgi as another node's router does: both
  local vassals answer, a 5 MB response is relayed whole, unknown host / no HTTP_HOST -> 502 with the reason,
  a SIGKILLed vassal is skipped.

Run:  python3 -m pytest -v tests/integration/test_router_fast_path.py        (~20 s)
"""
from __future__ import annotations

import hashlib
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, ul
from test_router_interop import (HOST, KEY, Router, Setup, Vassals, alternates, raw_exchange, request, start_setup,
                                 status_of, uwsgi_py3)  # noqa: F401  (uwsgi_py3 is a fixture)


@pytest.fixture(scope="module")
def fast(tmp_path_factory, legion_bin, uwsgi_py3, module_procs):
    base = tmp_path_factory.mktemp("fastpath")
    try:
        yield start_setup(base, legion_bin, uwsgi_py3, module_procs, name="fp")
    finally:
        module_procs.kill_all()


def dechunk(body: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        pos = end + 2
        if size == 0:
            return out
        out += body[pos:pos + size]
        assert body[pos + size:pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2


def subscribe(router: Router, key: str, address: str) -> None:
    """A plain uWSGI subscription packet (modifier1 224) for key -> address, as `--subscribe-to` sends."""
    payload = b""
    for k, v in (("key", key), ("address", address)):
        payload += struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
    packet = struct.pack("<BHB", 224, len(payload), 0) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(packet, (HOST, router.sub_port))


class FakeBackend:
    """A TCP backend that reads the uwsgi request and answers with `reply` bytes (then closes)."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.served = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    head = conn.recv(4)
                    size = struct.unpack("<H", head[1:3])[0]
                    got = len(head) - 4
                    while got < size:
                        got += len(conn.recv(size - got))
                    conn.sendall(self.reply)
                    self.served += 1
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_slow_reader_gets_a_large_response_intact_while_others_are_served(fast: Setup):
    port = fast.router.http_port
    # Its own vassal: a single-process uWSGI blocked writing to a slow reader serves nobody else meanwhile.
    big = fast.vassals.start("big", "--subscribe-to", f"{fast.router.sub_server}:big.test")
    fast.router.wait_subscribed([("big.test", big.address)], fast.vassals)
    size = 20_000_000
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.connect((HOST, port))
    s.sendall(f"GET /stream/{size} HTTP/1.1\r\nHost: big.test\r\nConnection: close\r\n\r\n".encode())
    time.sleep(1.0)  # not reading: the router must hold back, not fail or buffer 20 MB
    others = [request(port, path=f"/other{i}").status for i in range(20)]
    assert others == [200] * 20, others
    parts = []
    s.settimeout(20)
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        parts.append(chunk)
    s.close()
    data = b"".join(parts)
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(data) == 200, head[:300]
    assert b"transfer-encoding: chunked" in head.lower(), f"an unframed response to HTTP/1.1 is chunked: {head!r}"
    payload = dechunk(body)
    assert len(payload) == size and payload == b"x" * size, f"got {len(payload)} of {size} bytes"


def test_trickled_head_and_pipelined_hand_off(fast: Setup):
    port = fast.router.http_port
    s = socket.create_connection((HOST, port), timeout=5)
    for b in f"GET /trickle HTTP/1.1\r\nHost: {KEY}\r\n\r\n".encode():
        s.send(bytes([b]))
        time.sleep(0.005)
    got = b""
    while b'"/trickle"' not in got:
        chunk = s.recv(65536)
        assert chunk, f"closed early: {got!r}"
        got += chunk
    assert status_of(got) == 200
    s.close()

    three = (f"GET /p1 HTTP/1.1\r\nHost: {KEY}\r\n\r\n"
             f"POST /p2 HTTP/1.1\r\nHost: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
             f"GET /p3 HTTP/1.1\r\nHost: {KEY}\r\nConnection: close\r\n\r\n").encode()
    out, closed = raw_exchange(port, three, wait=5.0)
    assert out.count(b"HTTP/1.1 200 ") == 3, out.decode("latin-1")
    p1, p2, p3 = out.index(b'"/p1"'), out.index(b'"/p2"'), out.index(b'"/p3"')
    assert p1 < p2 < p3, "responses out of order"
    assert b'"body": "hello"' in out, "the chunked body (general path) reached the backend"
    assert closed, "Connection: close on the last request closes the connection"


def test_unframed_and_bodiless_responses(fast: Setup):
    port = fast.router.http_port
    out, closed = raw_exchange(port, f"GET /stream/100000 HTTP/1.0\r\nHost: {KEY}\r\nConnection: keep-alive\r\n\r\n".encode())
    head, _, body = out.partition(b"\r\n\r\n")
    assert status_of(out) == 200 and closed and body == b"x" * 100000, (head, len(body), closed)
    assert b"connection: close" in head.lower()
    out, _ = raw_exchange(port, f"HEAD /h HTTP/1.1\r\nHost: {KEY}\r\n\r\nGET /after HTTP/1.1\r\nHost: {KEY}\r\nConnection: close\r\n\r\n".encode())
    first, _, rest = out.partition(b"\r\n\r\n")
    assert status_of(first) == 200 and rest.startswith(b"HTTP/1.1 200 "), f"HEAD must have no body: {out[:400]!r}"
    assert b'"/after"' in rest


def test_uploads_over_the_fast_limit_are_streamed(fast: Setup):
    blob = bytes(range(256)) * (3 * 4096)  # 3 MiB
    r = request(fast.router.http_port, "POST", "/echo", body=blob, timeout=20)
    assert r.status == 200 and hashlib.sha256(r.body).digest() == hashlib.sha256(blob).digest(), (r.status, len(r.body))


def test_bad_backends_get_clear_answers_and_the_router_keeps_serving(fast: Setup):
    port = fast.router.http_port
    garbage = FakeBackend(b"this is not HTTP\r\n\r\n")
    cut = FakeBackend(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    try:
        subscribe(fast.router, "garbage.test", f"{HOST}:{garbage.port}")
        subscribe(fast.router, "cut.test", f"{HOST}:{cut.port}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (fast.router.subscribed("garbage.test", f"{HOST}:{garbage.port}")
                                                   and fast.router.subscribed("cut.test", f"{HOST}:{cut.port}")):
            time.sleep(0.05)
        r = request(port, host="garbage.test")
        assert r.status == 502 and b"invalid response" in r.body, r
        out, closed = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: cut.test\r\n\r\n", wait=5.0)
        assert closed and status_of(out) == 200 and out.endswith(b"only ten b"), (out, closed)
        assert request(port, path="/still").status == 200
    finally:
        garbage.close()
        cut.close()


def test_general_router_only(tmp_path: Path, legion_bin, uwsgi_py3, procs):
    r = Router(tmp_path, legion_bin, procs, "gen", extra="fast_path = false\n")
    r.wait_listening()
    listening = [ln for ln in r.log_text().splitlines() if "HTTP router listening" in ln]
    assert listening and "fast_path=false" in listening[0], listening
    vs = Vassals(tmp_path, uwsgi_py3, procs)
    a = vs.start("a", "--subscribe-to", f"{r.sub_server}:{KEY}")
    b = vs.start("b", "--subscribe-to", f"{r.sub_server}:{KEY}")
    r.wait_subscribed([(KEY, a.address), (KEY, b.address)], vs)
    names = [request(r.http_port, path=f"/g{i}").vassal for i in range(6)]
    assert alternates(names), names
    out, _ = raw_exchange(r.http_port, f"GET /stream/1000 HTTP/1.1\r\nHost: {KEY}\r\nConnection: close\r\n\r\n".encode())
    assert dechunk(out.partition(b"\r\n\r\n")[2]) == b"x" * 1000


def test_out_of_file_descriptors_pauses_accept_and_recovers(tmp_path: Path, legion_bin, uwsgi_py3, procs):
    wrapper = tmp_path / "legion-lowfd"
    wrapper.write_text(f"#!/bin/sh\nulimit -n 120\nexec {legion_bin} \"$@\"\n")
    wrapper.chmod(0o755)
    r = Router(tmp_path, wrapper, procs, "lowfd")
    r.wait_listening()
    vs = Vassals(tmp_path, uwsgi_py3, procs)
    a = vs.start("a", "--subscribe-to", f"{r.sub_server}:{KEY}")
    r.wait_subscribed([(KEY, a.address)], vs)
    assert request(r.http_port).status == 200
    clients = []
    try:
        for _ in range(200):
            clients.append(socket.create_connection((HOST, r.http_port), timeout=2))
        deadline = time.monotonic() + 5
        while "cannot accept connections" not in r.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "cannot accept connections" in r.log_text(), "no warning when out of file descriptors"
        warnings = r.log_text().count("cannot accept connections")
        time.sleep(1.0)
        assert r.log_text().count("cannot accept connections") <= warnings + 2, "the warning must be rate-limited"
    finally:
        for c in clients:
            c.close()
    r.require_alive()
    deadline = time.monotonic() + 15
    status = 0
    while time.monotonic() < deadline:
        try:
            status = request(r.http_port, path="/again", timeout=2).status
            if status == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    assert status == 200, "the router did not serve again after the clients left"


def uwsgi_request(port: int, host: str, path: str = "/", wait: float = 5.0, extra_vars: dict | None = None) -> tuple[bytes, bool]:
    """What another node's router sends the internal router: a uwsgi request packet; returns (response, closed)."""
    env = {"REQUEST_METHOD": "GET", "REQUEST_URI": path, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1",
           "SERVER_NAME": "peer", "SERVER_PORT": "80", "REMOTE_ADDR": "10.0.0.9", "REMOTE_PORT": "40000", **(extra_vars or {})}
    if host:
        env["HTTP_HOST"] = host
    payload = b"".join(struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode() for k, v in env.items())
    return raw_exchange(port, struct.pack("<BHB", 0, len(payload), 0) + payload, wait=wait)


def test_internal_router_relays_retries_and_answers_clearly(tmp_path: Path, legion_bin, uwsgi_py3, procs):
    """The internal router (cluster domains' second hop) on the fast loops, spoken to as another node's router would."""
    internal, cluster_sub = free_port(), free_port(udp=True)
    r = Router(tmp_path, legion_bin, procs, "inner",
               extra=f'internal = "{HOST}:{internal}"\ncluster_subscription = "{HOST}:{cluster_sub}"\n')
    r.wait_listening()
    vs = Vassals(tmp_path, uwsgi_py3, procs)
    a = vs.start("a", "--subscribe-to", f"{HOST}:{cluster_sub}:{KEY}")
    b = vs.start("b", "--subscribe-to", f"{HOST}:{cluster_sub}:{KEY}")
    deadline = time.monotonic() + 10
    seen: set[str] = set()
    while time.monotonic() < deadline and len(seen) < 2:
        out, _ = uwsgi_request(internal, KEY, "/hello")
        if status_of(out) == 200:
            seen.add(out.split(b'"vassal": "', 1)[1].split(b'"', 1)[0].decode())
        else:
            time.sleep(0.1)
    assert seen == {"a", "b"}, f"both local vassals should answer through the internal router: {seen}"
    out, closed = uwsgi_request(internal, KEY, "/stream/5000000", wait=10)
    head, _, body = out.partition(b"\r\n\r\n")
    assert status_of(out) == 200 and closed and body == b"x" * 5_000_000, (head, len(body))
    out, closed = uwsgi_request(internal, "nobody.test")
    assert status_of(out) == 502 and b"no local backend for nobody.test" in out and closed, out
    out, closed = uwsgi_request(internal, "")
    assert status_of(out) == 502 and b"no HTTP_HOST" in out and closed, out
    vs.kill("a")
    got = [status_of(uwsgi_request(internal, KEY, f"/after-kill/{i}")[0]) for i in range(6)]
    assert got == [200] * 6, f"a dead local vassal must be skipped (retry before any byte is sent): {got}"
    assert "internal router: backend refused; trying another" in r.log_text()
    r.require_alive()


def read_to_close(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path, legion_bin, uwsgi_py3, procs):
    """SIGTERM: the node leaves first, then its routers drain: an idle keep-alive connection is closed, a request in
    flight (1 s long) finishes with `Connection: close`, a connection accepted before the signal whose request comes
    after it is served (not reset), and the internal router (cluster domains' second hop) finishes the relay it has
    in flight (another node's router waits on it) — all before the node exits (drains of up to 3 s)."""
    internal, cluster_sub = free_port(), free_port(udp=True)
    r = Router(tmp_path, legion_bin, procs, "drain",
               extra=f'internal = "{HOST}:{internal}"\ncluster_subscription = "{HOST}:{cluster_sub}"\n')
    r.wait_listening()
    vs = Vassals(tmp_path, uwsgi_py3, procs)
    a = vs.start("a", "--subscribe-to", f"{r.sub_server}:{KEY}", "--subscribe-to", f"{HOST}:{cluster_sub}:{KEY}")
    r.wait_subscribed([(KEY, a.address)], vs)
    deadline = time.monotonic() + 10
    while status_of(uwsgi_request(internal, KEY, "/ready")[0]) != 200:
        assert time.monotonic() < deadline, "the vassal's cluster subscription never reached the internal router"
        time.sleep(0.1)
    idle = socket.create_connection((HOST, r.http_port), timeout=5)
    idle.sendall(f"GET /idle HTTP/1.1\r\nHost: {KEY}\r\n\r\n".encode())
    assert status_of(idle.recv(65536)) == 200
    busy = socket.create_connection((HOST, r.http_port), timeout=5)
    busy.sendall(f"GET /sleep/1000 HTTP/1.1\r\nHost: {KEY}\r\n\r\n".encode())
    fresh = socket.create_connection((HOST, r.http_port), timeout=5)
    relayed: dict = {}
    relay = threading.Thread(target=lambda: relayed.update(out=uwsgi_request(internal, KEY, "/sleep/1200", wait=6)))
    relay.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    r.proc.send_signal(signal.SIGTERM)
    idle.settimeout(2)
    assert idle.recv(65536) == b"", "an idle keep-alive connection is closed at once"
    time.sleep(0.2)
    fresh.sendall(f"GET /late HTTP/1.1\r\nHost: {KEY}\r\n\r\n".encode())
    late = read_to_close(fresh)
    assert status_of(late) == 200 and b'"/late"' in late, f"a connection accepted before SIGTERM must be served: {late[:300]!r}"
    assert b"connection: close" in late.partition(b"\r\n\r\n")[0].lower()
    got = read_to_close(busy)
    head = got.partition(b"\r\n\r\n")[0].lower()
    assert status_of(got) == 200 and b'"/sleep/1000"' in got, f"the request in flight must finish: {got[:300]!r}"
    assert b"connection: close" in head, head
    relay.join(timeout=10)
    out, closed = relayed.get("out", (b"", False))
    assert status_of(out) == 200 and b'"/sleep/1200"' in out and closed, f"the internal router's relay in flight must finish: {out[:300]!r}"
    r.proc.wait(timeout=10)
    assert time.monotonic() - t0 < 8
    assert "router drained" in r.log_text(), r.log_text()[-2000:]
    for s in (idle, busy, fresh):
        s.close()


def test_per_domain_counters_in_metrics(tmp_path: Path, legion_bin, uwsgi_py3, procs):
    """Per-domain counters (requests, response bytes), backends per domain, hand-offs and subscription counts
    are in the node API's /metrics; unknown hosts are counted under "-" (no label per attacker-chosen Host)."""
    api = free_port()
    r = Router(tmp_path, legion_bin, procs, "metrics", extra=f'\n[api]\nbind = "{HOST}:{api}"\n')
    r.wait_listening()
    vs = Vassals(tmp_path, uwsgi_py3, procs)
    a = vs.start("a", "--subscribe-to", f"{r.sub_server}:{KEY}")
    b = vs.start("b", "--subscribe-to", f"{r.sub_server}:{KEY}")
    r.wait_subscribed([(KEY, a.address), (KEY, b.address)], vs)
    bodies = sum(len(request(r.http_port, path=f"/m{i}").body) for i in range(5))
    assert request(r.http_port, host='evil"\\host').status == 404
    out, _ = raw_exchange(r.http_port, f"POST /c HTTP/1.1\r\nHost: {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                       f"2\r\nhi\r\n0\r\n\r\n".encode())
    assert status_of(out) == 200
    import urllib.request

    def scrape() -> tuple[str, dict]:
        text = urllib.request.urlopen(f"http://{HOST}:{api}/metrics", timeout=5).read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return text, values

    deadline = time.monotonic() + 3  # the fast path's loops add their counts every 100 ms
    text, values = scrape()
    while values.get(f'legion_router_requests_total{{domain="{KEY}"}}', 0) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
        text, values = scrape()
    assert values.get(f'legion_router_backends{{domain="{KEY}"}}') == 2, text
    assert values.get(f'legion_router_requests_total{{domain="{KEY}"}}', 0) >= 6, text
    assert values.get(f'legion_router_response_bytes_total{{domain="{KEY}"}}', 0) >= bodies, text
    assert values.get('legion_router_requests_total{domain="-"}', 0) >= 1, text
    assert not any("evil" in k for k in values), "an unknown Host must not become a label"
    assert values.get("legion_router_handoffs_total", 0) >= 1, text
    assert values.get("legion_subscriptions_accepted_total", 0) >= 2, text
    # Latency histograms per domain (swift-metrics → swift-prometheus), from both the fast and the general path.
    assert values.get(f'legion_router_request_duration_seconds_count{{domain="{KEY}"}}', 0) >= 6, text
    assert values.get(f'legion_router_request_duration_seconds_bucket{{domain="{KEY}",le="+Inf"}}', 0) >= 6, text
    assert "# TYPE legion_router_request_duration_seconds histogram" in text, text
    for name in ("legion_emperor_respawns_total", "legion_container_oom_kills_total", "legion_failover_gap_seconds_count",
                 "legion_lease_margin_seconds_count", "legion_store_commit_seconds_count"):
        assert name in values, f"{name} missing:\n{text}"
