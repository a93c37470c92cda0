"""Cluster domains on the local 3-node cluster (cluster-configs/local-3): a demo app run by two real
uWSGI vassals, on node2 and node3, subscribed to their node's cluster subscription socket, is reached
through the VIP in round-robin across nodes (Lord's router → each node's internal router → vassal),
and keeps being reached after the Lord is SIGKILLed.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ul
from test_router_interop import _ws_frame, _ws_read_frame, ws_handshake

VIP = "127.0.0.100:18480"
APP = """
import os
def application(env, start_response):
    if env.get("PATH_INFO", "").startswith("/ws"):
        import uwsgi
        uwsgi.websocket_handshake(env["HTTP_SEC_WEBSOCKET_KEY"], env.get("HTTP_ORIGIN", ""))
        while True:
            try:
                msg = uwsgi.websocket_recv()
            except IOError:
                return []
            uwsgi.websocket_send(os.environ["DEMO_NAME"].encode() + b":" + msg)
    body = os.environ["DEMO_NAME"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def get(host: str, path: str = "/", timeout: float = 1.0) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{VIP}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def cluster(legion_bin, repo_root, tmp_path):
    uwsgi = ul.ensure_uwsgi_python3()
    run_dir = tmp_path / "run"
    subprocess.run([str(legion_bin), "cluster", "down", "--run-dir", str(run_dir)], cwd=repo_root, capture_output=True, timeout=30)
    up = subprocess.run([str(legion_bin), "cluster", "up", "--run-dir", str(run_dir)], cwd=repo_root,
                        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert up.returncode == 0, f"cluster up failed: {up.stdout}{up.stderr}"
    app = tmp_path / "demo.py"
    app.write_text(APP)
    vassals = []
    for node in (2, 3):
        port = ul.free_port()
        env = dict(os.environ, DEMO_NAME=f"node{node}")
        log = open(tmp_path / f"vassal{node}.log", "w")
        vassals.append(subprocess.Popen(
            [uwsgi, "--plugin", "python3", "--master", "--processes", "1", "--socket", f"127.0.0.1:{port}",
             "--wsgi-file", str(app), "--subscribe-to", f"127.0.0.1:1750{node}:demo.example.com", "--die-on-term"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    yield run_dir
    for v in vassals:
        try:
            os.killpg(v.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run([str(legion_bin), "cluster", "down", "--run-dir", str(run_dir)], cwd=repo_root, capture_output=True, timeout=30)


def test_cluster_domain_is_balanced_across_nodes_and_survives_the_lord(cluster: Path):
    deadline = time.monotonic() + 10
    seen: list[str] = []
    while time.monotonic() < deadline:
        status, body = get("demo.example.com")
        if status == 200:
            seen.append(body)
            if len(seen) >= 6:
                break
        else:
            time.sleep(0.1)
    assert len(seen) >= 6, f"the demo app was not reachable through the VIP: {seen}"
    assert set(seen) == {"node2", "node3"}, f"expected both nodes to serve: {seen}"
    assert all(a != b for a, b in zip(seen, seen[1:])), f"not round-robin across nodes: {seen}"

    # A WebSocket on the cluster domain: tunnelled through both hops (Lord's router -> internal router -> vassal).
    host, port = VIP.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    try:
        _, _, buf = ws_handshake(s, "demo.example.com")
        s.sendall(_ws_frame(b"ping"))
        _, payload, buf = _ws_read_frame(s, buf)
        assert payload in (b"node2:ping", b"node3:ping"), payload
    finally:
        s.close()
    time.sleep(0.3)  # the vassal that held the WebSocket is free again

    lord_pid = int((cluster / "node1" / "node.pid").read_text())
    os.kill(lord_pid, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:
        status, body = get("demo.example.com", timeout=0.3)
        if status == 200:
            break
        time.sleep(0.01)
    gap = time.monotonic() - t0
    assert status == 200, "the cluster domain was not served after the Lord was killed"
    assert gap < 1.5, f"cluster domain unavailable for {gap:.2f}s after the Lord was killed"
    after = [get("demo.example.com")[1] for _ in range(6)]
    assert set(after) == {"node2", "node3"}, f"after failover both nodes must still serve: {after}"
    status, body = get("unknown.example.org")
    assert status == 404 and "no application" in body


def test_api_is_served_by_name_through_the_vip_across_every_node(cluster: Path, legion_bin, repo_root):
    """`[api] domain = "api.local-3.test"`: each node's API announces itself to every router, so the Lord's router on
    the VIP balances the API across the three nodes, and keeps serving it after the Lord is SIGKILLed."""
    def answered_by() -> str | None:
        status, body = get("api.local-3.test", "/status", timeout=1.0)
        if status != 200:
            return None
        import json
        return json.loads(body)["name"]

    deadline = time.monotonic() + 10
    seen: set[str] = set()
    while time.monotonic() < deadline and len(seen) < 3:
        name = answered_by()
        if name:
            seen.add(name)
        else:
            time.sleep(0.05)
    assert seen == {"node1", "node2", "node3"}, f"the API through the VIP was answered by {seen} only"
    # the customer API itself, by name through the VIP
    admin = subprocess.run([str(legion_bin), "admin", "customer", "add", "vipuser", "--password-stdin"], cwd=repo_root,
                           input="vip-password-1\n", capture_output=True, text=True, timeout=30)
    assert admin.returncode == 0, admin.stderr
    import base64
    req = urllib.request.Request(f"http://{VIP}/api/me", headers={
        "Host": "api.local-3.test", "Authorization": "Basic " + base64.b64encode(b"vipuser:vip-password-1").decode()})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200 and b'"containers":[]' in r.read()
    # the Lord dies: the new Lord's router serves the API from the two survivors, no request fails once it answers
    os.kill(int((cluster / "node1" / "node.pid").read_text()), signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3 and answered_by() is None:
        time.sleep(0.01)
    assert time.monotonic() - t0 < 1.5, "the API was unavailable through the VIP for more than 1.5 s after the Lord was killed"
    names = [answered_by() for _ in range(20)]
    assert None not in names, f"some API requests failed after the failover: {names}"
    assert set(names) == {"node2", "node3"}, names


def test_api_is_served_over_https_by_every_router(legion_bin, repo_root, tmp_path):
    """With `[router] https`, the API domain is served over TLS (SNI picks the API's certificate) by any node's
    router, balanced across the three nodes' APIs."""
    import json
    import ssl
    from conftest import free_port
    from test_router_https import make_cert

    certs = tmp_path / "certs"
    certs.mkdir()
    default = make_cert(tmp_path, "default.test")
    make_cert(certs, "api.local-3.test")
    configs, run_dir = tmp_path / "configs", tmp_path / "run"
    configs.mkdir()
    ports = {n: free_port() for n in (1, 2, 3)}
    for n in (1, 2, 3):
        text = (repo_root / "cluster-configs" / "local-3" / f"node{n}.toml").read_text()
        text = text.replace("\n[router]\n", f'\n[router]\nhttps = "127.0.0.1:{ports[n]}"\nhttps_certificate = "{default[0]}"\n'
                                            f'https_key = "{default[1]}"\ncertificates = "{certs}"\n')
        (configs / f"node{n}.toml").write_text(text)
    subprocess.run([str(legion_bin), "cluster", "down"], cwd=repo_root, capture_output=True, timeout=30)
    up = subprocess.run([str(legion_bin), "cluster", "up", "--config-dir", str(configs), "--run-dir", str(run_dir)], cwd=repo_root,
                        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        context = ssl.create_default_context(cafile=str(certs / "api.local-3.test.crt"))
        seen: set[str] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(seen) < 3:
            raw = socket.create_connection(("127.0.0.1", ports[2]), timeout=2)
            try:
                with context.wrap_socket(raw, server_hostname="api.local-3.test") as s:  # verifies the API's certificate
                    s.sendall(b"GET /status HTTP/1.1\r\nHost: api.local-3.test\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
            except (OSError, ssl.SSLError):
                time.sleep(0.1)
                continue
            head, _, body = data.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 200"):
                seen.add(json.loads(body)["name"])
            else:
                time.sleep(0.1)
        assert seen == {"node1", "node2", "node3"}, f"over HTTPS the API was answered by {seen}"
    finally:
        subprocess.run([str(legion_bin), "cluster", "down", "--config-dir", str(configs), "--run-dir", str(run_dir)], cwd=repo_root,
                       capture_output=True, timeout=60)
