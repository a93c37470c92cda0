"""`legion emperor DIR`: our Emperor driving Debian's real uWSGI 2.0.21 vassals (`uwsgi --ini NAME`, python3).

Every test starts its own Emperor on its own vassal directory (under a per-test base directory that is also the
Emperor's cwd) with short timings (--freq 0.5, --throttle 300, --max-throttle 1500, --reload-mercy 3), reads its
stats server (one raw JSON document per connection) and its log (Emperor + vassal output), and ends with a
SIGTERM that must make the Emperor exit 0 leaving no process behind. Whatever is left (matched by
/proc/PID/cwd under the test's base directory) is SIGKILLed at teardown and reported as a failure.

 1. spawn: HTTP served, stats ready=1, vassal env (UWSGI_EMPEROR_FD=3, no NOTIFY_SOCKET, UWSGI_VASSAL_* -> UWSGI_*)
 2. touch -> graceful reload: no failed request (one every 50 ms), same master pid, respawns == 1
 3. rm -> stopped: port closed within 2 s, gone from stats, master exited
 4. kill -9 of a loyal master -> respawned at once (a new pid serves within 1 s), not blacklisted
 5. crash loop: throttle delays grow, blacklisted; fixed + touched -> serves at once; SIGURG empties the blacklist
 6. hung vassal (heartbeat = 1): reload, then kill of the whole group; serves again; no orphan worker
 7. tyrant mode: root-owned file refused; file owned by 65534 runs as uid 65534
 8. SIGHUP reloads every vassal; SIGTERM exits 0 within the reload mercy, nothing left
 9. bad input (malformed ini, symlink out of the dir, 2 MiB file, unowned domain) refused; a good vassal keeps serving
10. 200 vassals boot and accept connections within 10 s (time printed)

Run:  LEGION_BIN=/path/to/legion python3 -m pytest -q -s tests/integration/test_emperor.py -p no:cacheprovider
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, free_ports, kill_group, legion_binary_path, tail, ul

HOST = "127.0.0.1"
FREQ = "0.5"
THROTTLE_MS = 300
MAX_THROTTLE_MS = 1500
RELOAD_MERCY = 3.0

APP = r'''
import os, time

def application(env, start_response):
    path = env.get("PATH_INFO", "/")
    if path == "/hang":
        time.sleep(3600)
    if path == "/env":
        body = "\n".join(f"{k}={v}" for k, v in sorted(os.environ.items())).encode()
    else:
        body = b"ok %d %d" % (os.getpid(), os.getppid())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def emperor_bin(tmp_path_factory) -> Path:
    """A private copy of the legion binary, so a concurrent rebuild cannot change it under us."""
    src = legion_binary_path()
    if not (src.is_file() and os.access(src, os.X_OK)):
        pytest.fail(f"legion binary not found or not executable at {src}: build it or set LEGION_BIN",
                    pytrace=False)
    dst = tmp_path_factory.mktemp("emperor-bin") / "legion"
    shutil.copy2(src, dst)
    return dst


@pytest.fixture(scope="session")
def uwsgi_python3() -> str:
    try:
        return ul.ensure_uwsgi_python3()
    except RuntimeError as e:
        pytest.fail(f"Debian's uWSGI with the python3 plugin is needed: {e}", pytrace=False)


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except (OSError, urllib.error.URLError, ValueError) as e:  # noqa: F841
        return None


def served_by(port: int, timeout: float = 2.0) -> tuple[int, int] | None:
    """(worker pid, its parent = the master) of a GET / answered with 200, else None."""
    r = http_get(port, "/", timeout)
    if not r or r[0] != 200 or not r[1].startswith("ok "):
        return None
    _, worker, master = r[1].split()
    return int(worker), int(master)


def tcp_accepts(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def proc_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat[stat.rfind(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    out = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def procs_under(base: Path) -> list[tuple[int, str]]:
    """Live processes (not us) whose cwd is `base` or below it: the Emperor and every vassal process."""
    base_s = os.path.realpath(base)
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            cwd = os.readlink(f"/proc/{d}/cwd")
        except OSError:
            continue
        if (cwd == base_s or cwd.startswith(base_s + "/")) and ul.pid_alive(int(d)):
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = "?"
            out.append((int(d), cmd.strip()))
    return out


def ini(port: int, *extra: str, app: str = "app.py", socket_opt: str = "http-socket") -> str:
    return "\n".join(["[uwsgi]", "plugin = python3", f"{socket_opt} = {HOST}:{port}", f"wsgi-file = {app}",
                      "master = true", "processes = 1", *extra, ""])


def touch(path: Path) -> None:
    """Bump the mtime by a full second ahead of the previous one (a same-second touch must not be missed)."""
    st = path.stat()
    t = max(time.time(), st.st_mtime + 1.0)
    os.utime(path, (t, t))


class Emperor:
    def __init__(self, base: Path, binary: Path, uwsgi: str):
        self.base = base
        self.dir = base / "vassals"
        self.dir.mkdir(mode=0o755)
        self.log = base / "emperor.log"
        self.binary = binary
        self.uwsgi = uwsgi
        self.stats_port = free_port()
        self.proc: subprocess.Popen | None = None
        (self.dir / "app.py").write_text(APP)

    # -- lifecycle
    def start(self, *args: str, env: dict | None = None, check_up: bool = True) -> "Emperor":
        argv = [str(self.binary), "emperor", str(self.dir), "--stats", f"{HOST}:{self.stats_port}",
                "--freq", FREQ, "--throttle", str(THROTTLE_MS), "--max-throttle", str(MAX_THROTTLE_MS),
                "--reload-mercy", str(RELOAD_MERCY), "--curse-tolerance", "3", "--binary", self.uwsgi, *args]
        full_env = dict(os.environ)
        full_env.pop("UWSGI_EMPEROR_FD", None)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.update(env or {})
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.base, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if check_up and not ul.wait_until(lambda: self.stats(timeout=0.5) is not None or self.proc.poll() is not None,
                                          10):
            pytest.fail(f"emperor stats server never answered\n{self.tail()}", pytrace=False)
        if check_up and self.proc.poll() is not None:
            pytest.fail(f"emperor exited with {self.proc.returncode}\n{self.tail()}", pytrace=False)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc and self.proc.poll() is None, f"emperor not running\n{self.tail()}"
        os.kill(self.proc.pid, sig)

    def shutdown(self, limit: float = RELOAD_MERCY + 2.0) -> float:
        """SIGTERM: must exit 0 within `limit` seconds and leave no process behind. Returns the time taken."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            pytest.fail(f"emperor still running {limit} s after SIGTERM\n{self.tail(40)}", pytrace=False)
        took = time.monotonic() - t0
        assert rc == 0, f"emperor exited with {rc} after SIGTERM\n{self.tail(40)}"
        left = ul.wait_until(lambda: not procs_under(self.base), 1.0)
        assert left, f"processes left after the emperor exited: {procs_under(self.base)}\n{self.tail(40)}"
        return took

    def hard_cleanup(self) -> list[tuple[int, str]]:
        """SIGKILL everything of this test. Returns the processes left behind by an Emperor that had already
        exited (a leak); when the test died with the Emperor still running, its vassals are just killed."""
        leftovers = procs_under(self.base) if self.proc and self.proc.poll() is not None else []
        if self.proc and self.proc.poll() is None:
            kill_group(self.proc.pid)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(20):
            left = procs_under(self.base)
            if not left:
                break
            for pid, _ in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        return leftovers

    # -- observation
    def stats(self, timeout: float = 2.0) -> dict | None:
        try:
            with socket.create_connection((HOST, self.stats_port), timeout=timeout) as s:
                s.settimeout(timeout)
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            return json.loads(data)
        except (OSError, ValueError):
            return None

    def vassal(self, name: str) -> dict | None:
        st = self.stats()
        if not st:
            return None
        return next((v for v in st["vassals"] if v["id"] == name), None)

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def mark(self) -> int:
        return len(self.text())

    def lines(self, pattern: str, since: int = 0) -> list[str]:
        rx = re.compile(pattern)
        return [ln for ln in self.text()[since:].splitlines() if rx.search(ln)]

    def wait_log(self, pattern: str, timeout: float, since: int = 0, count: int = 1) -> list[str]:
        found = ul.wait_until(lambda: (lambda m: m if len(m) >= count else None)(self.lines(pattern, since)),
                              timeout)
        if not found:
            pytest.fail(f"no log line matching {pattern!r} (x{count}) within {timeout} s\n{self.tail(60)}",
                        pytrace=False)
        return found

    def emperor_lines(self, n: int = 40) -> str:
        lines = [ln for ln in self.text().splitlines() if "legion.emperor" in ln]
        return "--- last emperor log lines ---\n" + "\n".join(lines[-n:])

    def tail(self, n: int = 30) -> str:
        return tail(self.log, n) + "\n" + self.emperor_lines()

    def write(self, name: str, text: str) -> Path:
        p = self.dir / name
        tmp = self.base / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, p)   # appear atomically: the emperor never sees a half-written file
        return p

    def wait_serving(self, port: int, timeout: float) -> tuple[int, int]:
        r = ul.wait_until(lambda: served_by(port, 0.5), timeout)
        if not r:
            pytest.fail(f"nothing serves on port {port} within {timeout} s\n{self.tail(60)}", pytrace=False)
        return r


@pytest.fixture
def emperor(emperor_bin, uwsgi_python3):
    """Factory: emperor() -> a not-yet-started Emperor in a fresh base directory (world-readable, for tyrant)."""
    made: list[Emperor] = []

    def make() -> Emperor:
        base = Path(tempfile.mkdtemp(prefix="legion-emperor-test-", dir="/tmp"))
        os.chmod(base, 0o755)
        e = Emperor(base, emperor_bin, uwsgi_python3)
        made.append(e)
        return e

    yield make
    problems = []
    for e in made:
        left = e.hard_cleanup()
        if left:
            problems.append(f"{e.base}: {left}")
        else:
            shutil.rmtree(e.base, ignore_errors=True)
    assert not problems, f"processes left behind (SIGKILLed now): {problems}"


# ---------------------------------------------------------------------------------------------- 1. spawn


def test_spawn_serves_ready_and_vassal_environment(emperor):
    em = emperor()
    port = free_port()
    em.write("app1.ini", ini(port))
    em.start(env={"UWSGI_VASSAL_FOO": "bar", "NOTIFY_SOCKET": "/run/systemd/notify-test-should-not-leak"})
    worker, master = em.wait_serving(port, 10)
    em.wait_log(r"vassal app1\.ini started \(pid \d+\)", 2)

    v = ul.wait_until(lambda: (lambda x: x if x and x["ready"] == 1 else None)(em.vassal("app1.ini")), 3)
    assert v, f"stats never showed app1.ini ready=1: {em.stats()}\n{em.tail()}"
    assert v["pid"] == master, f"stats pid {v['pid']} is not the master {master} answering"
    assert v["status"] == "running", v
    st = em.stats()
    assert st["pid"] == em.proc.pid and st["emperor"] == [str(em.dir)], st

    env = proc_environ(master)
    assert env.get("UWSGI_EMPEROR_FD") == "3", f"vassal env: {env}"
    assert "NOTIFY_SOCKET" not in env, f"NOTIFY_SOCKET leaked into the vassal: {env['NOTIFY_SOCKET']}"
    assert env.get("UWSGI_FOO") == "bar", f"UWSGI_VASSAL_FOO=bar did not arrive as UWSGI_FOO=bar: " \
        f"{ {k: v for k, v in env.items() if k.startswith('UWSGI')} }"
    assert "UWSGI_VASSAL_FOO" not in env, "UWSGI_VASSAL_FOO should be translated, not passed through"
    assert Path(os.readlink(f"/proc/{master}/cwd")) == em.dir
    em.shutdown()


# ---------------------------------------------------------------------------------------------- 2. touch


def test_touch_graceful_reload_no_failed_request(emperor):
    em = emperor()
    port = free_port()
    cfg = em.write("app1.ini", ini(port))
    em.start()
    worker0, master0 = em.wait_serving(port, 10)
    assert em.vassal("app1.ini")["pid"] == master0

    results: list[tuple[float, object]] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            results.append((time.monotonic(), served_by(port, 5.0)))
            time.sleep(0.05)

    th = threading.Thread(target=hammer, daemon=True)
    th.start()
    time.sleep(0.3)
    mark = em.mark()
    touch(cfg)
    em.wait_log(r"vassal app1\.ini changed: graceful reload", 3, since=mark)
    # the reload is done when a new worker answers
    new = ul.wait_until(lambda: any(r and r[0] != worker0 for _, r in results[-3:]), 10)
    time.sleep(0.5)
    stop.set()
    th.join(10)
    failed = [t for t, r in results if r is None]
    assert new, f"no new worker after the touch (old worker {worker0})\n{em.tail(60)}"
    assert not failed, f"{len(failed)} of {len(results)} requests failed during the graceful reload\n{em.tail(60)}"
    v = em.vassal("app1.ini")
    assert v["pid"] == master0, f"master pid changed {master0} -> {v['pid']} (graceful reload keeps the master)"
    assert v["respawns"] == 1, f"respawns {v['respawns']} != 1: {v}"
    masters = {r[1] for _, r in results if r}
    assert masters == {master0}, f"requests answered by masters {masters}, expected only {master0}"
    print(f"\n[touch] {len(results)} requests, 0 failed, master {master0} kept")
    em.shutdown()


# ---------------------------------------------------------------------------------------------- 3. rm


def test_rm_stops_vassal(emperor):
    em = emperor()
    port, port2 = free_ports(2)
    cfg = em.write("app1.ini", ini(port))
    em.write("app2.ini", ini(port2))
    em.start()
    worker, master = em.wait_serving(port, 10)
    em.wait_serving(port2, 10)
    t0 = time.monotonic()
    cfg.unlink()
    closed = ul.wait_until(lambda: not tcp_accepts(port, 0.2), 2.0)
    took = time.monotonic() - t0
    assert closed, f"port {port} still accepting 2 s after rm\n{em.tail(60)}"
    gone = ul.wait_until(lambda: not ul.pid_alive(master) and not ul.pid_alive(worker), 1.0)
    assert gone, f"master {master} / worker {worker} still alive after rm"
    st = em.stats()
    assert [v["id"] for v in st["vassals"]] == ["app2.ini"], f"stats after rm: {st['vassals']}"
    assert not st["blacklist"], st["blacklist"]
    assert served_by(port2), "the other vassal stopped serving"
    em.wait_log(r"vassal app1\.ini removed", 1)
    print(f"\n[rm] port closed {took * 1000:.0f} ms after rm")
    em.shutdown()


# ---------------------------------------------------------------------------------------------- 4. kill -9


def test_kill9_loyal_master_respawned_at_once(emperor):
    em = emperor()
    port = free_port()
    em.write("app1.ini", ini(port))
    em.start()
    worker0, master0 = em.wait_serving(port, 10)
    assert ul.wait_until(lambda: em.vassal("app1.ini")["loyal"] == 1, 3), f"never loyal: {em.vassal('app1.ini')}"
    t0 = time.monotonic()
    os.kill(master0, signal.SIGKILL)
    # a new master (not the killed one, nor init: the old worker may answer once as an orphan before it
    # notices its master is gone) must serve within 1 s
    r = ul.wait_until(lambda: (lambda x: x if x and x[1] not in (master0, 1) and x[0] != worker0 else None)(
        served_by(port, 0.3)), 1.0, interval=0.02)
    took = time.monotonic() - t0
    assert r, f"no new master served within 1 s of kill -9 {master0}\n{em.tail(60)}"
    worker1, master1 = r
    v = em.vassal("app1.ini")
    assert v and v["pid"] == master1, f"stats {v} vs new master {master1}"
    st = em.stats()
    assert not st["blacklist"], f"a loyal vassal got blacklisted: {st['blacklist']}"
    assert not st["throttled"], f"a loyal vassal got throttled: {st['throttled']}"
    assert ul.wait_until(lambda: not ul.pid_alive(worker0), 2), f"old worker {worker0} survived its master"
    print(f"\n[kill -9] new master {master1} served {took * 1000:.0f} ms after the kill")
    em.shutdown()


# ---------------------------------------------------------------------------------------------- 5. crash loop


def test_crash_loop_throttle_blacklist_touch_and_sigurg(emperor):
    em = emperor()
    p1, p2 = free_ports(2)
    cfg1 = em.write("crash1.ini", ini(p1, "need-app = true", app="missing1.py"))
    em.write("crash2.ini", ini(p2, "need-app = true", app="missing2.py"))
    em.start()

    # delays grow +THROTTLE_MS per fast death
    seen: dict[str, list[int]] = {"crash1.ini": [], "crash2.ini": []}

    def observe():
        st = em.stats(0.5)
        for t in (st or {}).get("throttled", []):
            d = seen.setdefault(t["id"], [])
            if not d or d[-1] != t["delay_ms"]:
                d.append(t["delay_ms"])
        return all(len(seen[n]) >= 3 for n in ("crash1.ini", "crash2.ini"))

    ok = ul.wait_until(observe, 8, interval=0.05)
    assert ok, f"throttle delays seen {seen}\n{em.tail(60)}"
    for n in ("crash1.ini", "crash2.ini"):
        d = seen[n]
        assert all(b > a for a, b in zip(d, d[1:])), f"{n} stats delay_ms not growing: {d}"
        assert all(x % THROTTLE_MS == 0 and 0 < x <= MAX_THROTTLE_MS for x in d), f"{n} stats delay_ms: {d}"
    st = em.stats()
    listed = {b["id"]: b for b in st["blacklist"]}
    assert set(listed) == {"crash1.ini", "crash2.ini"}, f"blacklist {st['blacklist']}"
    assert all(b["attempt"] >= 3 for b in listed.values()), st["blacklist"]
    assert em.lines(r"crash1\.ini died after \d+ ms .*respawn throttled \d+ ms, blacklisted")

    # wait until crash1 reaches the max throttle, then fix + touch right after a death: starts at once
    em.wait_log(rf"crash1\.ini died after .*respawn throttled {MAX_THROTTLE_MS} ms", 10)
    # the logged delays: +THROTTLE_MS per fast death, capped at MAX_THROTTLE_MS
    delays = [int(m) for m in re.findall(r"crash1\.ini died after \d+ ms .*?respawn throttled (\d+) ms",
                                         em.text())]
    want = [min(THROTTLE_MS * (i + 1), MAX_THROTTLE_MS) for i in range(len(delays))]
    assert delays == want, f"crash1 logged delays {delays}, expected {want}"
    mark = em.mark()
    em.wait_log(rf"crash1\.ini died after .*respawn throttled {MAX_THROTTLE_MS} ms", 5, since=mark)
    (em.dir / "missing1.py").write_text(APP)
    t0 = time.monotonic()
    touch(cfg1)
    r = ul.wait_until(lambda: served_by(p1, 0.3), 3, interval=0.02)
    took = time.monotonic() - t0
    assert r, f"crash1 not serving after fix + touch\n{em.tail(60)}"
    assert took < MAX_THROTTLE_MS / 1000 * 0.8, f"touch did not start the throttled vassal at once: {took:.2f} s"
    em.wait_log(r"crash1\.ini touched while throttled: starting it now", 1, since=mark)
    st = em.stats()
    assert "crash1.ini" not in {b["id"] for b in st["blacklist"]}, f"loyal crash1 still listed: {st['blacklist']}"
    assert "crash2.ini" in {b["id"] for b in st["blacklist"]}, st["blacklist"]

    # crash2: fix its app (no touch) right after a death at max throttle; SIGURG clears and starts it now
    mark = em.mark()
    em.wait_log(rf"crash2\.ini died after .*respawn throttled {MAX_THROTTLE_MS} ms", 8, since=mark)
    (em.dir / "missing2.py").write_text(APP)
    mark = em.mark()
    t0 = time.monotonic()
    em.signal(signal.SIGURG)
    em.wait_log(r"blacklist cleared", 1, since=mark)
    st = em.stats()
    assert st["blacklist"] == [], f"blacklist after SIGURG: {st['blacklist']}"
    assert st["throttled"] == [], f"throttled after SIGURG: {st['throttled']}"
    r = ul.wait_until(lambda: served_by(p2, 0.3), 3, interval=0.02)
    took2 = time.monotonic() - t0
    assert r, f"crash2 not serving after SIGURG\n{em.tail(60)}"
    assert took2 < MAX_THROTTLE_MS / 1000 * 0.8, f"SIGURG did not start the waiting vassal at once: {took2:.2f} s"
    st = em.stats()
    assert st["blacklist"] == [] and st["throttled"] == [], st
    print(f"\n[crash loop] delays {seen}; touch->serve {took * 1000:.0f} ms; SIGURG->serve {took2 * 1000:.0f} ms")
    em.shutdown()


# ---------------------------------------------------------------------------------------------- 6. hung vassal


def test_hung_vassal_reloaded_then_killed(emperor):
    em = emperor()
    port = free_port()
    em.write("hung.ini", ini(port, "heartbeat = 1"))
    em.start("--required-heartbeat", "3")
    worker0, master0 = em.wait_serving(port, 10)   # makes it loyal
    ok = ul.wait_until(lambda: (em.vassal("hung.ini") or {}).get("last_heartbeat", 0) > 0, 4)
    assert ok, f"no heartbeat ever recorded: {em.vassal('hung.ini')}\n{em.tail()}"
    mark = em.mark()
    hang = socket.create_connection((HOST, port), timeout=2)
    try:
        hang.sendall(b"GET /hang HTTP/1.0\r\nHost: x\r\n\r\n")
        em.wait_log(r"vassal hung\.ini sent no heartbeat for \d+ ms: reloading it", 8, since=mark)
        em.wait_log(r"vassal hung\.ini sent no heartbeat for \d+ ms, even after a reload: killing it", 8,
                    since=mark)
        r = ul.wait_until(lambda: served_by(port, 0.5), 6)
        assert r, f"hung vassal never served again\n{em.tail(60)}"
        worker1, master1 = r
        assert master1 != master0, "the old master still answers"
        assert ul.wait_until(lambda: not ul.pid_alive(worker0) and not ul.pid_alive(master0), 2), \
            f"old master {master0} / hung worker {worker0} still alive (orphan holding the port)"
        v = em.vassal("hung.ini")
        assert v and v["pid"] == master1, v
        holders = [(pid, cmd, proc_ppid(pid)) for pid, cmd in procs_under(em.base)
                   if pid not in (em.proc.pid, master1, worker1)]
        assert not holders, f"extra uwsgi processes (pid, cmd, ppid) after the kill: {holders}; " \
            f"old master {master0} worker {worker0}, new master {master1} worker {worker1}\n{em.tail(60)}"
    finally:
        hang.close()
    print(f"\n[hung] master {master0} -> {master1}")
    em.shutdown()


# ---------------------------------------------------------------------------------------------- 7. tyrant


def test_tyrant_mode(emperor):
    if os.geteuid() != 0:
        pytest.skip("tyrant mode needs root (CI runs as root)")
    em = emperor()
    p_root, p_nobody = free_ports(2)
    em.write("rootfile.ini", ini(p_root))
    nob = em.write("nobody.ini", ini(p_nobody))
    os.chown(nob, 65534, 65534)
    os.chmod(em.dir / "app.py", 0o644)
    em.start("--tyrant")
    worker, master = em.wait_serving(p_nobody, 10)
    em.wait_log(r"\[emperor-tyrant\] invalid permissions for vassal rootfile\.ini", 3)
    assert proc_uid(master) == 65534, f"master {master} runs as uid {proc_uid(master)}"
    assert proc_uid(worker) == 65534, f"worker {worker} runs as uid {proc_uid(worker)}"
    time.sleep(1.5)   # a few rescans: the root-owned file must still never start
    assert not em.lines(r"vassal rootfile\.ini started"), em.lines(r"rootfile")
    assert not tcp_accepts(p_root), "root-owned vassal is listening"
    st = em.stats()
    assert st["emperor_tyrant"] == 1
    assert [v["id"] for v in st["vassals"]] == ["nobody.ini"], st["vassals"]
    v = st["vassals"][0]
    assert v["uid"] == 65534 and v["gid"] == 65534, v
    em.shutdown()


# ---------------------------------------------------------------------------------------------- 8. SIGHUP / SIGTERM


def test_sighup_reloads_all_sigterm_stops_all(emperor):
    em = emperor()
    p1, p2 = free_ports(2)
    em.write("a.ini", ini(p1))
    em.write("b.ini", ini(p2))
    em.start()
    w1, m1 = em.wait_serving(p1, 10)
    w2, m2 = em.wait_serving(p2, 10)
    before = {v["id"]: v["respawns"] for v in em.stats()["vassals"]}
    assert before == {"a.ini": 0, "b.ini": 0}, before
    mark = em.mark()
    em.signal(signal.SIGHUP)
    em.wait_log(r"reloading all vassals", 2, since=mark)
    ok = ul.wait_until(lambda: (lambda a, b: a and b and a[0] != w1 and b[0] != w2)(served_by(p1, 0.5),
                                                                                      served_by(p2, 0.5)), 10)
    assert ok, f"vassals not reloaded (new workers) after SIGHUP\n{em.tail(60)}"
    after = {v["id"]: (v["respawns"], v["pid"]) for v in em.stats()["vassals"]}
    assert after == {"a.ini": (1, m1), "b.ini": (1, m2)}, f"after SIGHUP (respawns, pid): {after}"

    # SIGTERM: exits 0 within the reload mercy, nothing left
    vassal_pids = [pid for pid, _ in procs_under(em.base) if pid != em.proc.pid]
    assert len(vassal_pids) >= 4, procs_under(em.base)
    took = em.shutdown(limit=RELOAD_MERCY + 1.0)
    assert not [p for p in vassal_pids if ul.pid_alive(p)]
    assert em.lines(r"emperor stopped")
    print(f"\n[SIGTERM] emperor exited 0 after {took * 1000:.0f} ms")


# ---------------------------------------------------------------------------------------------- 9. bad input


def test_bad_vassal_files_refused_good_one_keeps_serving(emperor):
    em = emperor()
    good_port, p_bad, p_link, p_big, p_dom, p_okdom = free_ports(6)
    em.write("good.ini", ini(good_port))
    domains = em.base / "domains.txt"
    domains.write_text("mine.example.com\n")
    em.start("--confine-symlinks", "--owned-domains", str(domains))
    worker, master = em.wait_serving(good_port, 10)

    mark = em.mark()
    # malformed ini
    em.write("bad.ini", ini(p_bad) + "this line is garbage !!\n")
    # symlink to a valid ini outside the vassal dir
    outside = em.base / "outside"
    outside.mkdir()
    (outside / "app.py").write_text(APP)
    (outside / "evil.ini").write_text(ini(p_link))
    os.symlink(outside / "evil.ini", em.dir / "evil.ini")
    # a 2 MiB ini (valid syntax: comments)
    em.write("big.ini", ini(p_big) + ("; " + "x" * 1021 + "\n") * 2048)
    # a domain not registered to this customer
    em.write("dom.ini", ini(p_dom, "domain = notmine.example.org"))

    em.wait_log(r"vassal bad\.ini refused: .*is not 'key = value'", 3, since=mark)
    em.wait_log(r"vassal evil\.ini refused: .*outside", 3, since=mark)
    em.wait_log(r"vassal big\.ini refused: .*over the \d+-byte limit", 3, since=mark)
    em.wait_log(r"vassal dom\.ini refused: .*not registered to this customer", 3, since=mark)
    time.sleep(1.2)   # two rescans: still refused, never started
    for name in ("bad.ini", "evil.ini", "big.ini", "dom.ini"):
        assert not em.lines(rf"vassal {re.escape(name)} started"), f"{name} was started:\n{em.tail(60)}"
    for p in (p_bad, p_link, p_big, p_dom):
        assert not tcp_accepts(p), f"a refused vassal listens on {p}"
    st = em.stats()
    assert [v["id"] for v in st["vassals"]] == ["good.ini"], st["vassals"]
    assert served_by(good_port) and em.vassal("good.ini")["pid"] == master, "the good vassal was disturbed"
    assert em.vassal("good.ini")["respawns"] == 0
    em.shutdown()


# ---------------------------------------------------------------------------------------------- 10. 200 vassals


def test_200_vassals_boot_fast(emperor):
    n = 200
    em = emperor()
    ports = free_ports(n)
    for i, port in enumerate(ports):
        # tiny vassals: uwsgi protocol socket, one worker, no threads, no python app
        (em.dir / f"v{i:03d}.ini").write_text("\n".join(["[uwsgi]", f"socket = {HOST}:{port}", "master = true",
                                                         "processes = 1", "disable-logging = true", ""]))
    t0 = time.monotonic()
    em.start("--reload-mercy", "10")
    pending = set(ports)

    def all_accept():
        for p in list(pending):
            if tcp_accepts(p, 0.1):
                pending.discard(p)
        return not pending

    ok = ul.wait_until(all_accept, 20, interval=0.1)
    took = time.monotonic() - t0
    print(f"\n[200 vassals] all accepting after {took:.2f} s" if ok else
          f"\n[200 vassals] {n - len(pending)}/{n} accepting after {took:.2f} s")
    assert ok, f"{len(pending)} of {n} vassals not accepting after 20 s\n{em.tail(40)}"
    st = ul.wait_until(lambda: (lambda x: x if x and len(x["vassals"]) == n and all(v["ready"] == 1 for v in x[
        "vassals"]) else None)(em.stats(5)), 10)
    took_ready = time.monotonic() - t0
    assert st, f"stats never showed {n} ready vassals: {len((em.stats(5) or {}).get('vassals', []))} listed"
    print(f"[200 vassals] all ready=1 in stats after {took_ready:.2f} s")
    assert not st["blacklist"] and not st["throttled"], (st["blacklist"], st["throttled"])
    assert took < 10.0, f"200 vassals took {took:.2f} s to accept (limit 10 s)"
    t1 = time.monotonic()
    em.shutdown(limit=15)
    print(f"[200 vassals] shutdown took {time.monotonic() - t1:.2f} s")


# ---------------------------------------------------------------------------------------------- 11. log rotation


def test_log_file_is_rotated_and_every_writer_keeps_writing(emperor):
    """--log FILE takes the Emperor's and its vassals' output; past --log-max-bytes it is copied to FILE.1 and
    truncated in place (every writer holds it O_APPEND), so the vassals keep logging into FILE."""
    em = emperor()
    port = free_port()
    logfile = em.base / "containers.log"
    em.write("app1.ini", ini(port))
    em.start("--log", str(logfile), "--log-max-bytes", "4096")
    em.wait_serving(port, 10)
    rotated = Path(str(logfile) + ".1")
    for _ in range(20):
        if rotated.exists():
            break
        touch(em.dir / "app1.ini")   # each reload makes the vassal print its banner again
        time.sleep(0.6)
    assert rotated.exists(), f"no {rotated} after several reloads; {logfile} is {logfile.stat().st_size} bytes"
    assert rotated.stat().st_size > 4096
    assert b"legion.emperor" in rotated.read_bytes()
    mark = logfile.stat().st_size
    touch(em.dir / "app1.ini")
    assert ul.wait_until(lambda: logfile.stat().st_size > mark and b"graceful reload" in logfile.read_bytes(), 10), \
        "the Emperor stopped writing to the log after rotating it"
    assert ul.wait_until(lambda: b"uWSGI" in logfile.read_bytes()[mark:] or b"WSGI" in logfile.read_bytes()[mark:], 10), \
        "the vassal stopped writing to the log after the rotation"
    em.shutdown()
