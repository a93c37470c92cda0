"""Shared helpers for the multi-process integration tests (Python 3.11, pytest).

Run:  python3 -m pytest -v tests/integration            (needs the `legion` binary: `swift build` first,
                                                           or LEGION_BIN=/path/to/legion)

Nothing is skipped: a missing `legion` binary or an uninstallable uWSGI makes the tests FAIL with a message.
Every process a test starts runs in its own process group and is SIGKILLed at teardown.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts" / "lib"))

import uwsgi_legion as ul  # noqa: E402  (scripts/lib/uwsgi_legion.py)

LEGION_NAME = "mylegion"
SECRET = "aes-128-cbc:SECRET"


# ---------------------------------------------------------------------------------------------- paths / binaries


def legion_binary_path() -> Path:
    env = os.environ.get("LEGION_BIN")
    return Path(env) if env else REPO_ROOT / ".build" / "debug" / "legion"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def legion_bin() -> Path:
    p = legion_binary_path()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"legion binary not found or not executable at {p}: run `swift build` in {REPO_ROOT} "
                    f"or set LEGION_BIN=/path/to/legion", pytrace=False)
    return p


@pytest.fixture(scope="session")
def uwsgi_bin() -> str:
    try:
        return ul.ensure_uwsgi()  # installs Debian's uwsgi-core with apt-get if missing (root)
    except RuntimeError as e:
        pytest.fail(f"Debian's uWSGI is needed for the interop tests: {e}", pytrace=False)


# ---------------------------------------------------------------------------------------------- ports

_handed_out: set[int] = set()


def free_port(udp: bool = False) -> int:
    """A loopback port free for both TCP and UDP right now, never handed out twice in this session."""
    p = ul.free_port(udp=udp, avoid=_handed_out)
    _handed_out.add(p)
    return p


def free_ports(n: int, udp: bool = False) -> list[int]:
    return [free_port(udp) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- processes


def tail(path: Path | str, n: int = 30) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"({path}: no log)"
    return f"--- last {min(n, len(lines))} lines of {path} ---\n" + "\n".join(lines[-n:])


def kill_group(pid: int, sig: int = signal.SIGKILL) -> float:
    """Signal pid's process group if pid leads one, else just pid. Returns time.monotonic() before the signal.
    pid <= 1 is ignored (0 or -1 would signal our own group / everything)."""
    if pid <= 1:
        return time.monotonic()
    try:
        own_group = os.getpgid(pid) == pid
    except OSError:
        own_group = False
    t = time.monotonic()
    try:
        if own_group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except OSError:
        pass
    return t


def proc_start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rfind(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def thread_report(pid: int) -> str:
    """Each thread of a process: name, state, CPU ticks and where the kernel has it wait (for a hung node: a
    cooperative-pool thread parked in futex_wait means a task blocked its thread)."""
    out = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError as e:
        return f"no /proc/{pid}: {e}"
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            comm = Path(base, "comm").read_text().strip()
            stat = Path(base, "stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            wchan = Path(base, "wchan").read_text().strip() or "-"
            syscall = Path(base, "syscall").read_text().split()[0] if os.access(Path(base, "syscall"), os.R_OK) else "?"
        except OSError:
            continue
        out.append(f"{tid} {comm:<16} state {fields[0]} utime {fields[11]} stime {fields[12]} wchan {wchan} syscall {syscall}")
    return "\n".join(out)


def boot_ticks_now() -> int:
    """Current time in /proc/PID/stat start-time units (clock ticks since boot)."""
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def processes_running(binary: Path, started_after_ticks: int = 0) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes executing `binary` that started at/after the given boot tick."""
    want = os.path.realpath(binary)
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        except OSError:
            continue
        if exe != want or not ul.pid_alive(pid):
            continue
        st = proc_start_ticks(pid)
        if st is None or st < started_after_ticks:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        out.append((pid, cmd.strip()))
    return out


class ProcessTracker:
    """Starts processes in their own process group and SIGKILLs every group at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.extra_pids: set[int] = set()

    def start(self, argv: list[str], log_path: Path | str, cwd: Path | str | None = None,
              env: dict | None = None) -> subprocess.Popen:
        log = open(log_path, "ab")
        try:
            p = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.procs.append(p)
        return p

    def track(self, pid: int) -> None:
        """Remember a pid started by someone else (e.g. a node started by `legion cluster up`)."""
        if pid and pid > 1:
            self.extra_pids.add(pid)

    def kill(self, p: subprocess.Popen) -> float:
        t = kill_group(p.pid)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return t

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                kill_group(p.pid)
        for pid in self.extra_pids:
            if ul.pid_alive(pid):
                kill_group(pid)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs():
    t = ProcessTracker()
    yield t
    t.kill_all()


@pytest.fixture(scope="module")
def module_procs():
    t = ProcessTracker()
    yield t
    t.kill_all()


# ---------------------------------------------------------------------------------------------- our node configs


def write_node_toml(path: Path, *, name: str, data_dir: Path, bind: str, nodes: list[str], valor: int,
                    quorum: int, events: Path, legion: str = LEGION_NAME, secret: str = SECRET,
                    mode: str = "compat", freq_s: int = 1, tolerance_s: int = 3) -> Path:
    """A `legion node --config FILE` configuration whose lord/unlord hooks append `EVENT EPOCH_MS` lines
    to `events` (same format as scripts/lib/uwsgi_legion.py's uWSGI hooks)."""
    q = json.dumps  # TOML basic strings accept JSON string escapes for plain ASCII
    text = "\n".join([
        "[node]",
        f"name = {q(name)}",
        f"data_dir = {q(str(data_dir))}",
        "",
        "[legion]",
        f"name = {q(legion)}",
        f"mode = {q(mode)}",
        f"bind = {q(bind)}",
        f"nodes = [{', '.join(q(n) for n in nodes)}]",
        f"valor = {valor}",
        f"quorum = {quorum}",
        f"secret = {q(secret)}",
        "",
        "[legion.timing]",
        f"freq_s = {freq_s}",
        f"tolerance_s = {tolerance_s}",
        "",
        "[legion.hooks]",
        f"lord = {q(f'echo lord $(date +%s%3N) node={name} >> {shlex.quote(str(events))}')}",
        f"unlord = {q(f'echo unlord $(date +%s%3N) node={name} >> {shlex.quote(str(events))}')}",
        "",
        "[vip]",
        'driver = "none"',
        "",
    ])
    path.write_text(text)
    data_dir.mkdir(parents=True, exist_ok=True)
    return path


def read_audit(data_dir: Path) -> list[dict]:
    """Our node's election audit log (DATA_DIR/audit.jsonl); unparsable lines are skipped."""
    out = []
    try:
        for line in (data_dir / "audit.jsonl").read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    except OSError:
        pass
    return out
