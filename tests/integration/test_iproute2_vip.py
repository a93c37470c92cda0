"""The iproute2 VIP driver for real, in a network-namespace lab (needs root; CI runs as root).

Three legion nodes in their own namespaces on a bridge, a client namespace, a real VIP moved with
`ip addr` + gratuitous ARP. Checks: one holder, SIGKILL of the Lord (the fence process removes the
dead node's VIP), SIGSTOP of the Lord (the fence removes the frozen node's VIP before anyone else
takes it), and a clean teardown.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import legion_binary_path

PREFIX = "lgt"
SUBNET = "10.252.0"
VIP = f"{SUBNET}.100"
PORT = 8080

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=20)


def ns(name: str) -> str:
    return f"{PREFIX}-{name}"


def teardown_lab() -> None:
    for name in ["n1", "n2", "n3", "c", "lan"]:
        n = ns(name)
        if subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True).returncode == 0:
            pids = subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


def vip_holders() -> list[str]:
    holders = []
    for name in ["n1", "n2", "n3"]:
        out = sh("ip", "-n", ns(name), "-o", "-4", "addr", "show", check=False).stdout
        if f" {VIP}/" in out:
            holders.append(name)
    return holders


def ask_vip(timeout: float = 0.3) -> str | None:
    r = subprocess.run(["ip", "netns", "exec", ns("c"), "curl", "-s", "-m", str(timeout),
                        f"http://{VIP}:{PORT}/.legion/lord"], capture_output=True, text=True, timeout=5)
    if r.returncode != 0 or '"name"' not in r.stdout:
        return None
    import json
    return json.loads(r.stdout)["name"]


def wait_for(pred, timeout: float, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def start_node(name: str, cfg: Path, tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "a")
    return subprocess.Popen(["ip", "netns", "exec", ns(name), str(legion_binary_path()), "node", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture()
def lab(tmp_path: Path):
    teardown_lab()
    sh("ip", "netns", "add", ns("lan"))
    sh("ip", "-n", ns("lan"), "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", ns("lan"), "link", "set", "br0", "up")
    addrs = {"n1": 11, "n2": 12, "n3": 13, "c": 50}
    for name, host in addrs.items():
        sh("ip", "netns", "add", ns(name))
        sh("ip", "-n", ns(name), "link", "set", "lo", "up")
        sh("ip", "link", "add", f"lge-{name}", "netns", ns(name), "type", "veth", "peer", "name", f"lgb-{name}", "netns", ns("lan"))
        sh("ip", "-n", ns("lan"), "link", "set", f"lgb-{name}", "master", "br0")
        sh("ip", "-n", ns("lan"), "link", "set", f"lgb-{name}", "up")
        sh("ip", "-n", ns(name), "link", "set", f"lge-{name}", "up")
        sh("ip", "-n", ns(name), "addr", "add", f"{SUBNET}.{host}/24", "dev", f"lge-{name}")
    procs: dict[str, subprocess.Popen] = {}
    binary = legion_binary_path()
    valors = {"n1": 300, "n2": 200, "n3": 100}
    for name in ["n1", "n2", "n3"]:
        others = ", ".join(f'"{SUBNET}.{addrs[o]}:4001"' for o in ["n1", "n2", "n3"] if o != name)
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f"""
[node]
name = "{name}"
data_dir = "{tmp_path / name}"
[legion]
name = "lab"
bind = "{SUBNET}.{addrs[name]}:4001"
nodes = [{others}]
valor = {valors[name]}
secret = "aes-256-cbc:lab-secret"
[legion.timing]
preempt = false
[vip]
driver = "iproute2"
address = "{VIP}/24"
interface = "lge-{name}"
http_port = {PORT}
""")
        procs[name] = start_node(name, cfg, tmp_path)
    yield procs, tmp_path
    for p in procs.values():
        try:
            os.killpg(p.pid, signal.SIGCONT)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    teardown_lab()
    out = sh("ip", "netns", "list", check=False).stdout
    assert PREFIX not in out, f"lab namespaces left behind: {out}"


def test_vip_moves_with_ip_addr_and_is_fenced_on_kill_and_pause(lab):
    procs, tmp = lab
    lord = wait_for(ask_vip, 15)
    assert lord == "n1", f"expected the valor-300 node to be Lord, got {lord}; logs in {tmp}"
    assert vip_holders() == ["n1"]

    # SIGKILL the Lord: another node answers, and the fence removed the dead node's address.
    t0 = time.monotonic()
    os.killpg(procs["n1"].pid, signal.SIGKILL)
    new = wait_for(lambda: (w := ask_vip(0.2)) and w != "n1" and w, 5, 0.01)
    gap_ms = (time.monotonic() - t0) * 1000
    assert new in ("n2", "n3"), f"no new Lord on the VIP after the kill; logs in {tmp}"
    assert gap_ms < 1500, f"failover took {gap_ms:.0f} ms"
    assert wait_for(lambda: vip_holders() == [new], 2), f"VIP holders after kill: {vip_holders()}"

    # Bring the killed node back (quorum 2 of 3 must survive the next fault).
    procs["n1"] = start_node("n1", tmp / "n1.toml", tmp)
    time.sleep(1.5)
    assert ask_vip() == new, "non-preemptive: the returning valor-300 node must not take over"

    # SIGSTOP the new Lord: its fence removes the VIP before the lease could be re-granted elsewhere.
    holders_seen: list[list[str]] = []
    os.killpg(procs[new].pid, signal.SIGSTOP)
    try:
        third = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            holders_seen.append(vip_holders())
            w = ask_vip(0.2)
            if w and w != new:
                third = w
                break
        assert third is not None, f"no Lord took over while {new} was frozen; logs in {tmp}"
        assert new not in vip_holders(), "the frozen Lord still holds the VIP (fence failed)"
        assert all(len(h) <= 1 for h in holders_seen), f"two VIP holders seen: {holders_seen}"
    finally:
        os.killpg(procs[new].pid, signal.SIGCONT)
    time.sleep(1.0)
    holders = vip_holders()
    assert len(holders) == 1, f"after the pause exactly one node must hold the VIP, got {holders}"
    assert ask_vip() == holders[0]
