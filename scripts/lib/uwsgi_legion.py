#!/usr/bin/env python3
"""Run a Legion of Debian's real uWSGI (2.0.21, package ``uwsgi-core``) on loopback.

Used by ``scripts/bench-failover`` and ``tests/integration/``; stdlib only (``cryptography`` is imported lazily,
only to decode announces seen by an :class:`AnnounceObserver`).

What a node is::

    uwsgi --master --processes 1 --die-on-term --socket 127.0.0.1:SOCKPORT
          --legion "NAME 127.0.0.1:UDPPORT VALOR aes-128-cbc:SECRET"
          --legion-node "NAME 127.0.0.1:OTHERPORT" ...   (every other member, plus any observer address)
          --legion-quorum "NAME Q" --legion-freq F --legion-tolerance T
          --legion-lord "NAME cmd:..." --legion-unlord "NAME cmd:..." (+ join / node-joined / node-left)

Debian facts (checked on 2.0.21-5.1): the Legion subsystem is compiled into ``uwsgi-core`` itself, no
``--plugin`` is needed (``/usr/bin/uwsgi`` is an alternatives symlink to ``/usr/bin/uwsgi-core``). Without a
request plugin uWSGI prints a "no request plugin is loaded" warning and runs anyway. SIGTERM makes a uWSGI
2.0 master *reload* (new uuid, i.e. it leaves and re-joins the legion) unless ``--die-on-term`` is given,
which we always pass; SIGINT/SIGQUIT stop it (with a ``dead=1`` announce).

Every node runs in its own session/process group (pgid == master pid), so ``killpg(SIGKILL)`` takes down the
master, its worker and any hook process at once.

Hooks: every hook appends one line ``EVENT EPOCH_MS node=LABEL valor=V`` to ``WORKDIR/LABEL.events``
(EVENT in lord, unlord, join, node-joined, node-left). The format starts like the Swift nodes' hook lines
(``lord $(date +%s%3N)``) so :func:`read_events` parses both. When the legion has a VIP, the lord hook also
starts an emulated VIP: this very file run as ``vip-serve``, an HTTP responder bound to the VIP address:port
(any 127/8 address works on Linux without configuring it) that answers ``GET /.legion/lord`` with
``{"name": LABEL, "valor": V, ...}``; its pid goes to ``WORKDIR/LABEL.vip.pid``. The unlord hook kills it.
The responder binds with a retry loop (the previous Lord's socket may still be open) and exits on its own
when the uWSGI master that started it is gone. :meth:`UwsgiLegion.kill_node` also kills it, emulating a
machine whose VIP disappears with it.

Command line (mostly for manual checks)::

    python3 scripts/lib/uwsgi_legion.py demo [--rounds N]      # 3-node legion, kill the Lord N times, print gaps
    python3 scripts/lib/uwsgi_legion.py decode --secret aes-128-cbc:secret HEX
    python3 scripts/lib/uwsgi_legion.py vip-serve ...          # used by the lord hook
"""
from __future__ import annotations

# Imports are kept light: the lord hook starts this file as the VIP responder, and its start-up time adds
# to the measured uWSGI failover. Heavier modules are imported inside the functions that need them.
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable, NamedTuple

MODULE_PATH = os.path.abspath(__file__)
DEFAULT_LEGION = "mylegion"
DEFAULT_SECRET = "aes-128-cbc:SECRET"
DEFAULT_VIP = "127.0.0.101:18481"
LORD_PATH = "/.legion/lord"
HOST = "127.0.0.1"

# ------------------------------------------------------------------------------------------------ helpers


def now_ms() -> int:
    return int(time.time() * 1000)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {addr!r} must be HOST:PORT")
    return host, int(port)


def check_loopback(addr: str) -> None:
    """Refuse anything outside 127.0.0.0/8: these tools only ever talk to loopback."""
    host, _ = split_addr(addr)
    if not host.startswith("127."):
        raise ValueError(f"{addr}: only 127.0.0.0/8 addresses are allowed")


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (a SIGKILLed master stays a zombie until its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X", b"")


def port_free(port: int, host: str = HOST, udp: bool = False) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        if not udp:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(udp: bool = False, host: str = HOST, avoid: Iterable[int] = ()) -> int:
    """A port the kernel considers free right now (TCP or UDP), not in `avoid`."""
    avoid = set(avoid)
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        try:
            s.bind((host, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        # both protocols free, so a port can be used for either without surprises
        if port not in avoid and port_free(port, host, udp=not udp):
            return port
    raise RuntimeError("could not find a free port")


def read_events(path: str) -> list[tuple[str, int, str]]:
    """Parse a hook event file: lines ``EVENT EPOCH_MS [anything]`` -> [(event, ms, rest)]; junk lines skipped."""
    out: list[tuple[str, int, str]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(None, 2)
                if len(parts) >= 2 and parts[1].isdigit():
                    out.append((parts[0], int(parts[1]), parts[2].strip() if len(parts) > 2 else ""))
    except FileNotFoundError:
        pass
    return out


def last_lord_state(path: str) -> tuple[bool, int | None]:
    """(is_lord, ms of that event) from the last lord/unlord line of an event file."""
    for ev, ms, _ in reversed(read_events(path)):
        if ev == "lord":
            return True, ms
        if ev == "unlord":
            return False, ms
    return False, None


def http_get_lord(vip: str, timeout: float = 0.5) -> dict | None:
    """GET http://VIP/.legion/lord -> parsed JSON on HTTP 200, else None (no exception)."""
    import http.client
    host, port = split_addr(vip)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", LORD_PATH, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll pred() until truthy (returned) or timeout (returns None). Always bounded."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def kill_pidfile(path: str, sig: int = signal.SIGKILL) -> None:
    try:
        with open(path) as f:
            pid = int(f.read().strip() or "0")
    except (OSError, ValueError):
        return
    if pid > 1:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    try:
        os.unlink(path)
    except OSError:
        pass


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            pid = int(stat[stat.rfind(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def procs_mentioning(text: str) -> list[int]:
    """Live uWSGI processes and VIP responders (not us, nor our ancestors) whose command line contains `text`."""
    skip = _ancestors()
    found = []
    needle = text.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in skip:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        ours = b"uwsgi" in os.path.basename(argv[0]) or b"vip-serve" in argv
        if ours and any(needle in a for a in argv) and pid_alive(int(d)):
            found.append(int(d))
    return found


# ------------------------------------------------------------------------------------------------ uwsgi binary


def find_uwsgi() -> str | None:
    import shutil
    env = os.environ.get("UWSGI_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    for cand in (shutil.which("uwsgi"), "/usr/bin/uwsgi-core", shutil.which("uwsgi-core")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def ensure_uwsgi(install: bool = True) -> str:
    """Path of Debian's uwsgi binary; installs ``uwsgi-core`` with apt-get (root) if missing."""
    path = find_uwsgi()
    if path or not install:
        if not path:
            raise RuntimeError("uwsgi not found: install Debian's package with `apt-get install -y uwsgi-core`")
        return path
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "uwsgi-core"]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not run apt-get to install uwsgi-core: {e}") from e
    path = find_uwsgi()
    if not path:
        raise RuntimeError("`apt-get install -y uwsgi-core` failed:\n" + (r.stdout + r.stderr)[-2000:])
    return path


def apt_install(packages: list[str], present: Callable[[], bool], what: str | None = None) -> None:
    """Make `present()` true by installing Debian `packages` with apt-get (root); runs `apt-get update` and
    retries once if the first install fails. No-op when already present. Raises RuntimeError on failure."""
    if present():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    out = ""
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        out = r.stdout + r.stderr
        if r.returncode != 0 or not present():
            u = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            out = u.stdout + u.stderr + r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not run apt-get to install {' '.join(packages)}: {e}") from e
    if not present():
        raise RuntimeError(f"`{' '.join(cmd)}` did not provide {what or ' '.join(packages)}:\n{out[-2000:]}")


UWSGI_PLUGIN_DIR = "/usr/lib/uwsgi/plugins"


def uwsgi_plugin_present(name: str) -> bool:
    return os.path.exists(os.path.join(UWSGI_PLUGIN_DIR, f"{name}_plugin.so"))


def ensure_uwsgi_python3() -> str:
    """Debian's uwsgi binary with the python3 request plugin (``uwsgi-plugin-python3``); installs if missing."""
    path = ensure_uwsgi()
    apt_install(["uwsgi-plugin-python3"], lambda: uwsgi_plugin_present("python3"),
                f"{UWSGI_PLUGIN_DIR}/python3_plugin.so")
    return path


def uwsgi_version(binary: str) -> str:
    r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return r.stdout.strip()


# ------------------------------------------------------------------------------------------------ wire decoding


def parse_secret(spec: str) -> tuple[str, bytes, bytes]:
    """``CIPHER:SECRET[ IV]`` -> (cipher, secret, iv) as uWSGI splits it (spec §2.1)."""
    cipher, sep, rest = spec.partition(":")
    if not sep:
        raise ValueError(f"{spec!r}: expected CIPHER:SECRET")
    secret, _, iv = rest.partition(" ")
    return cipher, secret.encode(), iv.encode()


def legion_key_iv(spec: str) -> tuple[str, bytes, bytes]:
    """Key = secret NUL-padded to the key length (no KDF); IV = given IV padded with ASCII '0' (spec §2.4)."""
    import re
    cipher, secret, iv = parse_secret(spec)
    m = re.fullmatch(r"aes-(128|192|256)-cbc", cipher.lower())
    if not m:
        raise ValueError(f"cipher {cipher!r} unsupported here (use aes-128/192/256-cbc)")
    klen = int(m.group(1)) // 8
    return cipher, secret[:klen].ljust(klen, b"\0"), iv[:16].ljust(16, b"0")


def parse_vars(block: bytes) -> list[tuple[str, bytes]]:
    """uwsgi vars block: repeated (u16le keylen, key, u16le vallen, value)."""
    out, i = [], 0
    while i < len(block):
        if i + 2 > len(block):
            raise ValueError("truncated key length")
        kl = int.from_bytes(block[i:i + 2], "little")
        key = block[i + 2:i + 2 + kl]
        i += 2 + kl
        if len(key) != kl or i + 2 > len(block):
            raise ValueError("truncated key / value length")
        vl = int.from_bytes(block[i:i + 2], "little")
        val = block[i + 2:i + 2 + vl]
        i += 2 + vl
        if len(val) != vl:
            raise ValueError("truncated value")
        out.append((key.decode("latin-1"), val))
    return out


def decode_announce(datagram: bytes, spec: str) -> dict:
    """Decrypt and decode one Legion announce (modifier1 109). Raises ValueError on anything invalid."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(datagram) < 4 or datagram[0] != 109:
        raise ValueError("not a legion packet")
    size = int.from_bytes(datagram[1:3], "little")
    _, key, iv = legion_key_iv(spec)
    body = datagram[4:]
    if not body or len(body) % 16:
        raise ValueError("ciphertext is not a whole number of blocks")
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = dec.update(body) + dec.finalize()
    unpad = padding.PKCS7(128).unpadder()
    plain = unpad.update(padded) + unpad.finalize()
    if len(plain) != size:
        raise ValueError(f"cleartext length {len(plain)} != header {size}")
    fields = parse_vars(plain)
    d = {k: v for k, v in fields}
    out: dict = {"order": [k for k, _ in fields]}
    for k in ("legion", "name", "uuid", "lord_uuid", "scroll"):
        if k in d:
            out[k] = d[k].decode("latin-1")
    for k in ("valor", "unix", "lord", "pid", "checksum", "lord_valor"):
        if k in d:
            out[k] = int(d[k] or b"0")
    out["dead"] = "dead" in d
    return out


def uuid_sum(uuid: str) -> int:
    return sum(uuid.encode("latin-1"))


class AnnounceObserver:
    """A passive UDP sink listed as an extra ``legion-node`` destination: members send it their announces,
    it never answers, so it is not a member. Keeps the latest decoded announce per sender uuid."""

    def __init__(self, port: int, secret: str = DEFAULT_SECRET, host: str = HOST):
        self.addr = f"{host}:{port}"
        self.secret = secret
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.latest: dict[str, dict] = {}
        self.errors = 0
        self.packets = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"observer-{port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                a = decode_announce(data, self.secret)
            except Exception:  # noqa: BLE001 - any bad datagram just counts as an error
                self.errors += 1
                continue
            a["recv"] = time.monotonic()
            with self._lock:
                self.packets += 1
                if a.get("dead"):
                    self.latest.pop(a.get("uuid", ""), None)
                else:
                    self.latest[a.get("uuid", "")] = a

    def snapshot(self, max_age: float | None = None) -> list[dict]:
        """Latest announce of every sender heard within max_age seconds (all if None)."""
        t = time.monotonic()
        with self._lock:
            return [dict(a) for a in self.latest.values() if max_age is None or t - a["recv"] <= max_age]

    def by_pid(self, pid: int, max_age: float | None = None) -> dict | None:
        for a in self.snapshot(max_age):
            if a.get("pid") == pid:
                return a
        return None

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)


# ------------------------------------------------------------------------------------------------ VIP responder


def _answer(conn: socket.socket, info: dict) -> None:
    """One HTTP/1.0 exchange: GET /.legion/lord -> 200 JSON, anything else -> 404; then close."""
    try:
        conn.settimeout(2.0)
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        parts = data.split(b"\r\n", 1)[0].split()
        ok = len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?", 1)[0] == LORD_PATH.encode()
        body = json.dumps(info).encode() if ok else b'{"error":"not found"}'
        head = (f"HTTP/1.0 {'200 OK' if ok else '404 Not Found'}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        conn.sendall(head + body)
    except OSError:
        pass
    finally:
        conn.close()


def serve_vip(bind: str, name: str, valor: int, watch_pid: int = 0, bind_timeout: float = 15.0,
              max_seconds: float = 6 * 3600) -> int:
    """Bind the emulated VIP (retrying while the old Lord's socket closes) and answer until told to stop,
    until watch_pid (the uWSGI master that ran the lord hook) is gone, or after max_seconds."""
    check_loopback(bind)
    host, port = split_addr(bind)
    deadline = time.monotonic() + bind_timeout
    while True:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind((host, port))
            srv.listen(64)
            break
        except OSError as e:
            srv.close()
            if time.monotonic() >= deadline or (watch_pid and not pid_alive(watch_pid)):
                print(f"{time.strftime('%T')} vip-serve {name}: cannot bind {bind}: {e}", file=sys.stderr)
                return 1
            time.sleep(0.01)
    # same keys as our nodes' answer; the hook does not know the uWSGI node's uuid
    info = {"name": name, "uuid": None, "valor": valor, "since": now_ms(), "pid": watch_pid, "impl": "uwsgi"}
    stop_at = time.monotonic() + max_seconds

    def watchdog() -> None:
        while True:
            if (watch_pid and not pid_alive(watch_pid)) or time.monotonic() > stop_at:
                os._exit(0)  # the kernel closes the listening socket
            time.sleep(0.05)

    threading.Thread(target=watchdog, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"{time.strftime('%T')} vip-serve {name}: serving {bind} since_ms={info['since']}",
          file=sys.stderr, flush=True)
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            continue
        threading.Thread(target=_answer, args=(conn, info), daemon=True).start()


# ------------------------------------------------------------------------------------------------ the legion


class NodeSpec(NamedTuple):
    label: str          # our name for the node (event files, VIP JSON); uWSGI itself announces the hostname
    valor: int          # 1..65535 (uWSGI truncates larger values, spec §2.6)
    udp_port: int       # legion port
    socket_port: int    # uwsgi --socket port (TCP)


_ALL_LEGIONS: list["UwsgiLegion"] = []


def _stop_everything() -> None:
    for lg in list(_ALL_LEGIONS):
        try:
            lg.stop_all(graceful=False)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


atexit.register(_stop_everything)


class UwsgiLegion:
    """A set of real uWSGI legion members on 127.0.0.1, plus their hook logs and emulated VIP."""

    def __init__(self, nodes: list[NodeSpec], *, legion: str = DEFAULT_LEGION, secret: str = DEFAULT_SECRET,
                 quorum: int = 2, freq: int = 1, tolerance: int = 3, vip: str | None = DEFAULT_VIP,
                 peers: Iterable[str] = (), workdir: str | None = None, uwsgi_bin: str | None = None,
                 extra_args: Iterable[str] = ()):
        """`peers`: extra legion-node destinations every node sends to (other implementations' members,
        observers). The uWSGI members always list each other."""
        import tempfile
        if len({n.label for n in nodes}) != len(nodes):
            raise ValueError("node labels must be unique")
        for n in nodes:
            if not 1 <= n.valor <= 65535:
                raise ValueError(f"{n.label}: valor must be 1..65535")
        self.nodes = {n.label: n for n in nodes}
        self.legion, self.secret, self.quorum = legion, secret, quorum
        self.freq, self.tolerance = freq, tolerance
        self.vip = vip
        if vip:
            check_loopback(vip)
        self.peers = list(peers)
        for p in self.peers:
            check_loopback(p)
        self.extra_args = list(extra_args)
        self.uwsgi = uwsgi_bin or ensure_uwsgi()
        self._own_workdir = workdir is None
        self.workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="uwsgi-legion-"))
        os.makedirs(self.workdir, exist_ok=True)
        self.keep_workdir = not self._own_workdir  # a temporary workdir is removed by stop_all() unless set
        self.last_kill: tuple[str, float, int] | None = None  # (label, monotonic, epoch ms) of the last kill_node
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, object] = {}
        _ALL_LEGIONS.append(self)

    # -- paths
    def events_path(self, label: str) -> str:
        return os.path.join(self.workdir, f"{label}.events")

    def log_path(self, label: str) -> str:
        return os.path.join(self.workdir, f"{label}.log")

    def vip_pidfile(self, label: str) -> str:
        return os.path.join(self.workdir, f"{label}.vip.pid")

    # -- command line
    def _hook(self, label: str, event: str, extra: str = "") -> str:
        import shlex
        n = self.nodes[label]
        line = f'echo "{event} $(date +%s%3N) node={label} valor={n.valor}" >> {shlex.quote(self.events_path(label))}'
        return f"{self.legion} cmd:{line}{extra}"

    def command(self, label: str) -> list[str]:
        import shlex
        n = self.nodes[label]
        L = self.legion
        argv = [self.uwsgi, "--master", "--processes", "1", "--die-on-term",
                "--socket", f"{HOST}:{n.socket_port}",
                "--legion", f"{L} {HOST}:{n.udp_port} {n.valor} {self.secret}"]
        for other in self.nodes.values():
            if other.label != label:
                argv += ["--legion-node", f"{L} {HOST}:{other.udp_port}"]
        for p in self.peers:
            argv += ["--legion-node", f"{L} {p}"]
        argv += ["--legion-quorum", f"{L} {self.quorum}",
                 "--legion-freq", str(self.freq), "--legion-tolerance", str(self.tolerance)]
        lord_extra = unlord_extra = ""
        if self.vip:
            pidf = shlex.quote(self.vip_pidfile(label))
            viplog = shlex.quote(os.path.join(self.workdir, f"{label}.vip.log"))
            serve = " ".join(shlex.quote(a) for a in [
                sys.executable, "-S", MODULE_PATH, "vip-serve", "--bind", self.vip, "--name", label,
                "--valor", str(n.valor)])
            # $PPID in the hook shell is the uWSGI master (the legion thread forks /bin/sh -c)
            lord_extra = f"; {serve} --watch-pid $PPID < /dev/null >> {viplog} 2>&1 & echo $! > {pidf}"
            unlord_extra = f"; if [ -f {pidf} ]; then kill $(cat {pidf}) 2>/dev/null; rm -f {pidf}; fi"
        argv += ["--legion-lord", self._hook(label, "lord", lord_extra),
                 "--legion-unlord", self._hook(label, "unlord", unlord_extra),
                 "--legion-join", self._hook(label, "join"),
                 "--legion-node-joined", self._hook(label, "node-joined"),
                 "--legion-node-left", self._hook(label, "node-left")]
        return argv + self.extra_args

    # -- lifecycle
    def alive(self, label: str) -> bool:
        p = self.procs.get(label)
        return p is not None and p.poll() is None and pid_alive(p.pid)

    def pid(self, label: str) -> int | None:
        p = self.procs.get(label)
        return p.pid if p is not None and p.poll() is None else None

    def start_node(self, label: str) -> int:
        """Start one node (no-op if running); returns the master pid."""
        if self.alive(label):
            return self.procs[label].pid
        n = self.nodes[label]
        busy = [f"tcp {n.socket_port}"] if not port_free(n.socket_port) else []
        busy += [f"udp {n.udp_port}"] if not port_free(n.udp_port, udp=True) else []
        if busy:
            raise RuntimeError(f"{label}: port(s) {', '.join(busy)} on {HOST} already in use")
        log = open(self.log_path(label), "ab")
        self._logs[label] = log
        log.write(f"\n==== start {time.strftime('%F %T')} ====\n".encode())
        log.flush()
        self.procs[label] = subprocess.Popen(self.command(label), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.procs[label].pid

    def start_all(self) -> None:
        for label in self.nodes:
            self.start_node(label)

    def kill_node(self, label: str, sig: int = signal.SIGKILL) -> float:
        """Signal the node's whole process group; with SIGKILL also drop its VIP (like a dead machine) and reap.
        Returns time.monotonic() taken just before the signal."""
        p = self.procs.get(label)
        t = time.monotonic()
        self.last_kill = (label, t, now_ms())
        if p is None:
            return t
        try:
            os.killpg(p.pid, sig)
        except OSError:
            pass
        if sig == signal.SIGKILL:
            kill_pidfile(self.vip_pidfile(label))
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return t

    def stop_node(self, label: str, graceful: bool = True, timeout: float = 5.0) -> None:
        p = self.procs.get(label)
        if p is not None and p.poll() is None and graceful:
            try:
                os.kill(p.pid, signal.SIGINT)  # uWSGI: stop, with a dead=1 announce
                p.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if p is not None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # leftovers of the group (worker, hook shells)
            except OSError:
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        kill_pidfile(self.vip_pidfile(label))

    def stop_all(self, graceful: bool = True) -> None:
        """Stop every node (SIGINT, then SIGKILL of the group after 5 s) and responder, then SIGKILL any uWSGI or
        vip-serve process whose command line still mentions the workdir; remove a temporary workdir."""
        labels = [lb for lb in self.procs if self.procs[lb].poll() is None]
        if graceful:
            for lb in labels:
                try:
                    os.kill(self.procs[lb].pid, signal.SIGINT)
                except OSError:
                    pass
            wait_until(lambda: all(self.procs[lb].poll() is not None for lb in labels), 5.0)
        for lb in list(self.procs):
            self.stop_node(lb, graceful=False)
        for pid in procs_mentioning(self.workdir):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for f in self._logs.values():
            try:
                f.close()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass
        self._logs.clear()
        if self in _ALL_LEGIONS:
            _ALL_LEGIONS.remove(self)
        if not self.keep_workdir and not self.leftovers():
            import shutil
            shutil.rmtree(self.workdir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        return procs_mentioning(self.workdir)

    def __enter__(self) -> "UwsgiLegion":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # -- observation
    def events(self, label: str) -> list[tuple[str, int, str]]:
        return read_events(self.events_path(label))

    def first_lord_event_after(self, ms: int, exclude: Iterable[str] = ()) -> tuple[str, int] | None:
        """(label, ms) of the earliest `lord` hook event at or after epoch-ms `ms` on any other node."""
        ex = set(exclude)
        hits = [(t, lb) for lb in self.nodes if lb not in ex for ev, t, _ in self.events(lb) if ev == "lord" and t >= ms]
        return (min(hits)[1], min(hits)[0]) if hits else None

    def lords(self) -> list[str]:
        """Running nodes whose last lord/unlord hook event is `lord`."""
        return [lb for lb in self.nodes if self.alive(lb) and last_lord_state(self.events_path(lb))[0]]

    def lord(self) -> str | None:
        lords = self.lords()
        return lords[0] if len(lords) == 1 else None

    def expected_lord(self) -> str | None:
        """Highest valor among running nodes (ties: unknown, uuid-dependent -> None)."""
        running = [self.nodes[lb] for lb in self.nodes if self.alive(lb)]
        if not running:
            return None
        best = max(n.valor for n in running)
        top = [n.label for n in running if n.valor == best]
        return top[0] if len(top) == 1 else None

    def vip_lord(self, timeout: float = 0.5) -> str | None:
        if not self.vip:
            return None
        d = http_get_lord(self.vip, timeout)
        return d.get("name") if d else None

    def healthy(self) -> str | None:
        """(uWSGI-only legions) Name of the Lord if: all nodes run, exactly one node is Lord by hooks, it is the
        highest valor, and (with a VIP) the VIP answers with its name. Else None."""
        if not all(self.alive(lb) for lb in self.nodes):
            return None
        lords = self.lords()
        if len(lords) != 1 or lords[0] != self.expected_lord():
            return None
        if self.vip and self.vip_lord() != lords[0]:
            return None
        return lords[0]

    def wait_healthy(self, timeout: float = 30.0, settle: float = 1.0) -> str:
        """Wait until healthy() holds continuously for `settle` seconds; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        since, who = None, None
        while time.monotonic() < deadline:
            h = self.healthy()
            if h and h == who:
                if since is not None and time.monotonic() - since >= settle:
                    return h
            else:
                since, who = (time.monotonic(), h) if h else (None, None)
            time.sleep(0.05)
        raise TimeoutError(f"uWSGI legion not healthy after {timeout:.0f}s: {self.describe()}")

    def wait_for_lord(self, timeout: float, exclude: Iterable[str] = ()) -> str | None:
        ex = set(exclude)
        return wait_until(lambda: next((lb for lb in self.lords() if lb not in ex), None), timeout)

    def quorum_reports(self, label: str) -> list[dict]:
        """uWSGI's "WE HAVE QUORUM" log lines: the Lord voted for (valor, uuid), the checksum and the votes
        (1 + number of members that agreed)."""
        import re
        rx = re.compile(r"WE HAVE QUORUM FOR LEGION (\S+) !!! \(valor: (\d+) uuid: (\S+) checksum: (\d+) votes: (\d+)\)")
        out = []
        try:
            with open(self.log_path(label), encoding="utf-8", errors="replace") as f:
                for line in f:
                    m = rx.search(line)
                    if m:
                        out.append({"legion": m.group(1), "valor": int(m.group(2)), "uuid": m.group(3),
                                    "checksum": int(m.group(4)), "votes": int(m.group(5))})
        except FileNotFoundError:
            pass
        return out

    def describe(self) -> str:
        parts = []
        for lb, n in self.nodes.items():
            is_lord, _ = last_lord_state(self.events_path(lb))
            parts.append(f"{lb}(valor {n.valor}, {'up' if self.alive(lb) else 'down'}"
                         f"{', lord' if is_lord else ''})")
        vip = f"; VIP {self.vip} -> {self.vip_lord()}" if self.vip else ""
        return " ".join(parts) + vip + f"; logs in {self.workdir}"

    def kill_lord(self) -> tuple[str, float]:
        """SIGKILL the current Lord (by hooks; must be exactly one). Returns (label, monotonic kill time)."""
        lord = self.lord()
        if lord is None:
            raise RuntimeError(f"no unique Lord to kill: {self.describe()}")
        return lord, self.kill_node(lord)


def three_node_legion(workdir: str | None = None, *, udp_base: int = 18301, socket_base: int = 18401,
                      vip: str | None = DEFAULT_VIP, freq: int = 1, tolerance: int = 3, quorum: int = 2,
                      **kw) -> UwsgiLegion:
    """u1/u2/u3 with valor 300/200/100, UDP udp_base.., uwsgi sockets socket_base.. (not started)."""
    nodes = [NodeSpec(f"u{i + 1}", 300 - 100 * i, udp_base + i, socket_base + i) for i in range(3)]
    return UwsgiLegion(nodes, workdir=workdir, vip=vip, freq=freq, tolerance=tolerance, quorum=quorum, **kw)


def measure_vip_failover(vip: str, old_name: str, t_kill: float, timeout: float,
                         poll: float = 0.010) -> tuple[float | None, dict | None]:
    """Poll the VIP every `poll` s from t_kill until a node other than `old_name` answers.
    Returns (seconds since t_kill, the answer) or (None, None) after `timeout` s."""
    deadline = t_kill + timeout
    nxt = time.monotonic()
    while time.monotonic() < deadline:
        d = http_get_lord(vip, timeout=min(0.5, max(0.05, deadline - time.monotonic())))
        t = time.monotonic()
        if d and d.get("name") not in (None, old_name):
            return t - t_kill, d
        nxt += poll
        if nxt < t:
            nxt = t
        time.sleep(max(0.0, nxt - time.monotonic()))
    return None, None


# ------------------------------------------------------------------------------------------------ CLI


def _demo(args) -> int:
    import random
    lg = three_node_legion(args.workdir, udp_base=args.udp_base, socket_base=args.socket_base, vip=args.vip)
    print(f"uwsgi: {lg.uwsgi} ({uwsgi_version(lg.uwsgi)}); workdir {lg.workdir}", flush=True)
    gaps = []
    try:
        t0 = time.monotonic()
        lg.start_all()
        lord = lg.wait_healthy(timeout=30)
        print(f"Lord {lord} after {time.monotonic() - t0:.2f}s; VIP {lg.vip} -> {lg.vip_lord()}", flush=True)
        for r in range(args.rounds):
            time.sleep(random.uniform(0, lg.freq))
            old, t_kill = lg.kill_lord()
            gap, ans = measure_vip_failover(lg.vip, old, t_kill, 30)
            new = lg.lord()
            print(f"round {r + 1}: killed {old}; VIP moved to {ans and ans.get('name')} after "
                  f"{'timeout' if gap is None else f'{gap * 1000:.0f} ms'} (lord by hooks: {new})", flush=True)
            if gap is not None:
                gaps.append(gap * 1000)
            lg.start_node(old)
            lg.wait_healthy(timeout=30)
        for lb in lg.nodes:
            print(lb, "quorum reports:", lg.quorum_reports(lb)[-1:], flush=True)
    finally:
        lg.stop_all()
        left = lg.leftovers()
        print(f"stopped; leftover processes: {left or 'none'}")
    if gaps:
        print("gaps ms:", " ".join(f"{g:.0f}" for g in gaps))
    return 0 if len(gaps) == args.rounds else 1


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vip-serve", help="emulated VIP responder (run by the lord hook)")
    v.add_argument("--bind", required=True)
    v.add_argument("--name", required=True)
    v.add_argument("--valor", type=int, default=0)
    v.add_argument("--watch-pid", type=int, default=0)
    v.add_argument("--bind-timeout", type=float, default=15.0)
    v.add_argument("--max-seconds", type=float, default=6 * 3600)
    d = sub.add_parser("demo", help="3-node uWSGI legion: elect, kill the Lord N times, print VIP gaps")
    d.add_argument("--rounds", type=int, default=2)
    d.add_argument("--workdir")
    d.add_argument("--vip", default=DEFAULT_VIP)
    d.add_argument("--udp-base", type=int, default=18301)
    d.add_argument("--socket-base", type=int, default=18401)
    c = sub.add_parser("decode", help="decode a legion datagram given in hex")
    c.add_argument("--secret", default=DEFAULT_SECRET)
    c.add_argument("hex")
    a = ap.parse_args(argv)
    if a.cmd == "vip-serve":
        return serve_vip(a.bind, a.name, a.valor, a.watch_pid, a.bind_timeout, a.max_seconds)
    if a.cmd == "decode":
        print(json.dumps(decode_announce(bytes.fromhex(a.hex), a.secret), indent=1))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return _demo(a)


if __name__ == "__main__":
    sys.exit(main())
