"""HTTPS on the router's fast path: TLS terminated with OpenSSL inside the epoll loops, with real uWSGI vassals.

* differential: the same requests over TLS to a node on the fast path and to one with ``fast_path = false`` (TLS in
  SwiftNIO) get the same answers — status, headers (but Date), and what the backend saw (HTTPS, X-Forwarded-*,
  REMOTE_ADDR, the body) — including requests the fast path bridges to the general router (chunked and large
  uploads, an HTTP/1.1 backend), router-made answers (unknown host) and pipelined requests;
* session resumption (TLS 1.3 tickets and TLS 1.2) and ALPN http/1.1 (h2-only clients get no ALPN);
* edge cases, the node serving on after each: truncated records, garbage instead of a ClientHello, random
  bytes after a valid one, a TLS 1.2 renegotiation attempt (refused), a ClientHello trickled byte by byte
  (served), a client that never finishes its handshake (closed at the header timeout);
* 10 000 idle TLS connections held open: the node's CPU stays flat and its memory per connection is bounded,
  and the held connections still answer.

Run:  python3 -m pytest -v tests/integration/test_router_tls_fast_path.py        (~60 s)
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import socket
import ssl
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port, ul

HOST = "127.0.0.1"
NAME = "tls.example.com"

APP = """
import hashlib, json
def application(env, start_response):
    body = env["wsgi.input"].read()
    keys = ["REQUEST_METHOD", "REQUEST_URI", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "SERVER_PORT", "HTTPS",
            "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_FOR", "REMOTE_ADDR", "HTTP_HOST", "CONTENT_LENGTH", "HTTP_X_TEST",
            "HTTPS_DN"]
    out = {k: env.get(k) for k in keys}
    out["body"] = [len(body), hashlib.sha256(body).hexdigest()]
    data = json.dumps(out, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("X-App", "echo")])
    return [data]
"""


def send_subscription(sub_port: int, key: str, address: str) -> None:
    """A plain uWSGI subscription packet (modifier1 224) for key -> address, as `--subscribe-to` sends."""
    payload = b""
    for k, v in (("key", key), ("address", address)):
        payload += struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(struct.pack("<BHB", 224, len(payload), 0) + payload, (HOST, sub_port))


def make_ec_cert(directory: Path, name: str) -> tuple[Path, Path]:
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True, timeout=60)
    return crt, key


class Node:
    """One `legion node` with HTTP and HTTPS routers (fast path on or off)."""

    def __init__(self, base: Path, legion_bin: Path, procs, name: str, cert: tuple[Path, Path], fast_path: bool,
                 headers_timeout_ms: int = 10_000, https_port: int | None = None, http_port: int | None = None):
        self.https_port, self.http_port = https_port or free_port(), http_port or free_port()
        self.sub_port, legion_port = free_port(udp=True), free_port(udp=True)
        self.log = base / f"{name}.log"
        (base / name).mkdir(parents=True, exist_ok=True)
        cfg = base / f"{name}.toml"
        cfg.write_text(f"""
[node]
name = "{name}"
data_dir = "{base / name}"
[legion]
name = "tls-{name}"
bind = "{HOST}:{legion_port}"
valor = 1
secret = "aes-256-cbc:x"
[router]
http = "{HOST}:{self.http_port}"
https = "{HOST}:{self.https_port}"
https_certificate = "{cert[0]}"
https_key = "{cert[1]}"
subscription = "{HOST}:{self.sub_port}"
server_name = "tls-test"
fast_path = {str(fast_path).lower()}
headers_timeout_ms = {headers_timeout_ms}
""")
        self.proc = procs.start([legion_bin, "node", "--config", cfg], log_path=self.log)

    def alive(self) -> None:
        assert self.proc.poll() is None, f"the node died; log:\n{self.log.read_text()[-3000:]}"


def client_context(alpn: list[str] | None = None, max_version=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def tls_exchange(port: int, payload: bytes, timeout: float = 10) -> bytes:
    """Sends `payload` over TLS and reads until the server closes."""
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        with client_context().wrap_socket(raw, server_hostname=NAME) as tls:
            tls.sendall(payload)
            data = b""
            try:
                while chunk := tls.recv(65536):
                    data += chunk
            except (ssl.SSLError, ConnectionResetError):
                pass
    return data


def split_responses(data: bytes) -> list[tuple[str, dict, bytes]]:
    """Responses with Content-Length (or chunked) framing, in order: (status line, headers but Date, body)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.lower() != "date":
                headers[k.lower()] = v.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, data = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                n = int(size_line, 16)
                body += rest[:n]
                rest = rest[n + 2:]
                if n == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        out.append((lines[0], headers, body))
    return out


def normalized(node: Node, data: bytes) -> list:
    result = []
    for status, headers, body in split_responses(data):
        if headers.get("x-app") == "echo" and body:
            env = json.loads(body)
            assert env["SERVER_PORT"] == str(node.https_port), env
            assert env["HTTPS"] == "on" and env["HTTP_X_FORWARDED_PROTO"] == "https", env
            assert env["REMOTE_ADDR"] == HOST, env  # the client, also when bridged to the general router
            env.pop("SERVER_PORT")
            body = env
        result.append((status, headers, body))
    return result


class HTTPBackend(BaseHTTPRequestHandler):
    """An HTTP/1.1 backend (`http://` subscription): the fast path bridges such requests to the general router."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"path": self.path, "proto": self.headers.get("X-Forwarded-Proto")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def pair(tmp_path_factory, legion_bin, module_procs):
    """A fast-path node and a general-path node, the same echo vassal and HTTP backend subscribed to both."""
    base = tmp_path_factory.mktemp("tlsfast")
    cert = make_ec_cert(base, NAME)
    fast = Node(base, legion_bin, module_procs, "fast", cert, fast_path=True)
    general = Node(base, legion_bin, module_procs, "general", cert, fast_path=False)
    uwsgi = ul.ensure_uwsgi_python3()
    (base / "app.py").write_text(APP)
    app_port = free_port()
    module_procs.start([uwsgi, "--plugin", "python3", "--master", "--processes", "1", "--socket", f"{HOST}:{app_port}",
                        "--wsgi-file", base / "app.py", "--die-on-term", "--post-buffering", "1",
                        "--subscribe2", f"server={HOST}:{fast.sub_port},key={NAME}",
                        "--subscribe2", f"server={HOST}:{general.sub_port},key={NAME}"],
                       log_path=base / "vassal.log")
    http_backend = ThreadingHTTPServer((HOST, 0), HTTPBackend)
    threading.Thread(target=http_backend.serve_forever, daemon=True).start()
    backend_address = f"http://{HOST}:{http_backend.server_address[1]}"
    deadline = time.monotonic() + 20
    ready = False
    while time.monotonic() < deadline and not ready:
        for node in (fast, general):
            send_subscription(node.sub_port, "web.example.com", backend_address)
        try:
            ready = all(tls_exchange(n.https_port, f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode(),
                                     timeout=2).startswith(b"HTTP/1.1 200")
                        and tls_exchange(n.https_port, b"GET / HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n",
                                         timeout=2).startswith(b"HTTP/1.1 200")
                        for n in (fast, general))
        except OSError:
            pass
        time.sleep(0.3)
    assert ready, f"nodes not serving over TLS; fast log:\n{fast.log.read_text()[-2000:]}"
    yield fast, general
    http_backend.shutdown()


def chunked(body: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


REQUESTS = {
    "get": f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode(),
    "query and escapes": f"GET /p%41th/./x?q=1&r=%20 HTTP/1.1\r\nHost: {NAME}\r\nX-Test: a\r\nConnection: close\r\n\r\n".encode(),
    "head": f"HEAD / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode(),
    "post": f"POST /form HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world".encode(),
    "http/1.0": f"GET /old HTTP/1.0\r\nHost: {NAME}\r\n\r\n".encode(),
    "host with port": f"GET / HTTP/1.1\r\nHost: {NAME}:443\r\nConnection: close\r\n\r\n".encode(),
    "forwarded for": f"GET / HTTP/1.1\r\nHost: {NAME}\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n".encode(),
    "unknown host": b"GET / HTTP/1.1\r\nHost: nobody.example.com\r\nConnection: close\r\n\r\n",
    "pipelined": (f"GET /1 HTTP/1.1\r\nHost: {NAME}\r\n\r\nGET /2 HTTP/1.1\r\nHost: {NAME}\r\n\r\n"
                  f"GET /3 HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n").encode(),
    # Bridged to the general router (the TLS session stays on the fast path):
    "chunked upload": (f"POST /up HTTP/1.1\r\nHost: {NAME}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
                       + chunked(bytes(range(256)) * 40, 1000)),
    "large upload": (f"POST /big HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: {3 << 20}\r\nConnection: close\r\n\r\n".encode()
                     + bytes(random.Random(7).randbytes(3 << 20))),
    "http backend": b"GET /svc?x=1 HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n",
    "plain then bridged": (f"GET /a HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode()
                           + f"POST /b HTTP/1.1\r\nHost: {NAME}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + chunked(b"x" * 5000, 700)
                           + f"GET /c HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode()),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_tls_fast_path_answers_as_the_general_path(pair, name):
    fast, general = pair
    payload = REQUESTS[name]
    got_fast = normalized(fast, tls_exchange(fast.https_port, payload))
    got_general = normalized(general, tls_exchange(general.https_port, payload))
    assert got_fast, "no answer from the fast path"
    assert got_fast == got_general
    fast.alive()


def test_fast_path_serves_tls_itself(pair):
    """The node logs that its HTTPS listener is on the fast path, and a large response arrives intact."""
    fast, _ = pair
    assert "HTTPS router listening" in fast.log.read_text() and "fast_path=true" in fast.log.read_text().split("HTTPS router listening")[1].splitlines()[0]
    body = os.urandom(1 << 20)
    data = tls_exchange(fast.https_port, f"POST /echo HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    (status, _, env), = normalized(fast, data)
    assert status == "HTTP/1.1 200 OK" and env["body"] == [len(body), hashlib.sha256(body).hexdigest()]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_sessions_resume(pair, version):
    fast, _ = pair
    ctx = client_context(max_version=version)
    session = None
    reused = []
    for _ in range(3):
        with socket.create_connection((HOST, fast.https_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=NAME, session=session) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200")
                reused.append(tls.session_reused)
                session = tls.session
    assert reused == [False, True, True], reused


def test_alpn_http11(pair):
    fast, _ = pair
    for offer, expected in ((["h2", "http/1.1"], "http/1.1"), (["http/1.1"], "http/1.1"), (["h2"], None)):
        with socket.create_connection((HOST, fast.https_port), timeout=5) as raw:
            with client_context(alpn=offer).wrap_socket(raw, server_hostname=NAME) as tls:
                assert tls.selected_alpn_protocol() == expected, offer


def client_hello() -> bytes:
    """A real ClientHello (Python's OpenSSL through memory BIOs)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname=NAME)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def served(node: Node) -> bool:
    return tls_exchange(node.https_port, f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode()).startswith(b"HTTP/1.1 200")


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True


def test_malformed_tls_input_is_refused_and_the_node_serves_on(pair):
    fast, _ = pair
    hello = client_hello()
    rng = random.Random(10)
    cases = [
        hello[:5] + hello[5:40],                          # a truncated record, then close
        b"\x16\x03\x01\x40\x00" + b"\x00" * 100,          # a record header promising 16 KB, little after it
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",            # plain HTTP to the TLS port
        b"\x17\x03\x03\x00\x10" + os.urandom(16),         # application data before any handshake
        b"\x16\x03\x03\xff\xff" + os.urandom(64),         # an oversized record length
    ]
    for _ in range(150):
        mutated = bytearray(hello)
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        cases.append(bytes(mutated))
        cases.append(os.urandom(rng.randrange(1, 600)))
    for payload in cases:
        with socket.create_connection((HOST, fast.https_port), timeout=5) as s:
            s.sendall(payload)
            if payload == cases[1]:
                continue  # the node waits for the rest of the record; the client leaves
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            assert closed_within(s, 5), f"the connection stayed open after {payload[:40]!r}"
    fast.alive()
    assert served(fast)


def test_renegotiation_is_refused(pair):
    fast, _ = pair
    # openssl s_client's "R" command asks for a TLS 1.2 renegotiation after the handshake.
    p = subprocess.run(["openssl", "s_client", "-tls1_2", "-connect", f"{HOST}:{fast.https_port}", "-servername", NAME],
                       input=b"R\n", capture_output=True, timeout=20)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert "RENEGOTIATING" in out, out[-1500:]
    assert "no renegotiation" in out.lower() or "alert" in out.lower() or p.returncode != 0, out[-1500:]
    fast.alive()
    assert served(fast)


def test_trickled_client_hello_is_served(pair):
    fast, _ = pair
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname=NAME)
    with socket.create_connection((HOST, fast.https_port), timeout=5) as s:
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        for b in outgoing.read():
            s.sendall(bytes([b]))
            time.sleep(0.002)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out := outgoing.read():
                    s.sendall(out)
                data = s.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        if out := outgoing.read():
            s.sendall(out)
        obj.write(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        s.sendall(outgoing.read())
        answer = b""
        while True:
            try:
                answer += obj.read(65536)
                if answer.count(b"}") and b"\r\n\r\n" in answer:
                    break
            except ssl.SSLWantReadError:
                data = s.recv(65536)
                if not data:
                    break
                incoming.write(data)
            except ssl.SSLZeroReturnError:
                break
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_unfinished_handshake_is_closed_at_the_header_timeout(tmp_path, legion_bin, procs):
    cert = make_ec_cert(tmp_path, NAME)
    node = Node(tmp_path, legion_bin, procs, "slow", cert, fast_path=True, headers_timeout_ms=1000)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((HOST, node.https_port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, node.log.read_text()[-2000:]
            time.sleep(0.1)
    hello = client_hello()
    with socket.create_connection((HOST, node.https_port), timeout=5) as half, \
            socket.create_connection((HOST, node.https_port), timeout=5) as silent:
        half.sendall(hello[:len(hello) // 2])
        start = time.monotonic()
        assert closed_within(half, 4) and closed_within(silent, 4)
        elapsed = time.monotonic() - start
    assert 0.8 <= elapsed <= 3.0, f"closed after {elapsed:.2f} s (header timeout 1 s)"
    node.alive()


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_ten_thousand_idle_tls_connections(tmp_path, legion_bin, procs):
    """10 000 TLS connections, handshaken and idle: held without CPU growth, bounded memory, still answering."""
    count = 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 2000  # each side: the connections and what a node or pytest has open besides
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))  # the node inherits it
    except (ValueError, OSError):
        pytest.fail(f"`ulimit -Hn` is {hard}; this test needs {need} open files per process (run it as root or raise the hard limit)")
    try:
        cert = make_ec_cert(tmp_path, NAME)
        node = Node(tmp_path, legion_bin, procs, "idle", cert, fast_path=True, headers_timeout_ms=300_000)
        uwsgi = ul.ensure_uwsgi_python3()
        (tmp_path / "app.py").write_text(APP)
        procs.start([uwsgi, "--plugin", "python3", "--master", "--processes", "1", "--socket", f"{HOST}:{free_port()}",
                     "--wsgi-file", tmp_path / "app.py", "--die-on-term",
                     "--subscribe2", f"server={HOST}:{node.sub_port},key={NAME}"], log_path=tmp_path / "vassal.log")
        deadline = time.monotonic() + 20
        while True:
            try:
                if served(node):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, node.log.read_text()[-2000:]
            time.sleep(0.2)
        pid = node.proc.pid
        time.sleep(1)
        cpu_start = proc_cpu_seconds(pid)
        time.sleep(5)
        baseline_cpu = (proc_cpu_seconds(pid) - cpu_start) / 5
        rss_before = proc_rss_kb(pid)
        ctx = client_context()
        held = []
        start = time.monotonic()
        for _ in range(count):
            raw = socket.create_connection((HOST, node.https_port), timeout=10)
            held.append(ctx.wrap_socket(raw, server_hostname=NAME))
        opened = time.monotonic() - start
        time.sleep(1)
        cpu_start = proc_cpu_seconds(pid)
        time.sleep(5)
        idle_cpu = (proc_cpu_seconds(pid) - cpu_start) / 5
        rss_after = proc_rss_kb(pid)
        per_connection_kb = (rss_after - rss_before) / count
        print(f"\n{count} TLS connections opened in {opened:.1f} s; node CPU idle: {baseline_cpu * 100:.2f} % of a core without them, "
              f"{idle_cpu * 100:.2f} % holding them; RSS {rss_before} -> {rss_after} kB ({per_connection_kb:.1f} kB per connection)")
        assert idle_cpu < baseline_cpu + 0.01, \
            f"holding idle TLS connections costs CPU: {baseline_cpu * 100:.2f} -> {idle_cpu * 100:.2f} % of a core"
        assert per_connection_kb < 64, f"{per_connection_kb:.1f} kB per idle TLS connection"
        for tls in random.Random(3).sample(held, 20):
            tls.sendall(f"GET /held HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
            data = tls.recv(65536)
            assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert served(node)
        node.alive()
    finally:
        for tls in locals().get("held", []):
            try:
                tls.close()
            except OSError:
                pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("taken", ["https", "http"])
def test_a_port_in_use_stops_the_node_with_a_clear_error(tmp_path, legion_bin, procs, taken):
    """A listener that cannot bind fails the node at start, saying which and why, instead of hanging half-started
    (the other services — the Legion thread, the other router's loops — stop with it)."""
    cert = make_ec_cert(tmp_path, NAME)
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind((HOST, 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        node = Node(tmp_path, legion_bin, procs, "busy", cert, fast_path=True, **{f"{taken}_port": port})
        try:
            code = node.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node kept running with its {taken} port {port} in use; log:\n{node.log.read_text()[-2000:]}")
        log = node.log.read_text()
        assert code != 0 and "Address already in use" in log and f"router.{taken}" in log, log[-2000:]


def test_an_unreadable_certificate_or_key_stops_the_node_saying_which(tmp_path, legion_bin, procs):
    good = make_ec_cert(tmp_path, NAME)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for cert, expected in (((junk, good[1]), "holds no readable PEM certificate"),
                           ((good[0], junk), "holds no readable unencrypted PEM private key")):
        node = Node(tmp_path, legion_bin, procs, f"badcert-{len(expected)}", cert, fast_path=True)
        try:
            code = node.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node kept running with an unreadable certificate; log:\n{node.log.read_text()[-2000:]}")
        log = node.log.read_text()
        assert code != 0 and expected in log and str(junk) in log, log[-2000:]
