"""Container networking (`[hosting] network = "routed"`) on lab-3 in the namespace lab (root; CI runs as root):
three `legion node`s, each in its own lab namespace (scripts/netlab up 3), run runc containers with the store's
addresses (10.0.0.0 | id+2). Probes run inside the containers, as a customer's app would try:

- two containers cannot reach each other until **both** linked each other (a one-sided link is not enough),
  then they can both ways, on one node and across nodes (routed via the peer's server address), and the peer
  sees the container's own address; an unlink closes it again, live;
- a container reaches the "internet" (the lab client) masqueraded as its node, but not the node's store, API or
  Legion ports (only the router's); it cannot change its address;
- a port mapping made through the customer API makes the container reachable from outside (DNAT);
- a removed container leaves no namespace, veth or firewall element behind.
Nothing is created in the root network namespace.
"""
from __future__ import annotations

import base64
from collections import Counter
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import ul
from test_hosting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the namespace lab and runc need root (CI runs as root)")

NODES = {"n1": "10.251.0.11", "n2": "10.251.0.12", "n3": "10.251.0.13"}
STORE = ",".join(f"{a}:17300" for a in NODES.values())
CLIENT = "10.251.0.50"

PROBE = r"""
import json, os, socket, subprocess, urllib.parse, urllib.request
def tcp(target):
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(1.5)
    try:
        s.connect((host, int(port)))
        return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
def fetch(target):
    try:
        with urllib.request.urlopen("http://%s/whoami" % target, timeout=1.5) as r:
            return r.read().decode()
    except Exception as e:
        return "failed: %s" % type(e).__name__
def application(env, start_response):
    q = urllib.parse.parse_qs(env.get("QUERY_STRING", ""))
    path = env.get("PATH_INFO")
    if path == "/tcp":
        out = tcp(q["to"][0])
    elif path == "/fetch":
        out = fetch(q["to"][0])
    elif path == "/setip":
        p = subprocess.run(["ip", "addr", "add", "10.0.0.250/32", "dev", "eth0"], capture_output=True, text=True)
        out = "%d %s" % (p.returncode, p.stderr.strip())
    else:
        out = env.get("REMOTE_ADDR", "?")
    body = out.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

INTERNET = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("10.251.0.50", 9000), H).serve_forever()
"""


def lab(node: str, *argv: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", "netns", "exec", f"lg-{node}", *argv], capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{node}: {' '.join(argv)}: {p.stdout}{p.stderr}"
    return p


def ip_of(uid: int) -> str:
    return f"10.0.0.{uid - 30000 + 2}"


class Lab:
    def __init__(self, legion: Path, repo: Path, run_dir: Path):
        self.legion, self.repo, self.run_dir = legion, repo, run_dir
        self.nodes: dict[str, subprocess.Popen] = {}

    def admin(self, *args: str, stdin: str | None = None) -> str:
        p = subprocess.run(["ip", "netns", "exec", "lg-c", str(self.legion), "admin", *args, "--store", STORE], cwd=self.repo,
                           input=stdin, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"legion admin {' '.join(args)} failed: {p.stdout}{p.stderr}"
        return p.stdout

    def api(self, method: str, path: str, body: dict | None = None, user: str = "hoster") -> tuple[int, object]:
        auth = base64.b64encode(f"{user}:{user}-password-1".encode()).decode()
        argv = ["curl", "-s", "-m", "10", "-o", "-", "-w", "\n%{http_code}", "-X", method, "-H", f"Authorization: Basic {auth}",
                f"http://{NODES['n2']}:17200{path}"]
        if body is not None:
            argv[1:1] = ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        p = lab("c", *argv)
        text, _, code = p.stdout.rpartition("\n")
        try:
            return int(code or 0), json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return int(code or 0), text

    def containers(self) -> dict[str, int]:
        return {c["name"]: c["uid"] for c in json.loads(self.admin("container", "list", "--json"))}

    def home(self, node: str, uid: int) -> Path:
        return self.run_dir / node / "c" / str(uid)

    def log(self, node: str) -> str:
        """The node's log; a crash's first lines (its reason) are kept in front of the tail."""
        text = (self.run_dir / f"{node}.log").read_text(errors="replace")
        crash = [line for line in text.splitlines() if "Fatal error" in line or "crashed" in line or "precondition" in line]
        return ("\n".join(crash[:5]) + "\n...\n" if crash else "") + text

    def probe(self, node: str, uid: int, path: str) -> str:
        """GET path from the container's probe app, from its node (the host reaches its containers)."""
        p = lab(node, "curl", "-s", "-m", "6", f"http://{ip_of(uid)}:8000{path}")
        return p.stdout if p.returncode == 0 else f"curl exit {p.returncode}"

    def fetch(self, node: str, uid: int, to: str) -> str:
        return self.probe(node, uid, "/fetch?to=" + urllib.parse.quote(to))

    def tcp(self, node: str, uid: int, to: str) -> str:
        return self.probe(node, uid, "/tcp?to=" + urllib.parse.quote(to))


def node_config(repo: Path, name: str, run_dir: Path, seccomp: Path) -> Path:
    text = (repo / "cluster-configs" / "lab-3" / f"{name}.toml").read_text()
    text = text.replace(f'data_dir = "../../run/lab-3/{name}"', f'data_dir = "{run_dir / name}"')
    text += (f'\n[hosting]\nruntime = "runc"\nnetwork = "routed"\nseccomp = "{seccomp}"\nuwsgi = "uwsgi"\n'
             f'containers_dir = "{run_dir / name / "c"}"\n')
    path = run_dir / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def net_lab(legion_bin, repo_root):
    ul.ensure_uwsgi_python3()
    if shutil.which("runc") is None:
        subprocess.run([str(repo_root / "scripts" / "setup"), "--test"], check=True)
    netlab = str(repo_root / "scripts" / "netlab")
    subprocess.run([netlab, "deps"], check=True, timeout=600)
    subprocess.run([netlab, "down"], capture_output=True, timeout=60)
    subprocess.run([netlab, "up", "3"], check=True, capture_output=True, timeout=60)
    run_dir = Path(tempfile.mkdtemp(prefix="lcn", dir="/tmp"))
    run_dir.chmod(0o755)
    seccomp = run_dir / "seccomp.json"
    subprocess.run([str(repo_root / "scripts" / "make-seccomp"), str(seccomp)], check=True, capture_output=True, timeout=120)
    lab_ = Lab(legion_bin, repo_root, run_dir)
    internet = subprocess.Popen(["ip", "netns", "exec", "lg-c", "python3", "-c", INTERNET])
    try:
        for name in NODES:
            cfg = node_config(repo_root, name, run_dir, seccomp)
            (run_dir / name).mkdir()
            log = open(run_dir / f"{name}.log", "w")
            # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts runc needs.
            lab_.nodes[name] = subprocess.Popen(["nsenter", f"--net=/run/netns/lg-{name}", str(legion_bin), "node", "--config", str(cfg)],
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert wait_for(lambda: subprocess.run(["ip", "netns", "exec", "lg-c", str(legion_bin), "admin", "customer", "list", "--store", STORE],
                                               capture_output=True, timeout=20).returncode == 0, 60), lab_.log("n1")[-3000:]
        lab_.admin("customer", "add", "hoster", "--password-stdin", stdin="hoster-password-1\n")
        lab_.admin("customer", "add", "other", "--password-stdin", stdin="other-password-1\n")
        for name, address in NODES.items():
            owner = ["--owner", "hoster"] if name == "n2" else []
            lab_.admin("server", "add", name, "--address", address, "--memory", "4096", "--storage", "40960", *owner)
        for name, server, customer in (("a", "n2", "hoster"), ("b", "n2", "hoster"), ("c", "n3", "hoster"), ("d", "n2", "other")):
            lab_.admin("container", "add", name, "--customer", customer, "--server", server, "--memory", "128", "--storage", "256")
        uids = lab_.containers()
        for name, node in (("a", "n2"), ("b", "n2"), ("c", "n3"), ("d", "n2")):
            drop_probe(lab_, node, uids[name])
        for name, node in (("a", "n2"), ("b", "n2"), ("c", "n3"), ("d", "n2")):
            assert wait_for(lambda: lab_.probe(node, uids[name], "/whoami") == "10.0.0.1", 30), \
                f"{name}: {lab_.probe(node, uids[name], '/whoami')}\n{lab_.log(node)[-3000:]}"
        yield lab_
    finally:
        for p in lab_.nodes.values():
            p.terminate()
        for p in lab_.nodes.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        internet.kill()
        for cid in subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.split():
            if cid.startswith("legion-n"):
                subprocess.run(["runc", "delete", "--force", cid], capture_output=True)
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(str(run_dir) + "/"):
                subprocess.run(["umount", "-l", point], capture_output=True)
        for ns in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            if ns.startswith("legion-n"):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run([netlab, "down"], capture_output=True, timeout=60)
        shutil.rmtree(run_dir, ignore_errors=True)


def drop_probe(lab_: Lab, node: str, uid: int) -> None:
    home = lab_.home(node, uid)
    assert wait_for(lambda: (home / "vassals").is_dir(), 30), lab_.log(node)[-3000:]
    (home / "probe.py").write_text(PROBE)
    os.chown(home / "probe.py", uid, uid)
    tmp = home / ".probe.tmp"
    tmp.write_text(f"[uwsgi]\nplugin = python3\nhttp-socket = 0.0.0.0:8000\nchdir = {home}\nmodule = probe\nprocesses = 1\n")
    os.chown(tmp, uid, uid)
    tmp.rename(home / "vassals" / "probe.ini")


def test_links_open_both_ways_only_when_both_sides_linked_on_one_node_and_across_nodes(net_lab: Lab):
    lab_ = net_lab
    u = lab_.containers()
    a, b, c, d = u["a"], u["b"], u["c"], u["d"]
    # No links: a container reaches no other one, on its node or another.
    assert lab_.fetch("n2", a, f"{ip_of(b)}:8000").startswith("failed"), "a reached b without a link"
    assert lab_.fetch("n2", a, f"{ip_of(c)}:8000").startswith("failed"), "a reached c (other node) without a link"
    assert lab_.fetch("n2", d, f"{ip_of(a)}:8000").startswith("failed"), "another customer's container reached a"
    # One side only: still closed (uwsgi.it: both must link).
    assert lab_.api("POST", f"/api/containers/{a}", {"link": b})[0] == 200
    assert lab_.api("POST", f"/api/containers/{a}", {"link": c})[0] == 200
    time.sleep(1.5)
    assert wait_for(lambda: lab_.probe("n2", a, "/whoami") == "10.0.0.1", 30)   # a link reboots the container (uwsgi.it)
    assert lab_.fetch("n2", a, f"{ip_of(b)}:8000").startswith("failed"), "a one-sided link opened a → b"
    # Both sides: open both ways, and the peer sees the container's own address.
    assert lab_.api("POST", f"/api/containers/{b}", {"link": a})[0] == 200
    assert lab_.api("POST", f"/api/containers/{c}", {"link": a})[0] == 200
    assert wait_for(lambda: lab_.fetch("n2", a, f"{ip_of(b)}:8000") == ip_of(a), 30), lab_.fetch("n2", a, f"{ip_of(b)}:8000")
    assert wait_for(lambda: lab_.fetch("n2", b, f"{ip_of(a)}:8000") == ip_of(b), 30), lab_.fetch("n2", b, f"{ip_of(a)}:8000")
    # Across nodes: a on n2, c on n3, routed through the servers' addresses.
    assert wait_for(lambda: lab_.fetch("n2", a, f"{ip_of(c)}:8000") == ip_of(a), 30), \
        (lab_.fetch("n2", a, f"{ip_of(c)}:8000"), lab("n2", "ip", "route").stdout, lab_.log("n2")[-2000:])
    assert wait_for(lambda: lab_.fetch("n3", c, f"{ip_of(a)}:8000") == ip_of(c), 30), lab_.fetch("n3", c, f"{ip_of(a)}:8000")
    # b and c are not linked to each other: still closed; d (another customer) still reaches nobody.
    assert lab_.fetch("n2", b, f"{ip_of(c)}:8000").startswith("failed")
    assert lab_.fetch("n2", d, f"{ip_of(b)}:8000").startswith("failed")
    # Unlink one side: closed again, both ways.
    assert lab_.api("POST", f"/api/containers/{b}", {"unlink": a})[0] == 200
    assert wait_for(lambda: lab_.fetch("n2", a, f"{ip_of(b)}:8000").startswith("failed"), 30)
    assert wait_for(lambda: lab_.probe("n2", b, "/whoami") == "10.0.0.1", 30)
    assert lab_.fetch("n2", b, f"{ip_of(a)}:8000").startswith("failed")


def test_a_container_reaches_out_through_nat_but_not_the_nodes_services_and_cannot_change_its_address(net_lab: Lab):
    lab_ = net_lab
    a = lab_.containers()["a"]
    node = NODES["n2"]
    assert wait_for(lambda: lab_.fetch("n2", a, f"{CLIENT}:9000") == node, 20), lab_.fetch("n2", a, f"{CLIENT}:9000")
    for port in (17300, 17200, 17100):   # store, API, Legion
        for address in (node, "10.0.0.1"):
            assert lab_.tcp("n2", a, f"{address}:{port}") != "connected", f"a container reached {address}:{port}"
    assert lab_.tcp("n2", a, f"{node}:18080") == "connected", "the router must stay reachable from containers"
    out = lab_.probe("n2", a, "/setip")
    assert not out.startswith("0 "), f"a container changed its address: {out}"
    assert "10.0.0.250" not in lab("n2", "ip", "netns", "exec", f"legion-n2-{a}", "ip", "addr").stdout


def test_a_port_mapping_from_the_customer_api_reaches_the_container_from_outside(net_lab: Lab):
    lab_ = net_lab
    a = lab_.containers()["a"]
    assert lab_.api("POST", f"/api/portmappings/{NODES['n2']}", {"proto": "tcp", "public_port": 9080, "private_port": 8000, "container": a})[0] == 201

    def outside() -> str:
        p = lab("c", "curl", "-s", "-m", "2", f"http://{NODES['n2']}:9080/whoami")
        return p.stdout
    assert wait_for(lambda: outside() == CLIENT, 20), (outside(), lab("n2", "nft", "list", "ruleset").stdout[-3000:])
    # Without the mapping, the outside reaches no container directly (even with a route to it).
    lab("c", "ip", "route", "replace", "10.0.0.0/8", "via", NODES["n2"], check=True)
    try:
        assert lab("c", "curl", "-s", "-m", "2", f"http://{ip_of(a)}:8000/whoami").returncode != 0
    finally:
        lab("c", "ip", "route", "del", "10.0.0.0/8")


def test_a_removed_container_leaves_no_namespace_veth_or_firewall_element(net_lab: Lab):
    lab_ = net_lab
    lab_.admin("container", "add", "gone", "--customer", "hoster", "--server", "n2", "--memory", "128", "--storage", "256")
    uid = lab_.containers()["gone"]
    veth = f"lv{uid}"
    assert wait_for(lambda: lab("n2", "ip", "link", "show", veth).returncode == 0, 30), lab_.log("n2")[-3000:]
    assert os.path.exists(f"/run/netns/legion-n2-{uid}")
    assert wait_for(lambda: veth in lab("n2", "nft", "list", "set", "inet", "legion_n2", "ports").stdout, 10)
    lab_.admin("container", "delete", str(uid))
    assert wait_for(lambda: lab("n2", "ip", "link", "show", veth).returncode != 0, 40), lab_.log("n2")[-3000:]
    assert wait_for(lambda: not os.path.exists(f"/run/netns/legion-n2-{uid}"), 10)
    assert wait_for(lambda: veth not in lab("n2", "nft", "list", "set", "inet", "legion_n2", "ports").stdout, 10)
    assert ip_of(uid) + " " not in lab("n2", "ip", "route").stdout
    # Last, the home: unmounted (its loop device released) and archived, not deleted.
    assert wait_for(lambda: f"container {uid} removed from this node" in lab_.log("n2"), 30), lab_.log("n2")[-3000:]
    def loops() -> str:
        return subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert wait_for(lambda: f"/{uid}.ext4)" not in loops(), 10), loops()


def leak_inventory() -> dict[str, Counter]:
    """What a container may leave behind, in the root namespace and in n2's, by identity (not by count): an
    earlier test's teardown finishing meanwhile (a lazily released loop device) must not look like a leak or hide one."""
    def lines(argv: list[str]) -> Counter:
        return Counter(line.strip() for line in subprocess.run(argv, capture_output=True, text=True).stdout.splitlines() if line.strip())

    def mounts() -> Counter:
        # mountinfo field 5 is the mount point, the field after " - " the filesystem type and source.
        out = Counter()
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields, _, tail = line.partition(" - ")
            out[(fields.split()[4], tail)] += 1
        return out

    def loops() -> Counter:
        # "/dev/loop3: [2049]:1234 (/path/image)": the device and its backing file.
        return Counter(line.split(":", 1)[0] + " " + line.rsplit("(", 1)[-1].rstrip(")")
                       for line in lines(["losetup", "-a"]))

    def links() -> Counter:
        # "7: lv123@if2: <...>": the name, not the index.
        return Counter(line.split(":", 2)[1].strip().split("@")[0]
                       for line in lines(["ip", "netns", "exec", "lg-n2", "ip", "-o", "link"]))

    cgroups = Path("/sys/fs/cgroup/memory/legion/n2")
    ports = lab("n2", "nft", "list", "set", "inet", "legion_n2", "ports").stdout
    return {
        "mounts": mounts(),
        "loop devices": loops(),
        "netns": Counter(os.listdir("/run/netns")),
        "n2 links": links(),
        "n2 routes": lines(["ip", "netns", "exec", "lg-n2", "ip", "route"]),
        "runc containers": lines(["runc", "list", "-q"]),
        "cgroups": Counter(d.name for d in cgroups.iterdir() if d.is_dir()) if cgroups.exists() else Counter(),
        "firewall ports": Counter(w.strip(' ,"') for w in ports.split() if w.strip(' ,"').startswith("lv")),
    }


def leaked_since(before: dict[str, Counter]) -> dict[str, list]:
    """What exists now and did not before (Counter subtraction keeps only what grew)."""
    now = leak_inventory()
    return {k: sorted(map(str, (now[k] - before[k]).elements())) for k in now if now[k] - before[k]}


def test_100_create_delete_cycles_leave_nothing_behind(net_lab: Lab):
    lab_ = net_lab
    before = leak_inventory()
    t0 = time.monotonic()
    for rnd in range(10):
        names = [f"cyc{rnd}-{i}" for i in range(10)]
        for name in names:
            lab_.admin("container", "add", name, "--customer", "hoster", "--server", "n2", "--memory", "64", "--storage", "64")
        uids = [u for n, u in lab_.containers().items() if n in names]
        assert len(uids) == 10

        def all_running() -> bool:
            listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.split()
            return all(f"legion-n2-{u}" in listed for u in uids) and all(
                lab("n2", "ip", "link", "show", f"lv{u}").returncode == 0 for u in uids)
        assert wait_for(all_running, 60, 0.2), lab_.log("n2")[-3000:]
        for u in uids:
            lab_.admin("container", "delete", str(u))

        def all_gone() -> bool:
            listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.split()
            return not any(f"legion-n2-{u}" in listed or os.path.exists(f"/run/netns/legion-n2-{u}") for u in uids)
        assert wait_for(all_gone, 60, 0.2), lab_.log("n2")[-3000:]
    elapsed = time.monotonic() - t0

    assert wait_for(lambda: not leaked_since(before), 30, 0.5), leaked_since(before)
    print(f"\n100 create/delete cycles (10 at a time, store → running → removed) in {elapsed:.1f} s; nothing left behind: "
          + ", ".join(f"{k} {sum(v.values())}" for k, v in leak_inventory().items()))


def test_a_node_killed_hard_brings_every_container_back_with_its_network(net_lab: Lab):
    lab_ = net_lab
    u = lab_.containers()
    a, b, c = u["a"], u["b"], u["c"]
    node = lab_.nodes["n2"]
    node.kill()
    node.wait(timeout=10)
    log = open(lab_.run_dir / "n2.log", "a")
    cfg = lab_.run_dir / "n2.toml"
    lab_.nodes["n2"] = subprocess.Popen(["nsenter", "--net=/run/netns/lg-n2", str(lab_.legion), "node", "--config", str(cfg)],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    for uid in (a, b):
        assert wait_for(lambda: lab_.probe("n2", uid, "/whoami") == "10.0.0.1", 60), lab_.log("n2")[-3000:]
    # The links hold as the store has them: a ↔ c (two nodes) open, a → b closed (b unlinked).
    assert wait_for(lambda: lab_.fetch("n2", a, f"{ip_of(c)}:8000") == ip_of(a), 30), lab_.fetch("n2", a, f"{ip_of(c)}:8000")
    assert lab_.fetch("n2", a, f"{ip_of(b)}:8000").startswith("failed")


def test_admin_rules_deny_and_allow_traffic_with_the_outside_live(net_lab: Lab):
    lab_ = net_lab
    a = lab_.containers()["a"]
    assert wait_for(lambda: lab_.fetch("n2", a, f"{CLIENT}:9000") == NODES["n2"], 20)
    out = lab_.admin("rule", "add", str(a), "--direction", "out", "--dst", f"{CLIENT}/32", "--action", "deny")
    uuid = out.split("rule ", 1)[1].split(" ", 1)[0]
    assert wait_for(lambda: lab_.fetch("n2", a, f"{CLIENT}:9000").startswith("failed"), 20), lab("n2", "nft", "list", "chain", "inet", "legion_n2", "forward").stdout
    # Other containers are not affected; a bad rule is refused with a reason and changes nothing.
    assert lab_.fetch("n2", lab_.containers()["b"], f"{CLIENT}:9000") == NODES["n2"]
    bad = subprocess.run(["ip", "netns", "exec", "lg-c", str(lab_.legion), "admin", "rule", "add", str(a), "--direction", "out",
                          "--dst", "1.2.3.4; flush ruleset", "--action", "deny", "--store", STORE], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "must be an IPv4 address or CIDR" in bad.stderr, bad.stderr
    lab_.admin("rule", "delete", uuid)
    assert wait_for(lambda: lab_.fetch("n2", a, f"{CLIENT}:9000") == NODES["n2"], 20)
