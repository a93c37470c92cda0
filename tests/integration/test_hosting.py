"""Hosting end to end on the local 3-node cluster (cluster-configs/local-3, real uWSGI vassals):
`legion admin` adds a customer, containers on node2 and node3 and a domain; each node creates the homes and
runs a sub-Emperor per container; a vassal file with `cluster-domain = D` dropped into a container's vassals/
is served through the VIP from both nodes; ssh keys are rewritten without a restart, a reboot restarts the
sub-Emperor; a vassal naming a domain the customer does not own is refused in the container's log while the
others serve; removing a container stops it, archives its home and takes D off every router; a store without
quorum and a restarted node keep serving from the local snapshot.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ul

VIP = "127.0.0.100:18480"
ROUTERS = {"node1": "127.0.0.1:18081", "node2": "127.0.0.1:18082", "node3": "127.0.0.1:18083"}
DOMAIN = "hosted.example.com"
APP = """
import os
def application(env, start_response):
    body = ("%s %d" % (os.environ.get("DEMO_NODE", "?"), os.getuid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def get(address: str, host: str = DOMAIN, timeout: float = 1.0) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{address}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def procs_with(text: str) -> list[int]:
    """Live processes (not this one) whose command line contains `text` (zombies excluded)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes()
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text.encode() in argv and state != "Z":
            found.append(int(d))
    return found


def wait_for(pred, timeout: float, interval: float = 0.05):
    """Polls `pred` until it is true; a file not there yet (OSError) counts as not yet."""
    def attempt():
        try:
            return pred()
        except OSError:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = attempt()
        if value:
            return value
        time.sleep(interval)
    return attempt()


class Cluster:
    def __init__(self, legion: Path, repo: Path, run_dir: Path):
        self.legion, self.repo, self.run_dir = legion, repo, run_dir

    def admin(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        p = subprocess.run([str(self.legion), "admin", *args], cwd=self.repo, input=stdin, capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, f"legion admin {' '.join(args)} failed: {p.stdout}{p.stderr}"
        return p

    def containers(self) -> dict[str, int]:
        return {c["name"]: c["uid"] for c in json.loads(self.admin("container", "list", "--json").stdout)}

    def home(self, node: str, uid: int) -> Path:
        return self.run_dir / node / "containers" / str(uid)

    def node_pid(self, node: str) -> int:
        return int((self.run_dir / node / "node.pid").read_text().strip())

    def log(self, node: str) -> str:
        return (self.run_dir / node / "node.log").read_text(errors="replace")


@pytest.fixture
def cluster(legion_bin, repo_root):
    yield from hosting_cluster(legion_bin, repo_root)


def hosting_cluster(legion_bin, repo_root, runtime: str | None = None, hosting_extra: str = "", node_extra: str = ""):
    """local-3 in a temporary run dir, signed subscriptions required, customers/containers/domains added."""
    ul.ensure_uwsgi_python3()
    # A short path: vassal sockets live at <home>/run/<domain>_<hash>.socket (108-byte unix path limit).
    run_dir = Path(tempfile.mkdtemp(prefix="lh", dir="/tmp"))
    run_dir.chmod(0o755)   # containers run as their own uids and must reach their homes below it
    # local-3 with signed subscriptions required: vassals sign with their customer's key, routers verify
    # with the keys from the store (an empty key directory: nothing else is trusted).
    configs = run_dir / "configs"
    configs.mkdir()
    (run_dir / "signkeys").mkdir()
    for n in (1, 2, 3):
        text = (repo_root / "cluster-configs" / "local-3" / f"node{n}.toml").read_text()
        assert "\n[router]\n" in text
        text = text.replace("\n[router]\n", f'\n[router]\nsign_check = "SHA1:{run_dir / "signkeys"}"\n')
        if runtime:
            assert "\n[hosting]\n" in text
            # hosting_extra may name the node: "{node}" becomes node1, node2, node3.
            text = text.replace("\n[hosting]\n", f'\n[hosting]\nruntime = "{runtime}"\n{hosting_extra.replace("{node}", f"node{n}")}')
        # node_extra: more tables appended to every node's file ("{node}" as above).
        text += "\n" + node_extra.replace("{node}", f"node{n}")
        (configs / f"node{n}.toml").write_text(text)
    subprocess.run([str(legion_bin), "cluster", "down"], cwd=repo_root, capture_output=True, timeout=30)
    try:
        yield from _hosting_cluster(legion_bin, repo_root, run_dir, configs)
    finally:
        subprocess.run([str(legion_bin), "cluster", "down", "--config-dir", str(configs), "--run-dir", str(run_dir)], cwd=repo_root,
                       capture_output=True, timeout=60)
        for node in ("node1", "node2", "node3"):
            pidfile = run_dir / node / "node.pid"
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
                except (ValueError, ProcessLookupError):
                    pass
        # Sub-Emperors and vassals die with their node (parent-death signal); make sure nothing is left.
        for pid in procs_with(str(run_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if runtime == "runc":
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4]
                if point.startswith(str(run_dir) + "/"):
                    subprocess.run(["umount", "-l", point], capture_output=True)
            for cid in subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.split():
                if cid.startswith("legion-node"):
                    subprocess.run(["runc", "delete", "--force", cid], capture_output=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def _hosting_cluster(legion_bin, repo_root, run_dir: Path, configs: Path):
    up = subprocess.run([str(legion_bin), "cluster", "up", "--config-dir", str(configs), "--run-dir", str(run_dir)], cwd=repo_root,
                        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert up.returncode == 0, f"cluster up failed: {up.stdout}{up.stderr}"
    c = Cluster(legion_bin, repo_root, run_dir)
    c.admin("customer", "add", "hoster", "--password-stdin", stdin="hoster-password-1\n")
    c.admin("customer", "add", "other", "--password-stdin", stdin="other-password-1\n")
    for n in ("node2", "node3"):
        c.admin("server", "add", n, "--address", "127.0.0.1", "--memory", "4096", "--storage", "40960")
    keys = run_dir / "keys"
    keys.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnlyATestKeyForLegionHosting first@test\n")
    c.admin("container", "add", "web2", "--customer", "hoster", "--server", "node2", "--memory", "256", "--storage", "1024",
            "--ssh-keys-file", str(keys))
    c.admin("container", "add", "web3", "--customer", "hoster", "--server", "node3", "--memory", "256", "--storage", "1024")
    c.admin("domain", "add", DOMAIN, "--customer", "hoster")
    c.admin("domain", "add", "not-yours.example.com", "--customer", "other")
    yield c


def drop_vassal(c: Cluster, node: str, uid: int, name: str = "app.ini", domain_line: str = f"cluster-domain = {DOMAIN}") -> Path:
    home = c.home(node, uid)
    assert wait_for(lambda: (home / "vassals").is_dir(), 5), f"{node} did not create {home}:\n{c.log(node)[-3000:]}"
    (home / "app.py").write_text(APP)
    vassal = home / "vassals" / name
    tmp = home / f".{name}.tmp"
    tmp.write_text("\n".join(["[uwsgi]", "plugin = python3", domain_line, f"chdir = {home}", "module = app",
                              f"env = DEMO_NODE={node}", "processes = 1", ""]))
    if os.getuid() == 0:
        os.chown(home / "app.py", uid, uid)
        os.chown(tmp, uid, uid)
    tmp.rename(vassal)
    return vassal


def sub_emperor_pid(c: Cluster, uid: int) -> int | None:
    for pid in procs_with(str(c.run_dir)):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(cmd) > 2 and cmd[1] == b"emperor" and cmd[2].decode().endswith(f"/{uid}/vassals"):
            return pid
    return None


def test_customer_app_is_hosted_on_two_nodes_and_removed_cleanly(cluster: Cluster):
    c = cluster
    uids = c.containers()
    u2, u3 = uids["web2"], uids["web3"]
    home2 = c.home("node2", u2)
    assert wait_for(lambda: (home2 / "etc" / "uwsgi.key").exists(), 5), c.log("node2")[-3000:]
    # uwsgi.it's layout, the customer's key pair (private: 0600), ssh keys, owned domains.
    for d in ("vassals", "logs", "etc", "run", "tmp", ".ssh"):
        assert (home2 / d).is_dir(), d
    assert (home2 / "etc" / "uwsgi.key").stat().st_mode & 0o777 == 0o600
    assert "BEGIN" in (home2 / "etc" / "uwsgi.key").read_text()
    assert "first@test" in (home2 / ".ssh" / "uwsgi_authorized_keys").read_text()
    assert wait_for(lambda: (home2 / "etc" / "domains").read_text() == f"{DOMAIN}\n", 5)
    assert "BEGIN" not in c.log("node2").split("uwsgi.key")[-1][:200], "private keys are never logged"
    if os.getuid() == 0:
        assert home2.stat().st_uid == u2
    # Nothing of node3's container on node2, and the reverse.
    assert wait_for(lambda: c.home("node3", u3).exists(), 5)
    assert not c.home("node2", u3).exists()

    t0 = time.monotonic()
    drop_vassal(c, "node2", u2)
    drop_vassal(c, "node3", u3)
    seen = set()

    def both() -> bool:
        status, body = get(VIP)
        if status == 200:
            seen.add(body.split()[0])
        return seen >= {"node2", "node3"}

    assert wait_for(both, 15), f"served {seen}; node2 container log:\n{c.log('node2')[-3000:]}"
    print(f"vassal files dropped -> both nodes served through the VIP in {time.monotonic() - t0:.2f} s")
    status, body = get(VIP)
    assert status == 200
    if os.getuid() == 0:
        # Vassals run as the container's uid, never root.
        assert {int(b.split()[1]) for b in [get(VIP)[1] for _ in range(4)]} <= {u2, u3}

    # ssh keys change: the file is rewritten, the sub-Emperor is not restarted.
    before = sub_emperor_pid(c, u2)
    assert before
    newkeys = c.run_dir / "newkeys"
    newkeys.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISecondKeyForLegionHosting second@test\n")
    c.admin("container", "ssh-keys", str(u2), "--file", str(newkeys))
    assert wait_for(lambda: "second@test" in (home2 / ".ssh" / "uwsgi_authorized_keys").read_text(), 5)
    assert sub_emperor_pid(c, u2) == before

    # The customer API makes the same changes (by name through the VIP, as a customer would): keys, then a reboot.
    def api(body: dict) -> int:
        req = urllib.request.Request(f"http://{VIP}/api/containers/{u2}", data=json.dumps(body).encode(), method="POST", headers={
            "Host": "api.local-3.test", "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(b"hoster:hoster-password-1").decode()})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status

    assert api({"ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIThirdKeyFromTheCustomerAPI third@test"]}) == 200
    assert wait_for(lambda: "third@test" in (home2 / ".ssh" / "uwsgi_authorized_keys").read_text(), 5)
    assert sub_emperor_pid(c, u2) == before
    # A reboot restarts the container's sub-Emperor (new pid) and its vassal serves again.
    assert api({"reboot": 1}) == 200
    assert wait_for(lambda: (p := sub_emperor_pid(c, u2)) is not None and p != before, 10), c.log("node2")[-2000:]
    assert wait_for(lambda: get(ROUTERS["node2"])[0] == 200, 10)

    # Removing node3's container: only node2 serves; its home is archived, not deleted.
    c.admin("container", "delete", str(u3))
    assert wait_for(lambda: not c.home("node3", u3).exists(), 10), c.log("node3")[-2000:]
    archived = list((c.run_dir / "node3" / "containers-archive").glob(f"{u3}-*"))
    assert archived and (archived[0] / "vassals" / "app.ini").exists()
    assert wait_for(lambda: all(get(VIP)[1].startswith("node2") for _ in range(6)), 10)
    assert wait_for(lambda: not procs_with(f"/node3/containers/{u3}/"), 5), "container processes left on node3"

    # Removing the last one: the domain is gone from every router.
    c.admin("container", "delete", str(u2))

    def gone() -> bool:
        return all(get(addr)[0] in (404, 503) for addr in [*ROUTERS.values(), VIP])

    assert wait_for(gone, 10), [get(a) for a in [*ROUTERS.values(), VIP]]


def test_bad_vassal_is_refused_in_the_container_log_and_others_serve(cluster: Cluster):
    c = cluster
    u2 = c.containers()["web2"]
    drop_vassal(c, "node2", u2)
    assert wait_for(lambda: get(ROUTERS["node2"])[0] == 200, 15)
    drop_vassal(c, "node2", u2, name="steal.ini", domain_line="domain = not-yours.example.com")
    (c.home("node2", u2) / "vassals" / "broken.ini").write_text("[uwsgi]\nthis is not an option line\n")
    drop_vassal(c, "node2", u2, name="typo.ini", domain_line=f"cluster-domian = {DOMAIN}")
    log = c.home("node2", u2) / "logs" / "emperor.log"
    assert wait_for(lambda: "not-yours.example.com is not registered to this customer" in log.read_text(errors="replace"), 10)
    assert wait_for(lambda: "broken.ini refused" in log.read_text(errors="replace"), 10)
    assert wait_for(lambda: "did you mean 'cluster-domain'" in log.read_text(errors="replace"), 10)
    assert get(ROUTERS["node2"], host="not-yours.example.com")[0] == 404
    for _ in range(5):
        assert get(ROUTERS["node2"])[0] == 200


def test_store_without_quorum_and_a_restarted_node_keep_serving(cluster: Cluster):
    c = cluster
    u2 = c.containers()["web2"]
    drop_vassal(c, "node2", u2)
    assert wait_for(lambda: get(ROUTERS["node2"])[0] == 200, 15)
    # Two of three nodes die: no store quorum, no Lord. node2 keeps hosting and routing.
    for n in ("node1", "node3"):
        os.kill(c.node_pid(n), signal.SIGKILL)
    time.sleep(1.0)
    for _ in range(5):
        assert get(ROUTERS["node2"]) [0] == 200
    # node2 itself restarts (its vassals die with it) and comes back from its local snapshot.
    os.kill(c.node_pid("node2"), signal.SIGKILL)
    time.sleep(0.5)
    log = open(c.run_dir / "node2" / "node.log", "ab")
    subprocess.Popen([str(c.legion), "node", "--config", str(c.run_dir / "configs" / "node2.toml"),
                      "--data-dir", str(c.run_dir / "node2")], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                     start_new_session=True)
    log.close()
    assert wait_for(lambda: get(ROUTERS["node2"])[0] == 200, 15), c.log("node2")[-3000:]


def _requests_during(change, address: str, seconds: float = 5.0) -> tuple[int, int, float]:
    """Requests every 20 ms for `seconds` while `change()` runs after 1 s: (sent, failed, max latency s)."""
    import threading
    results: list[tuple[bool, float]] = []
    timer = threading.Timer(1.0, change)
    timer.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        status, _ = get(address, timeout=10)
        results.append((status == 200, time.monotonic() - t0))
        time.sleep(0.02)
    timer.join()
    return len(results), sum(1 for ok, _ in results if not ok), max(lat for _, lat in results)


def test_reloads_fail_no_request_and_a_touch_does_not_stall(cluster: Cluster):
    """The default for customer vassals: a touched vassal with 2 workers is chain-reloaded (no stall); an
    edited vassal alone on its domain is fully reloaded and the router keeps it as a fallback while it
    re-subscribes (a short stall, never a 404)."""
    c = cluster
    u2 = c.containers()["web2"]
    vassal = drop_vassal(c, "node2", u2)
    text = vassal.read_text().replace("processes = 1", "processes = 2")
    vassal.write_text(text)
    router = ROUTERS["node2"]
    log = c.home("node2", u2) / "logs" / "emperor.log"
    assert wait_for(lambda: get(router)[0] == 200 and "is now loyal" in log.read_text(errors="replace"), 20)
    time.sleep(2)   # the edit above reloaded it once; let that settle

    sent, failed, worst = _requests_during(lambda: os.utime(vassal), router)
    print(f"touch, 2 workers: {sent} requests, {failed} failed, max {worst * 1000:.0f} ms")
    assert "chain reload" in log.read_text(errors="replace")
    assert failed == 0
    assert worst < 0.5, f"a touch stalled requests for {worst * 1000:.0f} ms"

    def edit():
        with open(vassal, "a") as f:
            f.write("; edited\n")

    sent, failed, worst = _requests_during(edit, router)
    print(f"edit, the domain's only vassal: {sent} requests, {failed} failed, max {worst * 1000:.0f} ms")
    assert failed == 0, "a reloading vassal alone on its domain must stall requests, not fail them"
