"""The customer API (uwsgi.it-compatible) on a 3-node store cluster.

- uwsgiit-py 0.10.0 (PyPI, unmodified) calls every client method against a node;
- two customers: no route lets one read, list, change or delete the other's records;
- domain ownership: the TXT record `uwsgi:<customer uuid>` checked through a real dnsmasq;
- uwsgi.it's known bugs (spec §2.12) answered on purpose: each would have been a 500 there;
- bad input (JSON, types, unknown fields, sizes, path tricks) → 4xx with a reason, nothing written;
- failed logins rate-limited (429), verified credentials cached and invalidated by a password change;
- the store leader and the Lord SIGKILLed during a stream of API writes: every acknowledged write present once.

Run:  python3 -m pytest -v -s tests/integration/test_api.py
"""
from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ProcessTracker, free_port, tail
from test_store import StoreCluster

from uwsgiit.api import UwsgiItClient  # noqa: E402  (installed by scripts/setup --test; a missing module fails)

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22", "carol": "carol-secret-3", "colon": "pa:ss:word:9"}


class DNSServer:
    """A real dnsmasq on a loopback port serving the TXT records a test needs (restarted to change them)."""

    def __init__(self, root: Path) -> None:
        self.port = free_port(udp=True)
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.records: dict[str, str] = {}

    def serve(self, records: dict[str, str]) -> None:
        self.stop()
        self.records = dict(records)
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        argv = [binary, "--keep-in-foreground", f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--pid-file=", "--user=root", "--log-facility=-"]
        argv += [f"--txt-record={name},{text}" for name, text in records.items()]
        self.proc = subprocess.Popen(argv, stdout=open(self.root / "dnsmasq.log", "ab"), stderr=subprocess.STDOUT)
        time.sleep(0.2)
        assert self.proc.poll() is None, f"dnsmasq did not start:\n{tail(self.root / 'dnsmasq.log')}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class APICluster(StoreCluster):
    def __init__(self, legion_bin: Path, root: Path, procs, resolver: str) -> None:
        self.resolver = resolver
        super().__init__(legion_bin, root, procs)

    def write_config(self, i: int) -> None:
        super().write_config(i)
        text = self.config(i).read_text().replace(
            f'[api]\nbind = "127.0.0.1:{self.api[i]}"', f'[api]\nbind = "127.0.0.1:{self.api[i]}"\nresolver = "{self.resolver}"')
        self.config(i).write_text(text)

    def url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.api[i]}/api"


def call(port: int, method: str, path: str, body=None, user: str | None = None, password: str | None = None,
         headers: dict | None = None, raw: bytes | None = None, timeout: float = 10) -> tuple[int, dict, object]:
    """One HTTP request; returns (status, headers, parsed JSON or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = dict(headers or {})
    if user is not None:
        h["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password if password is not None else PASSWORDS[user]}".encode()).decode()
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        h.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        payload = r.read()
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed
    finally:
        conn.close()


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    d = DNSServer(tmp_path_factory.mktemp("dns"))
    d.serve({})
    yield d
    d.stop()


@pytest.fixture(scope="module")
def api(legion_bin, tmp_path_factory, dns):
    procs = ProcessTracker()
    c = APICluster(legion_bin, tmp_path_factory.mktemp("api"), procs, resolver=f"127.0.0.1:{dns.port}")
    for i in range(c.size):
        c.start(i)
    c.wait_voters()
    for user, password in PASSWORDS.items():
        r = c.admin("customer", "add", user, "--password-stdin", stdin=password + "\n")
        assert r.returncode == 0, r.stderr
    assert c.admin("server", "add", "dedicated", "--address", "10.9.0.1", "--memory", "4096", "--storage", "40960",
                   "--owner", "alice").returncode == 0
    assert c.admin("server", "add", "shared", "--address", "10.9.0.2", "--memory", "8192", "--storage", "81920").returncode == 0
    assert c.admin("distro", "add", "bookworm", "--path", "bookworm").returncode == 0
    for name, customer, server in [("a1", "alice", "dedicated"), ("a2", "alice", "dedicated"), ("b1", "bob", "shared"),
                                   ("c1", "carol", "shared"), ("c2", "carol", "shared"), ("c3", "carol", "shared")]:
        r = c.admin("container", "add", name, "--customer", customer, "--server", server, "--memory", "128", "--storage", "1024")
        assert r.returncode == 0, r.stderr
    assert c.admin("domain", "add", "bob.example.org", "--customer", "bob").returncode == 0
    assert c.admin("news", "add", "public maintenance window", "--public").returncode == 0
    assert c.admin("news", "add", "customers only: new distro").returncode == 0
    c.uids = {row["name"]: row["uid"] for row in json.loads(c.admin("container", "list", "--json").stdout)}
    yield c
    procs.kill_all()


def uuid_of(api: APICluster, user: str) -> str:
    status, _, me = call(api.api[0], "GET", "/api/me", user=user)
    assert status == 200, me
    return me["uuid"]


def client(api: APICluster, user: str, node: int = 0) -> UwsgiItClient:
    return UwsgiItClient(user, PASSWORDS[user], api.url(node))


def ok(response):
    assert not response.uerror, f"{response.request.method} {response.url}: {response.status_code} {response.text}"
    return response.json() if response.text else None


# ------------------------------------------------------------------------------------------------ uwsgiit-py


def test_uwsgiit_py_every_client_method(api: APICluster, dns: DNSServer):
    c = client(api, "alice")
    a1, a2 = api.uids["a1"], api.uids["a2"]
    # profile and news
    assert [n["content"] for n in ok(c.news())] == ["customers only: new distro", "public maintenance window"]
    me = ok(c.me())
    assert me["containers"] == [a1, a2] and me["servers"] == ["10.9.0.1"]
    assert ok(c.update_me({"company": "Alice SRL", "vat": "IT123"}))["company"] == "Alice SRL"
    # containers and distros
    assert [x["uid"] for x in ok(c.containers())] == [a1, a2]
    detail = ok(c.container(a1))
    assert detail["ip"] == f"10.0.0.{a1 - 30000 + 2}" and detail["server_address"] == "10.9.0.1"
    distro = ok(c.distros())[0]
    assert distro["name"] == "bookworm"
    assert ok(c.container_set_distro(a1, distro["id"]))["distro_name"] == "bookworm"
    assert ok(c.container_set_keys(a1, ["ssh-ed25519 AAAAC3Nza alice@laptop"]))["ssh_keys"] == ["ssh-ed25519 AAAAC3Nza alice@laptop"]
    before = ok(c.container(a1))["last_reboot"]
    time.sleep(1.1)
    assert ok(c.reboot_container(a1))["last_reboot"] > before
    assert ok(c.update_container(a1, {"note": "web", "quota_threshold": 80, "alarm_freq": 120}))["quota_threshold"] == 80
    # tags
    ok(c.create_tag("prod"))
    tag = next(t for t in ok(c.list_tags()) if t["name"] == "prod")
    ok(c.update_container(a1, {"tags": ["prod"]}))
    assert [x["uid"] for x in ok(c.containers(tags=["prod"]))] == [a1]
    # domains (TXT checked through dnsmasq)
    dns.serve({"alice.example.com": f"uwsgi:{me['uuid']}"})
    created = ok(c.add_domain("alice.example.com"))
    assert created["message"] == "Created" and created["name"] == "alice.example.com"
    assert ok(c.update_domain(created["id"], {"tags": ["prod"], "note": "main"}))["tags"] == ["prod"]
    assert ok(c.domain(created["id"]))["note"] == "main"
    assert [d["name"] for d in ok(c.domains(tags=["prod"]))] == ["alice.example.com"]
    ok(c.delete_domain("alice.example.com"))
    assert ok(c.domains()) == []
    ok(c.delete_tag(tag["id"]))
    assert ok(c.list_tags()) == []
    # metrics: no samples collected for the day yet → empty lists
    assert ok(c.container_metric(a1, "cpu", {"year": 2026, "month": 1, "day": 2})) == []
    dns.serve({"m.example.com": f"uwsgi:{me['uuid']}"})
    domain_id = ok(c.add_domain("m.example.com"))["id"]
    assert ok(c.domain_metric(domain_id, "hits")) == []
    # loopboxes
    ok(c.create_loopbox(a1, "data.img", "data", readonly=True))
    box = ok(c.loopboxes(container=a1))[0]
    assert (box["filename"], box["mountpoint"], box["ro"]) == ("data.img", "data", True)
    ok(c.create_tag("disk"))
    assert ok(c.update_loopbox(box["id"], {"tags": ["disk"]}))["tags"] == ["disk"]
    assert ok(c.loopbox(box["id"]))["id"] == box["id"]
    assert [b["id"] for b in ok(c.loopboxes(tags=["disk"]))] == [box["id"]]
    ok(c.delete_loopbox(box["id"]))
    assert ok(c.loopboxes()) == []
    # alarms
    ok(c.create_alarm(a2, "disk almost full", {"level": 2, "color": "ff0000", "vassal": "app.ini", "line": 12}))
    key = ok(c.create_alarm_key(a2))["alarm_key"]
    keyed = UwsgiItClient("nobody", "wrong", api.url(1))
    assert not keyed.post(f"alarms/raise/{a2}", None, {"key": key}).uerror  # the key replaces credentials
    alarms = ok(c.alarms({"container": a2}))
    assert [a["msg"] for a in alarms][-1] == '"disk almost full"'  # uwsgiit-py JSON-encodes the message
    first = next(a for a in alarms if a["vassal"] == "app.ini")
    assert (first["level"], first["color"], first["line"]) == (2, "#ff0000", 12)
    assert ok(c.alarm(first["id"]))["id"] == first["id"]
    page = ok(c.alarms({"with_total": 1, "range": "1"}))
    assert page["total"] == 2 and len(page["alarms"]) == 1
    ok(c.delete_alarm(first["id"]))
    assert len(ok(c.alarms({"container": a2}))) == 1
    # the generic verbs
    assert ok(c.get("me"))["company"] == "Alice SRL"
    assert ok(c.post("tags", {"name": "generic"}))["name"] == "generic"
    tid = next(t["id"] for t in ok(c.list_tags()) if t["name"] == "generic")
    ok(c.delete(f"tags/{tid}"))
    # another node answers the same (every node serves the API from the replicated store)
    assert ok(client(api, "alice", node=2).me())["company"] == "Alice SRL"


# ------------------------------------------------------------------------------------------------ isolation


def test_no_route_crosses_customers(api: APICluster, dns: DNSServer):
    port = api.api[0]
    a1 = api.uids["a1"]
    bob_uid = api.uids["b1"]
    # alice's records to aim at
    s, _, tag = call(port, "POST", "/api/tags", {"name": "secret-tag"}, user="alice")
    assert s == 201
    s, _, _ = call(port, "POST", "/api/loopboxes", {"container": a1, "filename": "x.img", "mountpoint": "x"}, user="alice")
    assert s == 201
    box = call(port, "GET", f"/api/loopboxes?container={a1}", user="alice")[2][0]
    assert call(port, "POST", f"/api/alarms/raise/{a1}", raw=b"alice-only", user="alice")[0] == 201
    alarm = call(port, "GET", f"/api/alarms?container={a1}", user="alice")[2][0]
    dns.serve({"iso.example.com": f"uwsgi:{uuid_of(api, 'alice')}"})
    s, _, dom = call(port, "POST", "/api/domains", {"name": "iso.example.com"}, user="alice")
    assert s == 201
    before = call(port, "GET", f"/api/containers/{a1}", user="alice")[2]

    denied = [
        ("GET", f"/api/containers/{a1}", None), ("POST", f"/api/containers/{a1}", {"note": "pwned"}),
        ("POST", f"/api/containers/{a1}", {"reboot": 1}), ("GET", f"/api/containers/{a1}/domains", None),
        ("GET", f"/api/regenerate_secret_uuid/{a1}", None), ("GET", f"/api/custom_distros/{a1}", None),
        ("POST", f"/api/custom_distros/{a1}", {"name": "x", "path": "x"}),
        ("GET", f"/api/tags/{tag['id']}", None), ("POST", f"/api/tags/{tag['id']}", {"name": "mine"}),
        ("DELETE", f"/api/tags/{tag['id']}", None),
        ("GET", f"/api/domains/{dom['id']}", None), ("POST", f"/api/domains/{dom['id']}", {"note": "mine"}),
        ("DELETE", f"/api/domains/{dom['id']}", None), ("DELETE", "/api/domains", {"name": "iso.example.com"}),
        ("GET", f"/api/domains/{dom['id']}/containers", None),
        ("GET", f"/api/loopboxes/{box['id']}", None), ("POST", f"/api/loopboxes/{box['id']}", {"tags": []}),
        ("DELETE", f"/api/loopboxes/{box['id']}", None), ("GET", f"/api/loopboxes?container={a1}", None),
        ("POST", "/api/loopboxes", {"container": a1, "filename": "b.img", "mountpoint": "b"}),
        ("GET", f"/api/alarms/{alarm['id']}", None), ("DELETE", f"/api/alarms/{alarm['id']}", None),
        ("GET", f"/api/alarms?container={a1}", None), ("POST", f"/api/alarms/raise/{a1}", "x"),
        ("GET", f"/api/alarm_key/{a1}", None),
        ("GET", f"/api/metrics/container.cpu/{a1}", None), ("GET", f"/api/metrics/domain.hits/{dom['id']}", None),
        ("GET", "/api/portmappings/10.9.0.1", None),
        ("POST", "/api/portmappings/10.9.0.1", {"proto": "tcp", "public_port": 4000, "private_port": 4000, "container": bob_uid}),
        ("POST", "/api/containers", {"server": "10.9.0.1", "name": "sneaky", "memory": 64, "storage": 64}),
        ("POST", f"/api/containers/{bob_uid}", {"link": a1, "memory": 100}),
    ]
    for method, path, body in denied:
        raw = body.encode() if isinstance(body, str) else None
        s, _, answer = call(port, method, path, None if raw else body, raw=raw, user="bob")
        assert s in (403, 404), f"bob: {method} {path} -> {s} {answer}"
        assert "secret" not in json.dumps(answer) and "alice" not in json.dumps(answer), f"{method} {path} leaked {answer}"
    # bob's lists hold none of alice's records
    for path in ["/api/containers", "/api/tags", "/api/domains", "/api/loopboxes", "/api/alarms", "/api/custom_distros", "/api/me"]:
        s, _, answer = call(port, "GET", path, user="bob")
        assert s == 200, (path, answer)
        text = json.dumps(answer)
        assert str(a1) not in text and "secret-tag" not in text and "iso.example.com" not in text and "x.img" not in text, (path, text)
    # and nothing of alice's changed
    after = call(port, "GET", f"/api/containers/{a1}", user="alice")[2]
    assert after == before
    assert call(port, "GET", f"/api/tags/{tag['id']}", user="alice")[2]["name"] == "secret-tag"
    assert call(port, "GET", f"/api/alarms/{alarm['id']}", user="alice")[0] == 200
    assert call(port, "GET", f"/api/loopboxes/{box['id']}", user="alice")[0] == 200
    assert call(port, "GET", f"/api/domains/{dom['id']}", user="alice")[0] == 200
    # a link is two-sided: bob may link his own container to alice's (his side only), never hers to his
    s, _, linked = call(port, "POST", f"/api/containers/{bob_uid}", {"link": a1}, user="bob")
    assert s == 200 and linked["linked_to"] == [a1]
    assert call(port, "GET", f"/api/containers/{a1}", user="alice")[2]["linked_to"] == []


# ------------------------------------------------------------------------------------------------ domains / DNS


def test_domain_ownership_is_checked_through_dns(api: APICluster, dns: DNSServer):
    port = api.api[1]
    carol = uuid_of(api, "carol")
    dns.serve({"carol.example.net": f"uwsgi:{carol}", "wrong.example.net": "uwsgi:00000000-0000-0000-0000-000000000000",
               "other.example.net": "v=spf1 -all"})
    # no record at all, a record for someone else, an unrelated TXT → 403 with what to add
    for name in ["nothing.example.net", "wrong.example.net", "other.example.net"]:
        s, _, body = call(port, "POST", "/api/domains", {"name": name}, user="carol")
        assert s == 403 and f"uwsgi:{carol}" in body["reason"], (name, s, body)
    # a record on the parent proves every subdomain
    s, _, body = call(port, "POST", "/api/domains", {"name": "www.carol.example.net"}, user="carol")
    assert s == 201 and body["name"] == "www.carol.example.net", body
    # a wildcard (leading dot) is checked on its bare name
    s, _, body = call(port, "POST", "/api/domains", {"name": ".carol.example.net"}, user="carol")
    assert s == 201, body
    # taken by anyone → 409, before any DNS lookup
    s, _, body = call(port, "POST", "/api/domains", {"name": "bob.example.org"}, user="carol")
    assert s == 409, body
    # the resolver down → 403 saying so, nothing stored
    dns.stop()
    s, _, body = call(port, "POST", "/api/domains", {"name": "x.carol.example.net"}, user="carol", timeout=15)
    assert s == 403 and "could not be checked" in body["reason"], body
    dns.serve({})
    names = [d["name"] for d in call(port, "GET", "/api/domains", user="carol")[2]]
    assert names == [".carol.example.net", "www.carol.example.net"]


# ------------------------------------------------------------------------------------------------ bugs and bad input


def test_uwsgi_it_known_bugs_are_fixed(api: APICluster):
    port = api.api[0]
    a1, a2 = api.uids["a1"], api.uids["a2"]
    # §2.1: a ':' in the password (uwsgi.it split on every ':' → 500)
    assert call(port, "GET", "/api/me", user="colon")[0] == 200
    # hex headers instead of Basic auth
    hexed = {"X-uwsgi-it-username": "colon".encode().hex(), "X-uwsgi-it-password": PASSWORDS["colon"].encode().hex()}
    assert call(port, "GET", "/api/me", headers=hexed)[0] == 200
    # §2.1: no Content-Length (chunked body) → handled (uwsgi.it: 500)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    auth = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
    conn.request("POST", "/api/tags", body=iter([b'{"name": ', b'"chunked"}']),
                 headers={"Authorization": "Basic " + auth})  # an iterable body: http.client sends it chunked
    r = conn.getresponse()
    assert r.status == 201, r.read()
    conn.close()
    # #1 regenerate_secret_uuid works (uwsgi.it: always 403)
    s, _, body = call(port, "POST", f"/api/regenerate_secret_uuid/{a1}", user="alice")
    assert s == 200 and call(port, "GET", f"/api/containers/{a1}", user="alice")[2]["secret_uuid"] == body["secret_uuid"]
    # #2 POST custom_distro/<id> updates (uwsgi.it: crash)
    assert call(port, "POST", f"/api/containers/{a2}", {"custom_distros_storage": True}, user="alice")[0] == 200
    s, _, created = call(port, "POST", f"/api/custom_distros/{a2}", {"name": "mine", "path": "mine-1"}, user="alice")
    assert s == 201, created
    s, _, cd = call(port, "POST", f"/api/custom_distro/{created['id']}", {"note": "renamed", "name": "mine2"}, user="alice")
    assert s == 200 and (cd["name"], cd["note"]) == ("mine2", "renamed"), cd
    assert [d["id"] for d in call(port, "GET", f"/api/custom_distros/{a1}", user="alice")[2]] == [created["id"]]
    # #5 not enough memory → 409, not 200
    s, _, body = call(port, "POST", "/api/containers", {"server": "10.9.0.1", "name": "huge", "memory": 999999, "storage": 10}, user="alice")
    assert s == 409 and body["reason"] == "not enough memory", body
    s, _, body = call(port, "POST", "/api/containers", {"server": "10.9.0.1", "name": "small", "memory": 64, "storage": 64}, user="alice")
    assert s == 201 and body["uid"] > a2, body
    # #6 loopbox path rules on the API
    for filename, mountpoint in [("../etc/passwd", "m"), ("/abs.img", "m"), ("ok.img", "etc"), ("a//b", "m"), ("ok.img", "x/./y"),
                                 ("x" * 65, "m"), ("ok.img", "logs")]:
        s, _, body = call(port, "POST", "/api/loopboxes", {"container": a1, "filename": filename, "mountpoint": mountpoint}, user="alice")
        assert s == 403 and body.get("reason"), (filename, mountpoint, s, body)
    # #7 a container with two matching tags is listed once
    for t in ["t1", "t2"]:
        call(port, "POST", "/api/tags", {"name": t}, user="alice")
    call(port, "POST", f"/api/containers/{a1}", {"tags": ["t1", "t2"]}, user="alice")
    assert [c["uid"] for c in call(port, "GET", "/api/containers?tags=t1,t2", user="alice")[2]] == [a1]
    # #8 alarm ranges are numeric: 9-10 is one alarm, 10-9 too; malformed → 416
    for i in range(12):
        call(port, "POST", f"/api/alarms/raise/{a2}?unix={1700000000 + i}", raw=f"r{i}".encode(), user="alice")
    s, _, page = call(port, "GET", f"/api/alarms?container={a2}&range=9-10", user="alice")
    assert s == 200 and len(page) == 1, page
    s, _, rev = call(port, "GET", f"/api/alarms?container={a2}&range=3-1", user="alice")
    fwd = call(port, "GET", f"/api/alarms?container={a2}&range=1-3", user="alice")[2]
    assert [a["id"] for a in rev] == [a["id"] for a in reversed(fwd)] and len(fwd) == 2
    for bad in ["6-a", "6-", "-a", "a", ""]:
        assert call(port, "GET", f"/api/alarms?range={bad}", user="alice")[0] == 416, bad
    # level 0 is the system's
    assert call(port, "POST", f"/api/alarms/raise/{a2}?level=0", raw=b"x", user="alice")[0] == 403
    assert call(port, "POST", f"/api/alarms/raise/{a2}?color=zzz", raw=b"x", user="alice")[0] == 409
    # a distro that does not exist → 403 (uwsgi.it: 500)
    assert call(port, "POST", f"/api/containers/{a1}", {"distro": 987654}, user="alice")[0] == 403
    # memory on a shared server → 403 with the reason (uwsgi.it ignored it silently)
    s, _, body = call(port, "POST", f"/api/containers/{api.uids['b1']}", {"memory": 64}, user="bob")
    assert s == 403 and "own" in body["reason"]


def test_bad_input_is_a_4xx_with_a_reason_and_writes_nothing(api: APICluster):
    port = api.api[2]
    a1 = api.uids["a1"]
    before = call(port, "GET", f"/api/containers/{a1}", user="alice")[2]
    cases = [
        (b"{not json", 400), (b"[1, 2]", 400), (b"", 400), (b'"text"', 400),
        (json.dumps({"note": 5}).encode(), 400), (json.dumps({"quota_threshold": "high"}).encode(), 400),
        (json.dumps({"quota_threshold": 101}).encode(), 400), (json.dumps({"nofollow": "yes"}).encode(), 400),
        (json.dumps({"tags": "prod"}).encode(), 400), (json.dumps({"tags": [1]}).encode(), 400),
        (json.dumps({"note": "ok", "memroy": 1}).encode(), 400), (json.dumps({"ssh_keys": ["a\nb"]}).encode(), 400),
        (json.dumps({"alarm_freq": 10}).encode(), 400), (json.dumps({"name": "x" * 300}).encode(), 400),
        (json.dumps({"note": "x" * 70000}).encode(), 413),
    ]
    for raw, expected in cases:
        s, _, body = call(port, "POST", f"/api/containers/{a1}", raw=raw, user="alice")
        assert s == expected and body["error"] and (expected == 413 or body.get("reason")), (raw[:40], s, body)
    # the unknown field is named, with what is accepted
    s, _, body = call(port, "POST", f"/api/containers/{a1}", {"note": "ok", "memroy": 1}, user="alice")
    assert "memroy" in body["reason"] and "memory" in body["reason"]
    # path tricks in ids → 404/403, never 5xx
    for path in ["/api/containers/..%2f..%2fetc", "/api/containers/-1", "/api/containers/99999999999999999999",
                 "/api/tags/abc", "/api/alarms/1e3", "/api/loopboxes/%00", "/api/containers/30001%20OR%201=1"]:
        s, _, body = call(port, "GET", path, user="alice")
        assert 400 <= s < 500, (path, s, body)
    after = call(port, "GET", f"/api/containers/{a1}", user="alice")[2]
    assert after == before, "a rejected request changed the container"
    # every answer is JSON with CORS; OPTIONS answers the preflight
    s, headers, _ = call(port, "OPTIONS", "/api/containers")
    assert s == 200 and "X-uwsgi-it-username" in headers["access-control-allow-headers"]
    s, headers, _ = call(port, "GET", "/api/me", user="alice")
    assert headers["access-control-allow-origin"] == "*" and headers["content-type"] == "application/json"
    # news: anonymous → public only
    assert [n["content"] for n in call(port, "GET", "/api/news")[2]] == ["public maintenance window"]


# ------------------------------------------------------------------------------------------------ auth


def test_failed_logins_are_rate_limited_and_the_credential_cache_follows_password_changes(api: APICluster):
    port = api.api[1]
    assert api.admin("customer", "add", "target", "--password-stdin", stdin="target-pass-1\n").returncode == 0
    t0 = time.time()
    assert call(port, "GET", "/api/me", user="target", password="target-pass-1")[0] == 200
    first = time.time() - t0
    t0 = time.time()
    for _ in range(20):
        assert call(port, "GET", "/api/me", user="target", password="target-pass-1")[0] == 200
    cached = (time.time() - t0) / 20
    assert cached < first / 3, f"verified credentials are not cached: first {first * 1000:.0f} ms, then {cached * 1000:.1f} ms each"
    # a password change (through the API) invalidates the old one at once, on every node
    s, _, _ = call(port, "POST", "/api/me", {"password": "target-pass-2"}, user="target", password="target-pass-1")
    assert s == 200
    for node in range(3):
        assert call(api.api[node], "GET", "/api/me", user="target", password="target-pass-1")[0] == 401
        assert call(api.api[node], "GET", "/api/me", user="target", password="target-pass-2")[0] == 200
    # guessing: 10 failures for one user → 429 with Retry-After, even with the right password, on that node
    statuses = [call(port, "GET", "/api/me", user="target", password=f"guess-{i}")[0] for i in range(12)]
    assert statuses[:8] == [401] * 8 and statuses[-1] == 429, statuses
    s, headers, body = call(port, "GET", "/api/me", user="target", password="target-pass-2")
    assert s == 429 and int(headers["retry-after"]) >= 1 and "retry" in body["reason"]
    # other customers are not affected
    assert call(port, "GET", "/api/me", user="carol")[0] == 200
    # the password never reaches the logs
    for i in range(3):
        log = (api.data_dir(i) / "stdout.log").read_text(errors="replace")
        assert "target-pass" not in log and "guess-1" not in log


# ------------------------------------------------------------------------------------------------ failover


def test_api_writes_survive_a_store_leader_kill_and_a_lord_kill(api: APICluster):
    containers = [api.uids["c1"], api.uids["c2"], api.uids["c3"]]
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            msg = f"w{w}-{n}"
            rid = f"kill-{msg}"
            deadline = time.time() + 30
            node = (w + n) % 3
            while True:
                try:
                    s, _, body = call(api.api[node], "POST", f"/api/alarms/raise/{containers[n % 3]}", raw=msg.encode(), user="carol",
                                      headers={"X-Request-Id": rid}, timeout=5)
                    if s == 201:
                        with lock:
                            acked.append(msg)
                        break
                    if s not in (503, 429):
                        errors.append(f"{msg}: {s} {body}")
                        break
                except OSError:
                    pass
                if time.time() > deadline:
                    errors.append(f"{msg}: no node acknowledged within 30 s")
                    break
                node = (node + 1) % 3
                time.sleep(0.05)
            n += 1

    # each container keeps 100 alarms: make room for the whole stream
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        leader = api.leader_index()
        assert leader is not None
        api.kill(leader)
        time.sleep(2.5)
        api.start(leader)
        api.wait_voters()
        lord = next(i for i in range(3) if (api.api_status(i) or {}).get("lord"))
        api.kill(lord)
        time.sleep(2.5)
        api.start(lord)
        api.wait_voters()
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:5]
    assert len(acked) > 50, f"only {len(acked)} writes acknowledged"
    r = api.cli("store", "query", "--store", api.addresses, "--json",
                "SELECT msg, count(*) AS n FROM alarms WHERE msg LIKE 'w%-%' GROUP BY msg")
    assert r.returncode == 0, r.stderr
    counts = {row["msg"]: row["n"] for row in json.loads(r.stdout)}
    cap_evicted = [m for m in acked if m not in counts]
    # a container keeps its newest 100 alarms: only the oldest of a very long stream may be gone
    assert len(cap_evicted) <= max(0, len(acked) - 300), f"acknowledged alarms missing: {cap_evicted[:5]}"
    assert all(n == 1 for n in counts.values()), {m: n for m, n in counts.items() if n != 1}
    print(f"\n{len(acked)} API writes acknowledged across a leader kill and a Lord kill; each present once")


# ------------------------------------------------------------------------------------------------ OpenAPI


def test_openapi_document_holds_against_a_live_node(api: APICluster, tmp_path: Path):
    """schemathesis (PyPI) generates requests from /api/openapi.json for every operation and checks every answer:
    no 5xx, every body valid against its documented schema, for a bounded number of examples per operation."""
    port = api.api[0]
    s, _, doc = call(port, "GET", "/api/openapi.json")
    assert s == 200 and doc["openapi"].startswith("3.1")
    operations = sum(len(v) for v in doc["paths"].values())
    assert operations >= 50, operations
    # a customer of its own, with a dedicated server, so fuzzing reaches real records without touching others'
    PASSWORDS["fuzz"] = "fuzz-secret-9"
    assert api.admin("customer", "add", "fuzz", "--password-stdin", stdin="fuzz-secret-9\n").returncode == 0
    assert api.admin("server", "add", "fuzzbox", "--address", "10.9.0.9", "--memory", "100000", "--storage", "1000000",
                     "--owner", "fuzz").returncode == 0
    assert api.admin("container", "add", "f1", "--customer", "fuzz", "--server", "fuzzbox", "--memory", "64", "--storage", "64").returncode == 0
    st = shutil.which("st") or shutil.which("schemathesis")
    assert st, "schemathesis is missing: scripts/setup --test installs it"
    auth = base64.b64encode(b"fuzz:fuzz-secret-9").decode()
    r = subprocess.run([st, "run", f"http://127.0.0.1:{port}/api/openapi.json", "--url", f"http://127.0.0.1:{port}",
                        "--checks", "not_a_server_error,response_schema_conformance", "--max-examples", "15",
                        "--generation-deterministic", "-H", f"Authorization: Basic {auth}"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = r.stdout[-3000:]
    assert r.returncode == 0, summary
    assert " passed" in summary and "failed" not in summary.split("Test cases:")[-1].split("Seed")[0], summary
    print("\n" + "\n".join(line for line in summary.splitlines() if "generated" in line or "Tested" in line))
    # the store is still whole: other customers' records untouched, the node still answers
    assert call(port, "GET", "/api/me", user="bob")[0] == 200


# ------------------------------------------------------------------------------------------------ admin API


def test_admin_api_with_operator_tokens_matches_legion_admin(api: APICluster):
    port = api.api[2]
    r = api.admin("token", "add", "ops-bot")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("lgn_") and len(token) == 68
    bearer = {"Authorization": f"Bearer {token}"}
    # no token, a wrong token, customer credentials: 401
    s, headers, body = call(port, "GET", "/admin/customers")
    assert s == 401 and headers["www-authenticate"].startswith("Bearer") and "token add" in body["reason"]
    assert call(port, "GET", "/admin/customers", headers={"Authorization": "Bearer lgn_" + "0" * 64})[0] == 401
    assert call(port, "GET", "/admin/customers", user="alice")[0] == 401
    # the token is stored hashed only
    r = api.cli("store", "query", "--store", api.addresses, "--json", "SELECT token_sha256 FROM operator_tokens")
    assert token not in r.stdout and len(json.loads(r.stdout)[0]["token_sha256"]) == 64
    # a customer made through the admin API logs into the customer API
    s, _, body = call(port, "POST", "/admin/customers", {"username": "dave", "password": "dave-secret-1", "email": "d@example.com"}, headers=bearer)
    assert s == 201 and body["message"] == "customer dave added", body
    PASSWORDS["dave"] = "dave-secret-1"
    assert call(api.api[0], "GET", "/api/me", user="dave")[2]["email"] == "d@example.com"
    # the same request id again: applied once, reported as a replay
    s, _, again = call(port, "POST", "/admin/customers", {"username": "erin", "password": "erin-secret-1"},
                       headers={**bearer, "X-Request-Id": "admin-erin-1"})
    s2, _, replay = call(port, "POST", "/admin/customers", {"username": "erin", "password": "erin-secret-1"},
                         headers={**bearer, "X-Request-Id": "admin-erin-1"})
    assert (s, again["replayed"], s2, replay["replayed"]) == (201, False, 201, True)
    # placement: a container with a legion and no server goes to the legion server with the most free memory
    for name, address, memory in [("p1", "10.8.0.1", 1000), ("p2", "10.8.0.2", 3000)]:
        assert call(port, "POST", "/admin/servers", {"name": name, "address": address, "memory": memory, "storage": 100000},
                    headers=bearer)[0] == 201
    assert call(port, "POST", "/admin/legions", {"name": "pl", "address": "10.8.0.100", "nodes": ["p1", "p2"]}, headers=bearer)[0] == 201
    placed = []
    for i in range(3):
        s, _, body = call(port, "POST", "/admin/containers", {"name": f"pc{i}", "customer": "dave", "legion": "pl", "memory": 1000, "storage": 10},
                          headers=bearer)
        assert s == 201, body
        placed.append(body["server"])
    assert placed == ["p2", "p2", "p1"], placed  # free: p1 1000, p2 3000 → 2000 → 1000 (a tie goes by name)
    s, _, body = call(port, "POST", "/admin/containers", {"name": "toobig", "customer": "dave", "legion": "pl", "memory": 5000, "storage": 10},
                      headers=bearer)
    assert s == 409 and "no server of legion pl" in body["reason"]
    # what the API made, `legion admin` lists, and the other way round
    cli = {row["name"]: row for row in json.loads(api.admin("container", "list", "--json").stdout)}
    assert {"pc0", "pc1", "pc2"} <= set(cli)
    assert api.admin("news", "add", "from the cli").returncode == 0
    assert any(n["content"] == "from the cli" for n in call(port, "GET", "/admin/news", headers=bearer)[2])
    # errors name the problem
    s, _, body = call(port, "POST", "/admin/servers", {"name": "p1", "address": "10.8.0.9", "memory": 1, "storage": 1}, headers=bearer)
    assert s == 409 and "already exists" in body["reason"]
    s, _, body = call(port, "POST", "/admin/containers", {"name": "x", "customer": "dave", "memory": 1, "storage": 1}, headers=bearer)
    assert s == 400 and "legion" in body["reason"]
    uid = cli["pc2"]["uid"]
    assert call(port, "POST", f"/admin/containers/{uid}/resize", {"memory": 100}, headers=bearer)[0] == 200
    assert call(port, "DELETE", f"/admin/containers/{uid}", headers=bearer)[0] == 200
    assert "pc2" not in {row["name"] for row in json.loads(api.admin("container", "list", "--json").stdout)}
    # a revoked token stops working at once
    assert api.admin("token", "delete", "ops-bot").returncode == 0
    assert call(port, "GET", "/admin/customers", headers=bearer)[0] == 401


def metric(port: int, name: str) -> int:
    s, _, text = call(port, "GET", "/metrics")
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return 0


def test_writes_on_any_node_are_committed_by_the_store_leaders_writer(api: APICluster):
    """One group-commit writer for the cluster: a node that is not the store leader's sends API writes (signed with the
    legion secret) to the leader's node, so concurrent writes from every node share its batches."""
    leader = api.leader_index()
    assert leader is not None
    follower = (leader + 1) % 3
    before = {i: metric(api.api[i], "legion_api_writes_total") for i in range(3)}
    for i in range(20):
        s, _, body = call(api.api[follower], "POST", "/api/tags", {"name": f"fwd-{i}"}, user="carol")
        assert s == 201, body
    after = {i: metric(api.api[i], "legion_api_writes_total") for i in range(3)}
    assert after[leader] - before[leader] >= 20, (before, after)
    assert after[follower] - before[follower] == 0, (before, after)
    # the internal endpoint refuses unsigned and forged writes
    forged = {"requestID": "x", "statements": [{"sql": "DELETE FROM customers", "params": []}]}
    assert call(api.api[leader], "POST", "/.legion/store/write", forged)[0] == 403
    assert call(api.api[leader], "POST", "/.legion/store/write", forged, headers={"X-Legion-Signature": "00" * 32})[0] == 403
    assert call(api.api[0], "GET", "/api/me", user="alice")[0] == 200


def test_port_mappings_relation_routes_and_containers_on_an_owned_server(api: APICluster):
    port = api.api[1]
    a1, a2 = api.uids["a1"], api.uids["a2"]
    s, _, body = call(port, "POST", "/api/portmappings/10.9.0.1", {"proto": "tcp", "public_port": 4000, "private_port": 8080, "container": a1},
                      user="alice")
    assert s == 201, body
    s, _, listed = call(port, "GET", "/api/portmappings/10.9.0.1", user="alice")
    assert s == 200 and [(m["public_port"], m["private_port"], m["container"], m["container_ip"]) for m in listed] == \
        [(4000, 8080, a1, f"10.0.0.{a1 - 30000 + 2}")]
    # the public port is the server's: another container cannot take it (uwsgi.it checked per container only)
    s, _, body = call(port, "POST", "/api/portmappings/10.9.0.1", {"proto": "tcp", "public_port": 4000, "private_port": 9090, "container": a2},
                      user="alice")
    assert s == 409, body
    assert call(port, "POST", "/api/portmappings/10.9.0.1", {"proto": "udp", "public_port": 4000, "private_port": 9090, "container": a2},
                user="alice")[0] == 201
    for bad in [{"proto": "sctp", "public_port": 4001, "private_port": 8080, "container": a1},
                {"proto": "tcp", "public_port": 3022, "private_port": 8080, "container": a1},
                {"proto": "tcp", "public_port": 80, "private_port": 8080, "container": a1},
                {"proto": "tcp", "public_port": 4002, "private_port": 8080, "container": api.uids["b1"]}]:
        assert call(port, "POST", "/api/portmappings/10.9.0.1", bad, user="alice")[0] == 403, bad
    s, _, _ = call(port, "DELETE", "/api/portmappings/10.9.0.1", {"id": listed[0]["id"]}, user="alice")
    assert s == 200
    assert [m["proto"] for m in call(port, "GET", "/api/portmappings/10.9.0.1", user="alice")[2]] == ["udp"]
    # a container made by the customer on their own server (me/containers is the same view)
    s, _, made = call(port, "POST", "/api/me/containers", {"server": "10.9.0.1", "name": "mine", "memory": 32, "storage": 32}, user="alice")
    assert s == 201, made
    assert made["uid"] in [c["uid"] for c in call(port, "GET", "/api/me/containers", user="alice")[2]]
    # the "today" relation routes: no per-container hits recorded yet → empty, yours only
    s, _, doms = call(port, "GET", f"/api/containers/{a1}/domains", user="alice")
    assert (s, doms) == (200, [])
    dom = call(port, "GET", "/api/domains", user="alice")[2]
    if dom:
        assert call(port, "GET", f"/api/domains/{dom[0]['id']}/containers", user="alice")[:3:2] == (200, [])
