"""Our HTTP router (`legion node` with a `[router]` table) in front of Debian's real uWSGI 2.0.21 vassals.

Every vassal is a real ``uwsgi --plugin python3 --master --processes 1 --socket 127.0.0.1:PORT
--wsgi-file fixtures/router_app.py`` process that subscribes itself to our node's UDP subscription server with
uWSGI's own client code (``--subscribe-to`` / ``--subscribe2``); the app answers JSON with its name,
PATH_INFO, REMOTE_PORT, forwarding headers and the request body (fixtures/router_app.py).

Checked (spec uwsgi-wire.md §3, §4, Appendix C.3, plus our documented differences from uWSGI):
* round robin: two vassals of one key answer strictly alternately (fresh connections, one keep-alive
  connection, 8 concurrent clients -> exactly 80/80); GET/POST/PUT/HEAD and streamed bodies relayed intact;
* REMOTE_PORT is the client's real source port (uWSGI byte-swaps it), X-Forwarded-For / -Proto added;
* signed subscriptions (``sign_check = "SHA1:DIR"``, fixtures' throwaway key pair): a vassal signing with the
  key in DIR is routed, an unsigned vassal and one signing with another key for the same key are not;
* SIGKILL of a vassal: every following request still gets 200 from the survivor (connect retry, ejection);
  with both gone: 502 (all refused), then 503 (no live node); a graceful stop (SIGINT) unsubscribes at once;
* unknown Host -> 404 with a text body (uWSGI closes silently), keys exact and case-sensitive, malformed request
  line -> 400, Host > 255 bytes -> 400; a chunked upload reaches the backend de-chunked with CONTENT_LENGTH;
* stalled clients (partial request head, silent connection, idle keep-alive) -> 408 / close after ~10 s while
  other clients are served, and the router survives (own router: a crash there cannot break the other tests);
* ``--subscribe2`` with ``addr=`` and without it (first --socket), dotsplit wildcard ``.wild.test``;
* HTTP/1.1 pipelining, HTTP/1.0 keep-alive framing.

Nothing is skipped: no `legion` binary (``swift build`` or LEGION_BIN) or no installable uWSGI python3 plugin
makes the tests FAIL. Every process runs in its own process group and is SIGKILLed at teardown.

Run:  python3 -m pytest -v -s tests/integration/test_router_interop.py        (~35 s)
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import os
import json
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import REPO_ROOT, free_port, tail, ul

FIXTURES = Path(__file__).resolve().parent / "fixtures"
APP = FIXTURES / "router_app.py"
PUBKEY = FIXTURES / "example.com.pub.pem"
PRIVKEY = FIXTURES / "TEST-ONLY-example.com.priv.pem"  # throwaway test-only key
HOST = ul.HOST
KEY = "example.com"
START_TIMEOUT = 15.0       # our node listening / a vassal's first subscription seen
HEADERS_TIMEOUT = 10.0     # router's request-head timeout (-> 408)


# ---------------------------------------------------------------------------------------------- processes


@pytest.fixture(scope="session")
def uwsgi_py3() -> str:
    try:
        return ul.ensure_uwsgi_python3()  # apt-get install uwsgi-core uwsgi-plugin-python3 if missing
    except RuntimeError as e:
        pytest.fail(f"Debian's uWSGI with the python3 plugin is needed for the router tests: {e}", pytrace=False)


_SUB_RX = re.compile(r"new subscription (.*)$")


class Router:
    """One `legion node` (lone member of its legion) with an HTTP router and a subscription server."""

    def __init__(self, base: Path, legion_bin: Path, tracker, name: str, *, sign_dir: Path | None = None,
                 algorithm: str = "wrr", extra: str = ""):
        self.base, self.tracker, self.name = base, tracker, name
        self.http_port = free_port()
        self.sub_port = free_port(udp=True)
        self.legion_port = free_port(udp=True)
        self.log = base / f"{name}.log"
        q = json.dumps
        lines = ["[node]", f"name = {q(name)}", f"data_dir = {q(str(base / name))}", "",
                 "[legion]", f"name = {q('rt-' + name)}", f"bind = {q(f'{HOST}:{self.legion_port}')}",
                 "valor = 10", f"secret = {q('aes-256-cbc:routertest')}", "",
                 "[router]", f"http = {q(f'{HOST}:{self.http_port}')}",
                 f"subscription = {q(f'{HOST}:{self.sub_port}')}", f"algorithm = {q(algorithm)}"]
        if sign_dir is not None:
            lines.append(f"sign_check = {q(f'SHA1:{sign_dir}')}")
        self.config = base / f"{name}.toml"
        self.config.write_text("\n".join(lines) + "\n" + extra)
        (base / name).mkdir(parents=True, exist_ok=True)
        self.proc = tracker.start([legion_bin, "node", "--config", self.config], log_path=self.log, cwd=REPO_ROOT)

    def crash_report(self) -> str | None:
        """None while the node runs; else its exit status, fatal-error lines and our own stack frames."""
        if self.proc.poll() is None:
            return None
        lines = self.log_text().splitlines()
        fatal = [ln for ln in lines if "Fatal error" in ln or "Program crashed" in ln]
        ours = [ln.strip() for ln in lines if "/Sources/" in ln and ".build/checkouts" not in ln][:3]
        return (f"our node {self.name} is not running (exit status {self.proc.returncode}):\n  "
                + "\n  ".join(fatal[:3] + ours) + f"\n(full log: {self.log})")

    def require_alive(self) -> None:
        report = self.crash_report()
        if report:
            pytest.fail(report, pytrace=False)

    @property
    def sub_server(self) -> str:
        return f"{HOST}:{self.sub_port}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"our node {self.name} exited with {self.proc.returncode}\n{tail(self.log)}", pytrace=False)
            text = self.log_text()
            if "HTTP router listening" in text and "subscription server listening" in text:
                try:
                    socket.create_connection((HOST, self.http_port), timeout=0.5).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        pytest.fail(f"our router {self.name} not listening on {HOST}:{self.http_port} after {START_TIMEOUT:.0f}s\n"
                    f"{tail(self.log)}", pytrace=False)

    def subscriptions(self) -> list[dict]:
        """Every "new subscription" log line as {key, address, signed, weight, ...}."""
        out = []
        for line in self.log_text().splitlines():
            m = _SUB_RX.search(line)
            if m:
                out.append(dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv))
        return out

    def subscribed(self, key: str, address: str) -> bool:
        return any(s.get("key") == key and s.get("address") == address for s in self.subscriptions())

    def wait_subscribed(self, pairs: list[tuple[str, str]], vassals: "Vassals") -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if all(self.subscribed(k, a) for k, a in pairs):
                return
            for v in vassals.all.values():
                if v.proc.poll() is not None:
                    pytest.fail(f"vassal {v.name} exited with {v.proc.returncode}\n{tail(v.log)}", pytrace=False)
            time.sleep(0.05)
        missing = [p for p in pairs if not self.subscribed(*p)]
        pytest.fail(f"subscriptions {missing} not seen by {self.name} after {START_TIMEOUT:.0f}s\n{tail(self.log)}\n"
                    + "\n".join(tail(v.log, 10) for v in vassals.all.values()), pytrace=False)


class Vassal(NamedTuple):
    name: str
    port: int
    proc: object
    log: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


class Vassals:
    """Real uWSGI python3 vassals running fixtures/router_app.py."""

    def __init__(self, base: Path, uwsgi: str, tracker):
        self.base, self.uwsgi, self.tracker = base, uwsgi, tracker
        self.all: dict[str, Vassal] = {}

    def start(self, name: str, *subscribe_args: str) -> Vassal:
        """`{port}` in subscribe_args is replaced by the vassal's own --socket port."""
        port = free_port()
        log = self.base / f"vassal-{name}.log"
        argv = [self.uwsgi, "--plugin", "python3", "--master", "--processes", "1",
                "--socket", f"{HOST}:{port}", "--wsgi-file", str(APP), "--need-app", "--die-on-term",
                "--env", f"VASSAL_NAME={name}", *(a.replace("{port}", str(port)) for a in subscribe_args)]
        v = Vassal(name, port, self.tracker.start(argv, log_path=log, cwd=self.base), log)
        self.all[name] = v
        return v

    def kill(self, name: str) -> None:
        """SIGKILL of the vassal's process group (master + worker); it is forgotten afterwards."""
        self.tracker.kill(self.all.pop(name).proc)


# ---------------------------------------------------------------------------------------------- HTTP client


class Resp(NamedTuple):
    status: int
    headers: dict
    body: bytes
    local_port: int

    @property
    def info(self) -> dict:
        return json.loads(self.body)

    @property
    def vassal(self) -> str | None:
        return self.headers.get("x-vassal")


def request(port: int, method: str = "GET", path: str = "/", host: str = KEY, body: bytes | None = None,
            headers: dict | None = None, source_port: int | None = None, timeout: float = 5.0,
            conn: http.client.HTTPConnection | None = None) -> Resp:
    """One request; a fresh connection (closed afterwards) unless `conn` is given (kept open)."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout,
                                          source_address=(HOST, source_port) if source_port else None)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        local = conn.sock.getsockname()[1]
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data, local)
    finally:
        if own:
            conn.close()


def raw_exchange(port: int, data: bytes, wait: float = 3.0) -> tuple[bytes, bool]:
    """Send raw bytes, read until EOF or `wait` s. Returns (bytes received, closed by the server)."""
    s = socket.create_connection((HOST, port), timeout=wait)
    try:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False
    finally:
        s.close()


def status_of(raw: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", raw)
    return int(m.group(1)) if m else None


def alternates(names: list[str]) -> bool:
    return len(set(names)) == 2 and all(a != b for a, b in zip(names, names[1:]))


# ---------------------------------------------------------------------------------------------- fixtures


class Setup(NamedTuple):
    router: Router
    vassals: Vassals
    base: Path


def start_setup(base: Path, legion_bin: Path, uwsgi: str, tracker, name: str = "r1") -> Setup:
    """Our router (wrr) + vassals a and b subscribed to example.com with --subscribe-to."""
    r = Router(base, legion_bin, tracker, name)
    r.wait_listening()
    vs = Vassals(base, uwsgi, tracker)
    a = vs.start("a", "--subscribe-to", f"{r.sub_server}:{KEY}")
    b = vs.start("b", "--subscribe-to", f"{r.sub_server}:{KEY}")
    r.wait_subscribed([(KEY, a.address), (KEY, b.address)], vs)
    return Setup(r, vs, base)


@pytest.fixture(scope="module")
def main_setup(tmp_path_factory, legion_bin, uwsgi_py3, module_procs):
    base = tmp_path_factory.mktemp("router")
    try:
        yield start_setup(base, legion_bin, uwsgi_py3, module_procs)
    finally:
        module_procs.kill_all()
        left = ul.procs_mentioning(str(base))
        assert not left, f"uWSGI processes left behind: {left}"


@pytest.fixture
def main(main_setup: Setup):
    """The shared router r1; a test fails (not hangs) if r1 crashed before it, and errors if r1 died during it."""
    main_setup.router.require_alive()
    yield main_setup
    main_setup.router.require_alive()


# ---------------------------------------------------------------------------------------------- tests


def test_round_robin_alternates_strictly(main: Setup):
    port = main.router.http_port
    fresh = [request(port, path=f"/rr/{i}?i={i}") for i in range(12)]
    assert all(r.status == 200 for r in fresh), [(r.status, r.body[:200]) for r in fresh]
    names = [r.info["vassal"] for r in fresh]
    assert alternates(names), f"not strictly alternating between a and b: {names}"
    for i, r in enumerate(fresh):
        assert (r.info["path"], r.info["query"], r.info["method"]) == (f"/rr/{i}", f"i={i}", "GET")
        assert r.vassal == r.info["vassal"]

    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        kept = [request(port, path=f"/ka/{i}", conn=conn) for i in range(8)]
    finally:
        conn.close()
    assert all(r.status == 200 for r in kept), [(r.status, r.body[:200]) for r in kept]
    names = [r.info["vassal"] for r in kept]
    assert alternates(names), f"keep-alive connection: not strictly alternating: {names}"
    ports = {r.local_port for r in kept}
    assert len(ports) == 1 and {r.info["remote_port"] for r in kept} == {str(p) for p in ports}, \
        "all requests of one keep-alive connection must come from the same client port"
    print(f"\nfresh connections: {''.join(n for n in [x.info['vassal'] for x in fresh])}; keep-alive: {''.join(names)}")


def test_concurrent_clients_share_the_round_robin(main: Setup):
    port = main.router.http_port
    results: list[Resp | Exception] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(20):
            try:
                r = request(port, path=f"/c/{w}/{i}")
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                r = e
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    bad = [r if isinstance(r, Exception) else (r.status, r.body[:200]) for r in results
           if isinstance(r, Exception) or r.status != 200]
    assert len(results) == 160 and not bad, f"{len(results)} results, failures: {bad[:5]}"
    counts = {n: sum(1 for r in results if r.info["vassal"] == n) for n in ("a", "b")}
    assert counts["a"] == counts["b"] == 80, f"wrr with equal weights must split 160 requests 80/80: {counts}"


def test_get_and_post_bodies(main: Setup):
    port = main.router.http_port
    r = request(port, "POST", "/form", body=b"hello=world&x=1",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200 and r.info["method"] == "POST" and r.info["body"] == "hello=world&x=1", r
    blob = bytes(range(256)) * 800  # 200 KiB, every byte value
    r = request(port, "POST", "/echo", body=blob, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200 and r.body == blob, f"{r.status}: echoed {len(r.body)} bytes, sent {len(blob)}"
    r = request(port, "PUT", "/empty", body=b"")
    assert r.status == 200 and r.info["method"] == "PUT" and r.info["body_len"] == 0, r
    r = request(port, "GET", "/stream/300000")  # backend sends no Content-Length and closes
    assert r.status == 200 and r.body == b"x" * 300000, f"{r.status}: got {len(r.body)} of 300000 bytes"
    r = request(port, "HEAD", "/head")
    assert r.status == 200 and r.body == b"", r
    r = request(port, "GET", "/after-head")  # the connection state survived the HEAD
    assert r.status == 200 and r.info["path"] == "/after-head", r


def test_remote_port_is_the_real_client_port(main: Setup):
    port = main.router.http_port
    for _ in range(2):  # both vassals
        src = free_port()
        r = request(port, path="/whoami", source_port=src)
        assert r.status == 200 and r.local_port == src, r
        swapped = int.from_bytes(src.to_bytes(2, "big"), "little")
        assert r.info["remote_port"] == str(src), \
            f"REMOTE_PORT {r.info['remote_port']} != client port {src} (uWSGI's byte-swapped value would be {swapped})"
        assert r.info["remote_addr"] == HOST
        assert (r.info["xff"], r.info["xfp"]) == (HOST, "http"), r.info
    r = request(port, path="/xff", headers={"X-Forwarded-For": "10.9.8.7", "X-Forwarded-Proto": "https"})
    assert r.info["xff"] == f"10.9.8.7, {HOST}", r.info
    assert r.info["xfp"] == "http", "a client-supplied X-Forwarded-Proto must be replaced"
    assert r.info["host"] == KEY


def test_error_answers(main: Setup):
    port = main.router.http_port
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        r = request(port, host="unknown.test", conn=conn)
        assert r.status == 404 and b"unknown.test" in r.body and len(r.body) < 1024, r
        r = request(port, host="EXAMPLE.com", conn=conn)  # keys are exact, case-sensitive (spec 3.9)
        assert r.status == 404, r
        r = request(port, host="example.com:8080", conn=conn)  # a port no key has: the port-less key (nginx's server_name)
        assert r.status == 200 and r.info["host"] == "example.com:8080", r  # the backend still sees the Host as sent
        r = request(port, host="unknown.test:8080", conn=conn)
        assert r.status == 404, r
        r = request(port, path="/after-404", conn=conn)  # 404 keeps the connection usable
        assert r.status == 200 and r.info["path"] == "/after-404", r
    finally:
        conn.close()

    for bad in (b"GARBAGE\r\n\r\n",
                b"GET / HTTP/1.1 trailing-junk\r\nHost: example.com\r\n\r\n",
                b"GET / HTTX/9.9\r\nHost: example.com\r\n\r\n"):
        out, closed = raw_exchange(port, bad)
        assert status_of(out) == 400 and closed, f"{bad!r}: expected 400 and close, got {out[:200]!r} closed={closed}"

    out, closed = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: " + b"h" * 256 + b"\r\n\r\n")
    assert status_of(out) == 400 and closed, f"Host of 256 bytes: {out[:200]!r}"
    out, _ = raw_exchange(port, b"GET /ok HTTP/1.1\r\nHost: " + b"h" * 255 + b"\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 404, f"Host of 255 bytes is legal (unknown key -> 404): {out[:200]!r}"
    # Chunked upload: collected (bounded) and sent to the uwsgi backend with CONTENT_LENGTH.
    out, _ = raw_exchange(port, b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
                                b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert status_of(out) == 200, f"chunked upload: {out[:300]!r}"
    info = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert info["body"] == "hello world" and info["body_len"] == 11, info
    # A malformed chunk size is a 400, and the router keeps serving.
    out, closed = raw_exchange(port, b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"zz\r\nhello\r\n0\r\n\r\n")
    assert status_of(out) == 400 and closed, f"bad chunk size: {out[:200]!r}"
    assert request(port, path="/after-chunked").status == 200


def test_pipelined_requests_are_all_answered(main: Setup):
    """HTTP/1.1 pipelining (RFC 9112 §9.3.2): two requests in one write must get two responses, in order."""
    port = main.router.http_port
    two = (b"GET /p1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
           b"GET /p2 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    out, closed = raw_exchange(port, two, wait=3.0)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
    assert statuses == [b"200", b"200"] and b'"/p1"' in out and b'"/p2"' in out, \
        f"pipelined /p1 + /p2: got statuses {statuses} within 3 s (closed={closed}):\n{out.decode('latin-1')}"


def test_http10_keepalive_is_announced_or_closed(main: Setup):
    """An HTTP/1.0 client asking for keep-alive only keeps the connection if the response says
    `Connection: keep-alive` (RFC 9112 §9.3); otherwise it waits for the close that ends the message."""
    out, closed = raw_exchange(main.router.http_port,
                               b"GET /ten HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n", wait=2.0)
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert status_of(out) == 200, out[:300]
    assert closed or b"\r\nconnection: keep-alive" in head, \
        f"HTTP/1.0 keep-alive: the response neither announces keep-alive nor closes within 2 s:\n{out.decode('latin-1')}"


def test_graceful_stop_of_a_vassal_unsubscribes_it(main: Setup):
    """SIGINT makes uWSGI send an unsubscribe (modifier2 = 1, spec 3.6): the node goes at once, no retry needed."""
    r, vs = main.router, main.vassals
    key = "graceful.example.com"
    g1 = vs.start("g1", "--subscribe-to", f"{r.sub_server}:{key}")
    g2 = vs.start("g2", "--subscribe-to", f"{r.sub_server}:{key}")
    r.wait_subscribed([(key, g1.address), (key, g2.address)], vs)
    g1.proc.send_signal(signal.SIGINT)
    g1.proc.wait(timeout=10)
    vs.all.pop("g1")
    deadline = time.monotonic() + 5
    unsub = f"unsubscribed address={g1.address} key={key}"
    while unsub not in r.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert unsub in r.log_text(), f"no '{unsub}' line after g1's graceful stop\n{tail(r.log)}"
    mark = r.log_text().count("backend refused")
    got = [request(r.http_port, host=key) for _ in range(6)]
    assert [x.status for x in got] == [200] * 6 and {x.info["vassal"] for x in got} == {"g2"}, got
    assert r.log_text().count("backend refused") == mark, "an unsubscribed node must not be tried any more"
    vs.kill("g2")


def test_slow_and_idle_clients_get_408_while_others_are_served(tmp_path, legion_bin, uwsgi_py3, procs):
    """Three stalled connections at once on a router of their own: a partial request head (slowloris), a
    connection that never sends a byte, and a keep-alive connection idle after one complete exchange. Each must
    get 408 (or, for the idle ones, at least a close) ~10 s after its last activity, while other clients are
    served; the router must survive it."""
    try:
        st = start_setup(tmp_path, legion_bin, uwsgi_py3, procs, name="r408")
        port = st.router.http_port
        t0 = time.monotonic()
        partial = socket.create_connection((HOST, port), timeout=2)
        partial.sendall(b"GET /slow HTTP/1.1\r\nHost: exam")
        silent = socket.create_connection((HOST, port), timeout=2)
        idle = socket.create_connection((HOST, port), timeout=2)
        idle.sendall(b"GET /once HTTP/1.1\r\nHost: example.com\r\n\r\n")
        stalled = {"partial": partial, "silent": silent, "idle": idle}
        got: dict[str, bytes] = {n: b"" for n in stalled}
        t_first: dict[str, float] = {}
        closed: dict[str, float] = {}
        served, worst, errors = 0, 0.0, []
        deadline = t0 + HEADERS_TIMEOUT + 2.0
        while time.monotonic() < deadline and len(closed) < len(stalled):
            t = time.monotonic()
            try:
                r = request(port, path=f"/meanwhile/{served}", timeout=2)
                if r.status != 200:
                    errors.append(r.status)
            except OSError as e:
                errors.append(repr(e))
            worst = max(worst, time.monotonic() - t)
            served += 1
            rd, _, _ = select.select([s for n, s in stalled.items() if n not in closed], [], [], 0.2)
            for sock in rd:
                n = next(k for k, v in stalled.items() if v is sock)
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                now = time.monotonic() - t0
                if not chunk:
                    closed[n] = now
                else:
                    got[n] += chunk
                    if n != "idle" or got[n].count(b"HTTP/1.1 ") > 1:
                        t_first.setdefault(n, now)
        alive = st.router.crash_report()
        summary = {n: (status_of(got[n].split(b"\r\n\r\n", 1)[-1]) if n == "idle" else status_of(got[n]),
                       t_first.get(n), closed.get(n)) for n in stalled}
        print(f"\n(status, s to answer, s to close) per stalled connection: {summary}; "
              f"{served} others served meanwhile, slowest {worst * 1000:.0f} ms, errors {errors[:3]}")
        assert alive is None, alive
        assert not errors and worst < 1.0, f"requests while clients stalled: errors {errors[:5]}, slowest {worst:.2f}s"
        assert status_of(got["idle"]) == 200, f"the idle connection's first request: {got['idle'][:200]!r}"
        for n in stalled:
            assert n in closed, f"{n}: connection not closed {deadline - t0:.0f}s after it stalled ({summary[n]})"
            assert HEADERS_TIMEOUT - 1.0 <= closed[n] <= HEADERS_TIMEOUT + 1.5, f"{n}: closed after {closed[n]:.2f}s"
        assert summary["partial"][0] == 408, f"partial request head: expected 408, got {got['partial'][:200]!r}"
    finally:
        for sock in (locals().get("partial"), locals().get("silent"), locals().get("idle")):
            if sock is not None:
                sock.close()
        procs.kill_all()
        left = ul.procs_mentioning(str(tmp_path))
        assert not left, f"uWSGI processes left behind: {left}"


def test_subscribe2_addr_form_and_dotsplit_wildcard(main: Setup):
    r, vs = main.router, main.vassals
    c = vs.start("c", "--subscribe2", f"server={r.sub_server},key=addr.example.com,addr={HOST}:{{port}}",
                 "--subscribe2", f"server={r.sub_server},key=.wild.test,addr={HOST}:{{port}}")
    d = vs.start("d", "--subscribe2", f"server={r.sub_server},key=addr.example.com")  # address = first --socket
    r.wait_subscribed([("addr.example.com", c.address), ("addr.example.com", d.address),
                       (".wild.test", c.address)], vs)
    got = [request(r.http_port, host="addr.example.com", path=f"/s2/{i}") for i in range(6)]
    assert all(x.status == 200 for x in got), [(x.status, x.body[:200]) for x in got]
    names = [x.info["vassal"] for x in got]
    assert alternates(names) and set(names) == {"c", "d"}, f"addr.example.com: {names}"
    w = request(r.http_port, host="a.b.wild.test", path="/wild")
    assert w.status == 200 and w.info["vassal"] == "c" and w.info["host"] == "a.b.wild.test", w
    apex = request(r.http_port, host="wild.test")
    assert apex.status == 404, f"the wildcard .wild.test must not match the apex wild.test: {apex}"
    deep = request(r.http_port, host="a.b.c.d.e.wild.test")
    assert deep.status == 404, f"dotsplit stops after 5 lookups (spec TV-S4): {deep}"
    vs.kill("c")
    vs.kill("d")


def test_sigkill_of_a_vassal_every_request_still_succeeds(main: Setup):
    r, vs = main.router, main.vassals
    key = "kill.example.com"
    k1 = vs.start("k1", "--subscribe-to", f"{r.sub_server}:{key}")
    k2 = vs.start("k2", "--subscribe-to", f"{r.sub_server}:{key}")
    r.wait_subscribed([(key, k1.address), (key, k2.address)], vs)
    before = [request(r.http_port, host=key).info["vassal"] for _ in range(4)]
    assert alternates(before), before

    vs.kill("k1")
    statuses, answered_by, t0 = [], set(), time.monotonic()
    while time.monotonic() - t0 < 4.0:  # longer than the 3 s ejection: the dead node is retried again
        x = request(r.http_port, host=key, path=f"/after-kill/{len(statuses)}")
        statuses.append(x.status)
        if x.status == 200:
            answered_by.add(x.info["vassal"])
        time.sleep(0.05)
    failed = [s for s in statuses if s != 200]
    assert not failed and answered_by == {"k2"}, \
        f"after SIGKILL of k1: {len(failed)} of {len(statuses)} failed ({sorted(set(failed))}), answered by {answered_by}"
    print(f"\n{len(statuses)} requests in 4 s after SIGKILL of k1: all 200 from k2")

    vs.kill("k2")
    first = request(r.http_port, host=key)
    assert first.status == 502 and first.body, f"all backends refusing: expected 502, got {first}"
    second = request(r.http_port, host=key)
    assert second.status == 503 and second.body, f"no live node (both ejected): expected 503, got {second}"


def test_signed_subscriptions(tmp_path, legion_bin, uwsgi_py3, procs):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    keydir = tmp_path / "keys"
    keydir.mkdir()
    shutil.copy(PUBKEY, keydir / f"{KEY}.pem")
    wrong = tmp_path / "wrong.priv.pem"
    wrong.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    try:
        r = Router(tmp_path, legion_bin, procs, "rs", sign_dir=keydir)
        r.wait_listening()
        vs = Vassals(tmp_path, uwsgi_py3, procs)
        # signed vassal: addr= is left out, uWSGI announces its first --socket
        s = vs.start("signed", "--subscribe2", f"server={r.sub_server},key={KEY},sign=SHA1:{PRIVKEY}")
        u = vs.start("unsigned", "--subscribe-to", f"{r.sub_server}:{KEY}")
        w = vs.start("wrongkey", "--subscribe2", f"server={r.sub_server},key={KEY},sign=SHA1:{wrong}")
        t_start = time.monotonic()
        r.wait_subscribed([(KEY, s.address)], vs)
        # uWSGI sends at start and again at +1 s: give the other two both chances
        time.sleep(max(0.0, t_start + 2.5 - time.monotonic()))
        subs = r.subscriptions()
        assert [x for x in subs if x.get("address") == s.address][0].get("signed") == "true", subs
        assert not r.subscribed(KEY, u.address), f"unsigned vassal accepted by a sign_check router: {subs}"
        assert not r.subscribed(KEY, w.address), f"vassal signing with another key accepted: {subs}"
        got = [request(r.http_port, path=f"/signed/{i}") for i in range(6)]
        assert all(x.status == 200 for x in got), [(x.status, x.body[:200]) for x in got]
        assert {x.info["vassal"] for x in got} == {"signed"}, [x.info["vassal"] for x in got]
        drops = [ln for ln in r.log_text().splitlines() if "dropped datagram" in ln]
        print("\nsigned vassal routed; dropped datagrams logged:\n  " + "\n  ".join(drops))
        assert drops, "the router should log (rate-limited) the rejected unsigned / wrongly signed subscriptions"
    finally:
        procs.kill_all()
        left = ul.procs_mentioning(str(tmp_path))
        assert not left, f"uWSGI processes left behind: {left}"


def test_signed_subscription_verified_with_the_customers_key_from_the_store(tmp_path, legion_bin, uwsgi_py3, procs):
    """uwsgi.it's dominator: a domain's subscriptions verify with its owner's RSA key from the replicated store
    (no key file); another key for the same domain is refused."""
    keydir = tmp_path / "keys"
    keydir.mkdir()  # empty: the key comes from the store
    store = f"{HOST}:{free_port()}"
    r = Router(tmp_path, legion_bin, procs, "rk", sign_dir=keydir,
               extra=f'\n[store]\nid = 1\nbind = "{store}"\n')
    r.wait_listening()

    def legion(*args: str, stdin: str | None = None) -> str:
        p = subprocess.run([str(legion_bin), *args, "--store", store], input=stdin, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"legion {' '.join(args)}: {p.stderr}"
        return p.stdout

    deadline = time.monotonic() + 20
    while True:
        p = subprocess.run([str(legion_bin), "admin", "customer", "add", "alice", "--password-stdin", "--store", store],
                           input="a long enough password\n", capture_output=True, text=True, timeout=60)
        if p.returncode == 0:
            break
        assert time.monotonic() < deadline, f"store never accepted a customer: {p.stderr}\n{tail(r.log)}"
        time.sleep(0.3)
    legion("admin", "domain", "add", KEY, "--customer", "alice")
    private = json.loads(legion("store", "query", "--json", "SELECT rsa_key FROM customers WHERE username = ?",
                                "--param", "alice"))[0]["rsa_key"]
    alice_key = tmp_path / "alice.priv.pem"
    alice_key.write_text(private)
    time.sleep(0.6)  # the node applies the change within a poll (200 ms)
    vs = Vassals(tmp_path, uwsgi_py3, procs)
    s = vs.start("alice", "--subscribe2", f"server={r.sub_server},key={KEY},sign=SHA1:{alice_key}")
    w = vs.start("intruder", "--subscribe2", f"server={r.sub_server},key={KEY},sign=SHA1:{PRIVKEY}")
    t_start = time.monotonic()
    r.wait_subscribed([(KEY, s.address)], vs)
    time.sleep(max(0.0, t_start + 2.5 - time.monotonic()))
    assert not r.subscribed(KEY, w.address), "a vassal signing with a key that is not the owner's was accepted"
    got = [request(r.http_port, path=f"/k/{i}") for i in range(4)]
    assert all(x.status == 200 for x in got) and {x.info["vassal"] for x in got} == {"alice"}, got


def _ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 §5.2), payload < 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_read_frame(s: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    """One unmasked server frame: (opcode, payload, rest of the buffer)."""
    while True:
        if len(buf) >= 2:
            n = buf[1] & 0x7F
            head = 2
            if n == 126 and len(buf) >= 4:
                n, head = int.from_bytes(buf[2:4], "big"), 4
            if n < 126 or head == 4:
                if len(buf) >= head + n:
                    return buf[0] & 0x0F, buf[head:head + n], buf[head + n:]
        chunk = s.recv(65536)
        assert chunk, f"connection closed while reading a WebSocket frame (got {buf!r})"
        buf += chunk


def ws_handshake(s: socket.socket, host: str, path: str = "/ws", connection: str = "Upgrade",
                 first: bytes = b"") -> tuple[str, bytes, bytes]:
    """Sends a WebSocket upgrade request (plus `first` bytes in the same write) and reads the 101 answer:
    (key, response head, bytes after the head)."""
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: {connection}\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode() + first)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before the handshake answer: {buf!r}"
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return key, head, buf


def test_websocket_tunnel_to_a_real_uwsgi_backend(main: Setup):
    """Upgrade: websocket is tunnelled: uWSGI's own handshake (uwsgi.websocket_handshake) and frames pass both
    ways through our router; plain requests keep working beside it."""
    port = main.router.http_port
    s = socket.create_connection((HOST, port), timeout=5)
    try:
        # The first frame travels in the same write as the handshake (uWSGI's router would drop it).
        key, head, buf = ws_handshake(s, KEY, connection="keep-alive, Upgrade", first=_ws_frame(b"first"))
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert b"Sec-WebSocket-Accept: " + accept in head, head
        got = []
        for msg in (None, b"second", b"x" * 100):
            if msg is not None:
                s.sendall(_ws_frame(msg))
            op, payload, buf = _ws_read_frame(s, buf)
            got.append(payload)
        assert got == [b"echo:first", b"echo:second", b"echo:" + b"x" * 100], got
        assert request(port, path="/beside-ws").status == 200
    finally:
        s.close()


def test_http11_backends_with_a_keep_alive_pool(tmp_path, legion_bin, uwsgi_py3, procs):
    """A subscription address `http://HOST:PORT` is an HTTP/1.1 backend: requests (bodies included) go over
    kept-alive connections from a pool; a real uWSGI --http11-socket vassal serves through it, and a stdlib
    HTTP/1.1 server sees one connection reused for sequential requests."""
    import http.server
    import threading as th

    r = Router(tmp_path, legion_bin, procs, "rh", extra="threads = 1\n")  # one event loop: one pool
    r.wait_listening()
    # 1. A real uWSGI HTTP/1.1 vassal, subscribing its http11 socket.
    port = free_port()
    app = tmp_path / "app11.py"
    app.write_text(
        "import json\n"
        "def application(env, start_response):\n"
        "    n = int(env.get('CONTENT_LENGTH') or 0)\n"
        "    body = json.dumps({'path': env.get('PATH_INFO'), 'len': len(env['wsgi.input'].read(n)),\n"
        "                       'xff': env.get('HTTP_X_FORWARDED_FOR'), 'host': env.get('HTTP_HOST')}).encode()\n"
        "    start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', str(len(body)))])\n"
        "    return [body]\n")
    procs.start([uwsgi_py3, "--plugin", "python3", "--master", "--processes", "1", "--http11-socket", f"{HOST}:{port}",
                 "--wsgi-file", str(app), "--die-on-term",
                 "--subscribe2", f"server={r.sub_server},key=h11.example.com,addr=http://{HOST}:{port}"],
                log_path=tmp_path / "u11.log", cwd=tmp_path)
    deadline = time.monotonic() + 10
    while not r.subscribed("h11.example.com", f"http://{HOST}:{port}") and time.monotonic() < deadline:
        time.sleep(0.1)
    conn = http.client.HTTPConnection(HOST, r.http_port, timeout=5)
    try:
        for i in range(5):
            got = request(r.http_port, method="POST" if i % 2 else "GET", path=f"/h{i}", host="h11.example.com",
                          body=b"z" * (1000 * i) if i % 2 else None, conn=conn)
            assert got.status == 200, got
            assert got.info["path"] == f"/h{i}" and got.info["len"] == (1000 * i if i % 2 else 0), got.info
            assert got.info["host"] == "h11.example.com" and got.info["xff"] == HOST, got.info
    finally:
        conn.close()

    # 2. Connection reuse, seen from the backend.
    seen: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            seen.append(self.client_address[1])
            body = b"pooled"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    th.Thread(target=server.serve_forever, daemon=True).start()
    try:
        py_port = server.server_address[1]
        procs.start([uwsgi_py3, "--plugin", "python3", "--master", "--processes", "1", "--socket", f"{HOST}:{free_port()}",
                     "--wsgi-file", str(app), "--die-on-term",
                     "--subscribe2", f"server={r.sub_server},key=pool.example.com,addr=http://{HOST}:{py_port}"],
                    log_path=tmp_path / "sub-only.log", cwd=tmp_path)
        deadline = time.monotonic() + 10
        while not r.subscribed("pool.example.com", f"http://{HOST}:{py_port}") and time.monotonic() < deadline:
            time.sleep(0.1)
        for i in range(6):
            got = request(r.http_port, path=f"/p{i}", host="pool.example.com")  # a new client connection each time
            assert got.status == 200 and got.body == b"pooled", got
        assert len(seen) == 6 and len(set(seen)) == 1, f"backend connections by source port: {seen} (expected one reused)"
    finally:
        server.shutdown()
