"""The 3-node loopback cluster (cluster-configs/local-3): up, VIP names the Lord, status agrees, the Lord is
SIGKILLed and a different node answers on the VIP within 1 s, `cluster down` leaves no legion process.

Run:  python3 -m pytest -v -s tests/integration/test_local_cluster.py
"""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import boot_ticks_now, kill_group, processes_running, ul

FAILOVER_LIMIT_S = 1.0


def cluster(legion_bin, repo_root, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(legion_bin), "cluster", *args], cwd=repo_root, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`legion cluster {' '.join(args)}` did not return within {timeout:.0f}s", pytrace=False)


def status(legion_bin, repo_root, dirs) -> dict:
    r = cluster(legion_bin, repo_root, "status", "--json", *dirs, timeout=15)
    assert r.returncode == 0, f"`legion cluster status --json` exited {r.returncode}: {r.stderr or r.stdout}"
    try:
        st = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"`legion cluster status --json` did not print JSON: {r.stdout[-500:]!r}", pytrace=False)
    assert isinstance(st, dict) and {"lord", "vip", "nodes"} <= st.keys(), f"unexpected status shape: {st}"
    return st


@pytest.fixture
def local3(legion_bin, repo_root, tmp_path, procs):
    """Config and run directories; at teardown `cluster down`, then SIGKILL any node pid still alive."""
    config_dir = repo_root / "cluster-configs" / "local-3"
    if not config_dir.is_dir():
        pytest.fail(f"{config_dir} is missing", pytrace=False)
    run_dir = tmp_path / "run"
    started = boot_ticks_now()
    dirs = ("--config-dir", str(config_dir), "--run-dir", str(run_dir))
    yield dirs, procs, started
    cluster(legion_bin, repo_root, "down", *dirs, timeout=60)
    procs.kill_all()  # node pids recorded with procs.track()
    for pid, _ in processes_running(legion_bin, started):
        kill_group(pid)


def up_and_track(legion_bin, repo_root, dirs, procs) -> dict:
    """`legion cluster up`, then its status, with every node's pid tracked for teardown."""
    r = cluster(legion_bin, repo_root, "up", *dirs, timeout=90)
    assert r.returncode == 0, f"`legion cluster up` exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    st = status(legion_bin, repo_root, dirs)
    for n in st["nodes"]:
        procs.track(int(n.get("pid") or 0))
    return st


def test_up_vip_status_failover_down(legion_bin, repo_root, local3):
    dirs, procs, started = local3

    st = up_and_track(legion_bin, repo_root, dirs, procs)
    assert len(st["nodes"]) == 3, f"expected 3 nodes: {st}"
    assert all(n.get("running") for n in st["nodes"]), f"not every node is running: {st}"
    lord = st["lord"]
    assert lord, f"`cluster up` returned but status names no Lord: {st}"
    vip = st["vip"]
    ul.check_loopback(vip)

    # the VIP names the Lord, and status agrees (exactly one node flagged lord, with that name)
    answer = ul.http_get_lord(vip, timeout=2)
    assert answer is not None, f"GET http://{vip}/.legion/lord failed"
    assert answer.get("name") == lord, f"VIP says {answer}, status says Lord {lord}"
    assert {"uuid", "valor", "since"} <= answer.keys(), f"VIP answer lacks fields: {answer}"
    flagged = [n["name"] for n in st["nodes"] if n.get("lord")]
    assert flagged == [lord], f"status flags {flagged} as lord, top-level lord is {lord}"
    lord_node = next(n for n in st["nodes"] if n["name"] == lord)
    assert int(lord_node.get("valor", -1)) == int(answer["valor"]), f"valor mismatch: {lord_node} vs {answer}"

    # SIGKILL the Lord; a different node must answer on the VIP within 1 s
    pid = int(lord_node["pid"])
    assert ul.pid_alive(pid), f"Lord pid {pid} from status is not running"
    t_kill = kill_group(pid)
    gap, new = ul.measure_vip_failover(vip, lord, t_kill, timeout=FAILOVER_LIMIT_S + 4)
    assert gap is not None, f"no other node answered on {vip} within {FAILOVER_LIMIT_S + 4:.0f}s of killing {lord}"
    print(f"\nkilled {lord} (pid {pid}); {new['name']} answered on the VIP after {gap * 1000:.0f} ms")
    assert gap <= FAILOVER_LIMIT_S, f"failover took {gap * 1000:.0f} ms (limit {FAILOVER_LIMIT_S * 1000:.0f} ms)"

    st2 = ul.wait_until(lambda: (s := status(legion_bin, repo_root, dirs))["lord"] == new["name"] and s, 5)
    assert st2, f"status does not name the new Lord {new['name']}: {status(legion_bin, repo_root, dirs)}"
    dead = [n for n in st2["nodes"] if n["name"] == lord]
    assert dead and not dead[0].get("running"), f"status still shows the killed {lord} running: {dead}"

    # down leaves nothing
    r = cluster(legion_bin, repo_root, "down", *dirs, timeout=60)
    assert r.returncode == 0, f"`legion cluster down` exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    pids = [int(n.get("pid") or 0) for n in st["nodes"] + st2["nodes"]]
    gone = ul.wait_until(lambda: not any(p > 1 and ul.pid_alive(p) for p in pids)
                         and not processes_running(legion_bin, started), 10)
    assert gone, (f"processes left after `cluster down`: pids {[p for p in pids if ul.pid_alive(p)]}, "
                  f"legion processes {processes_running(legion_bin, started)}")
    assert ul.http_get_lord(vip, timeout=1) is None, f"{vip} still answers after `cluster down`"


def test_roll_restarts_every_node_members_first_and_waits_until_each_is_healthy(legion_bin, repo_root, local3):
    dirs, procs, _ = local3
    before = up_and_track(legion_bin, repo_root, dirs, procs)
    lord = before["lord"]
    r = cluster(legion_bin, repo_root, "roll", "--settle", "0.2", *dirs, timeout=240)
    assert r.returncode == 0, f"`legion cluster roll` exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    stopping = [line.split(":")[0] for line in r.stdout.splitlines() if ": stopping" in line]
    assert len(stopping) == 3 and stopping[-1] == lord, f"the Lord goes last:\n{r.stdout}"
    assert r.stdout.count(": healthy after") == 3, r.stdout
    after = status(legion_bin, repo_root, dirs)
    for n in after["nodes"]:
        procs.track(int(n.get("pid") or 0))
    assert all(n["running"] for n in after["nodes"]), after
    assert not {n["pid"] for n in before["nodes"]} & {n["pid"] for n in after["nodes"]}, "every node was restarted"
    assert after["vip_lord"], f"a Lord answers on the VIP after the roll: {after}"
    # A roll with a node down refuses to start (it would take the cluster below quorum).
    victim = next(n for n in after["nodes"] if n["name"] != after["lord"])
    kill_group(int(victim["pid"]))
    ul.wait_until(lambda: not ul.pid_alive(int(victim["pid"])), 5)
    r = cluster(legion_bin, repo_root, "roll", *dirs, timeout=30)
    assert r.returncode != 0 and "not every node runs" in (r.stderr + r.stdout), r.stdout + r.stderr
