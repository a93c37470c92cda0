"""Mixed Legion: Debian's real uWSGI 2.0.21 nodes and our nodes in compat mode elect one Lord together.

Members (legion "mylegion", secret aes-128-cbc:SECRET, quorum 2, freq 1 s, tolerance 3 s, all on 127.0.0.1):

    uA  uWSGI  valor 300      sA  ours  valor 250      uB  uWSGI  valor 200      sB  ours  valor 100

1. all four agree: uA is Lord by hooks, and both uWSGI nodes report a quorum of 4 votes for uA (uWSGI counts
   votes only when *every* member it hears - including ours - announces the same vote and checksum);
2. SIGKILL uA (a uWSGI Lord) -> sA (ours) becomes Lord, nobody else runs a lord hook;
3. SIGKILL sA (our Lord)    -> uB (uWSGI) becomes Lord, sB does not.

Evidence: the lord/unlord hook event files (``EVENT EPOCH_MS`` lines; the last lord/unlord line of a live node
says whether it is Lord), uWSGI's "WE HAVE QUORUM" log reports, and the announces the uWSGI nodes also send to a
passive observer socket (decrypted here). Our nodes' configured peers are only the three other members, so the
observer cannot change their view. uWSGI failover with freq 1 / tolerance 3 takes ~4-5 s; waits are bounded.

Run:  python3 -m pytest -v -s tests/integration/test_uwsgi_interop.py
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import (LEGION_NAME, REPO_ROOT, SECRET, free_ports, read_audit, tail, ul, write_node_toml)

FAILOVER_TIMEOUT = 20.0   # uWSGI needs ~4-5 s (tolerance 3 + whole-second clock + one more round)
CONVERGE_TIMEOUT = 30.0
UUID_SUM_MIN = 4 * ord("-") + 32 * ord("0")   # checksum bounds for one member's 36-char uuid
UUID_SUM_MAX = 4 * ord("-") + 32 * ord("f")

UWSGI_NODES = {"uA": 300, "uB": 200}
OUR_NODES = {"sA": 250, "sB": 100}


def addr(port: int) -> str:
    return f"{ul.HOST}:{port}"


class Mixed:
    """The running mixed legion and everything needed to observe it."""

    def __init__(self, base: Path, legion_bin: Path, uwsgi_bin: str, procs):
        self.base, self.legion_bin, self.tracker = base, legion_bin, procs
        udp = free_ports(5, udp=True)
        tcp = free_ports(2)
        self.ports = dict(zip(["uA", "uB", "sA", "sB"], udp[:4]))
        self.observer = ul.AnnounceObserver(udp[4], SECRET)
        self.valor = {**UWSGI_NODES, **OUR_NODES}
        self.uwsgi = ul.UwsgiLegion(
            [ul.NodeSpec(n, v, self.ports[n], tcp[i]) for i, (n, v) in enumerate(UWSGI_NODES.items())],
            legion=LEGION_NAME, secret=SECRET, quorum=2, freq=1, tolerance=3, vip=None,
            peers=[addr(self.ports["sA"]), addr(self.ports["sB"]), self.observer.addr],
            workdir=str(base / "uwsgi"), uwsgi_bin=uwsgi_bin)
        self.ours: dict[str, object] = {}
        self.configs = {}
        for name, valor in OUR_NODES.items():
            others = [addr(p) for n, p in self.ports.items() if n != name]
            self.configs[name] = write_node_toml(
                base / f"{name}.toml", name=name, data_dir=base / name, bind=addr(self.ports[name]),
                nodes=others, valor=valor, quorum=2, events=self.events_path(name))

    # -- lifecycle
    def start(self) -> None:
        self.uwsgi.start_all()
        for name in OUR_NODES:
            self.ours[name] = self.tracker.start([self.legion_bin, "node", "--config", self.configs[name]],
                                                 log_path=self.base / f"{name}.log", cwd=REPO_ROOT)
        time.sleep(1.5)
        for name in OUR_NODES:
            if not self.alive(name):
                pytest.fail(f"our node {name} (`legion node --config {self.configs[name]}`) exited with "
                            f"{self.ours[name].returncode}\n{tail(self.base / f'{name}.log')}", pytrace=False)
        for name in UWSGI_NODES:
            if not self.alive(name):
                pytest.fail(f"uWSGI node {name} exited\n{tail(self.uwsgi.log_path(name))}", pytrace=False)

    def stop(self) -> None:
        self.uwsgi.stop_all()
        for p in self.ours.values():
            self.tracker.kill(p)
        self.observer.close()

    def kill(self, name: str) -> int:
        """SIGKILL a member's process group; returns the wall-clock ms just before the kill."""
        t = ul.now_ms()
        if name in UWSGI_NODES:
            self.uwsgi.kill_node(name)
        else:
            self.tracker.kill(self.ours[name])
        return t

    # -- observation
    def events_path(self, name: str) -> str:
        return self.uwsgi.events_path(name) if name in UWSGI_NODES else str(self.base / f"{name}.events")

    def alive(self, name: str) -> bool:
        if name in UWSGI_NODES:
            return self.uwsgi.alive(name)
        p = self.ours.get(name)
        return p is not None and p.poll() is None

    def lords(self) -> list[str]:
        return [n for n in self.valor if self.alive(n) and ul.last_lord_state(self.events_path(n))[0]]

    def lord_events_after(self, ms: int) -> list[tuple[int, str]]:
        return sorted((t, n) for n in self.valor for ev, t, _ in ul.read_events(self.events_path(n))
                      if ev == "lord" and t >= ms)

    def uuid(self, name: str) -> str | None:
        a = self.observer.by_pid(self.uwsgi.pid(name) or -1)
        return a.get("uuid") if a else None

    def report(self, name: str) -> dict | None:
        r = self.uwsgi.quorum_reports(name)
        return r[-1] if r else None

    def announce(self, name: str) -> dict | None:
        return self.observer.by_pid(self.uwsgi.pid(name) or -1, max_age=2.5)

    def describe(self) -> str:
        lines = ["state:"]
        for n in self.valor:
            ev = [f"{e}@{t}" for e, t, _ in ul.read_events(self.events_path(n)) if e in ("lord", "unlord")][-4:]
            lines.append(f"  {n} valor {self.valor[n]} {'up' if self.alive(n) else 'DOWN'} events {ev}")
        for n in UWSGI_NODES:
            a = self.announce(n)
            lines.append(f"  {n} last quorum report {self.report(n)}")
            if a:
                lines.append(f"  {n} announces uuid {a['uuid']} vote ({a['lord_valor']}, {a['lord_uuid']}) "
                             f"checksum {a['checksum']}")
        for n in OUR_NODES:
            lines.append(f"  {n} audit tail {read_audit(self.base / n)[-3:]}")
            lines.append(tail(self.base / f"{n}.log", 15))
        return "\n".join(lines)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, legion_bin, uwsgi_bin, module_procs):
    m = Mixed(tmp_path_factory.mktemp("interop"), legion_bin, uwsgi_bin, module_procs)
    try:
        m.start()
        yield m
    finally:
        m.stop()
        left = m.uwsgi.leftovers()
        assert not left, f"uWSGI processes left behind: {left}"


def wait_for(cond, timeout: float, what: str, m: Mixed, interval: float = 0.1):
    v = ul.wait_until(cond, timeout, interval)
    if not v:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{m.describe()}", pytrace=False)
    return v


def test_all_members_agree_on_one_lord(mixed: Mixed):
    m = mixed

    def converged():
        ua = m.uuid("uA")
        if not ua or m.lords() != ["uA"]:
            return False
        for n in UWSGI_NODES:
            r, a = m.report(n), m.announce(n)
            if not r or (r["valor"], r["uuid"], r["votes"]) != (300, ua, 4):
                return False
            if not a or (a["lord_valor"], a["lord_uuid"]) != (300, ua):
                return False
        return True

    t0 = time.monotonic()
    wait_for(converged, CONVERGE_TIMEOUT, "uA as the Lord of all 4 members", m)
    print(f"\nconverged on uA after {time.monotonic() - t0:.1f}s")
    # stable: no lord changes for 2 more seconds
    mark = ul.now_ms()
    time.sleep(2.0)
    assert m.lords() == ["uA"], m.describe()
    assert m.lord_events_after(mark) == [], f"lord hooks ran while stable: {m.lord_events_after(mark)}"
    assert not any(ul.last_lord_state(m.events_path(n))[0] for n in OUR_NODES), m.describe()

    # the uWSGI members' checksum covers exactly 4 members: both uWSGI nodes plus two more uuids of valor 250+100
    a, b = m.announce("uA"), m.announce("uB")
    assert a and b and a["checksum"] == b["checksum"], m.describe()
    rest = a["checksum"] - (300 + ul.uuid_sum(a["uuid"])) - (200 + ul.uuid_sum(b["uuid"])) - (250 + 100)
    assert 2 * UUID_SUM_MIN <= rest <= 2 * UUID_SUM_MAX, f"checksum {a['checksum']} does not fit 4 members"


def test_uwsgi_lord_killed_our_node_takes_over(mixed: Mixed):
    m = mixed
    assert m.lords() == ["uA"], "precondition (previous test): uA is Lord\n" + m.describe()
    t_kill = m.kill("uA")
    wait_for(lambda: m.lords() == ["sA"], FAILOVER_TIMEOUT, "sA (ours) to become Lord after uA was killed", m)
    after = m.lord_events_after(t_kill)
    assert [n for _, n in after] == ["sA"], f"lord hooks after the kill: {after}"
    print(f"\nuA killed -> sA lord hook after {after[0][0] - t_kill} ms")
    # uB (uWSGI) follows our Lord: it votes for valor 250 with a 3-member quorum
    wait_for(lambda: (r := m.report("uB")) and (r["valor"], r["votes"]) == (250, 3)
             and (a := m.announce("uB")) and a["lord_valor"] == 250, 10, "uB to vote for sA", m)
    mark = ul.now_ms()
    time.sleep(1.5)
    assert m.lords() == ["sA"] and m.lord_events_after(mark) == [], m.describe()


def test_our_lord_killed_uwsgi_node_takes_over(mixed: Mixed):
    m = mixed
    assert m.lords() == ["sA"], "precondition (previous test): sA is Lord\n" + m.describe()
    t_kill = m.kill("sA")
    wait_for(lambda: m.lords() == ["uB"], FAILOVER_TIMEOUT, "uB (uWSGI) to become Lord after sA was killed", m)
    after = m.lord_events_after(t_kill)
    assert [n for _, n in after] == ["uB"], f"lord hooks after the kill: {after}"
    print(f"\nsA killed -> uB lord hook after {after[0][0] - t_kill} ms")
    ub = m.uuid("uB")
    wait_for(lambda: (r := m.report("uB")) and (r["valor"], r["uuid"], r["votes"]) == (200, ub, 2),
             10, "uB's quorum report: itself with 2 votes (uB + sB)", m)
    mark = ul.now_ms()
    time.sleep(1.5)
    assert m.lords() == ["uB"] and m.lord_events_after(mark) == [], m.describe()
    assert not ul.last_lord_state(m.events_path("sB"))[0], m.describe()
