"""Production install (issue 14, first part): `scripts/install --root DIR` lays out the binary, the systemd unit
(Type=notify) and /etc/legion/node.toml, which `legion config check` accepts; a node run as systemd runs it
says READY=1 on $NOTIFY_SOCKET once its Legion service runs and its store is reachable, and STOPPING=1 on SIGTERM.
(systemd itself is not PID 1 in CI: the notify protocol is checked with our own socket.)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import free_port, tail


def test_install_lays_out_binary_unit_and_config(legion_bin, repo_root, tmp_path):
    root = tmp_path / "root"
    r = subprocess.run([str(repo_root / "scripts" / "install"), "--root", str(root), "--binary", str(legion_bin)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    binary = root / "usr/local/bin/legion"
    assert binary.stat().st_mode & 0o755 == 0o755
    unit = (root / "etc/systemd/system/legion.service").read_text()
    for line in ["Type=notify", "ExecStart=/usr/local/bin/legion node --config /etc/legion/node.toml", "Restart=on-failure",
                 "LimitNOFILE=1048576", "StateDirectory=legion"]:
        assert line in unit, line
    config = root / "etc/legion/node.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    assert 'data_dir = "/var/lib/legion"' in config.read_text()
    check = subprocess.run([str(binary), "config", "check", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    # a second install keeps the operator's edited config
    config.write_text(config.read_text() + "\n# edited\n")
    r = subprocess.run([str(repo_root / "scripts" / "install"), "--root", str(root), "--binary", str(legion_bin)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "keeping the existing" in r.stdout
    assert config.read_text().endswith("# edited\n")


def test_install_ssh_lays_out_nss_helper_and_sshd(legion_bin, repo_root, tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nsswitch.conf").write_text("passwd:         files\ngroup:          files\nhosts:          files dns\n")
    r = subprocess.run([str(repo_root / "scripts" / "install"), "--root", str(root), "--binary", str(legion_bin), "--ssh"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    helper = root / "usr/local/lib/legion/legion-shell"
    assert helper.stat().st_mode & 0o4000 and helper.stat().st_uid == 0, "legion-shell must be setuid root"
    assert (root / "usr/lib/x86_64-linux-gnu/libnss_legion.so.2").exists()
    nss = (root / "etc/nsswitch.conf").read_text()
    assert "passwd:         files legion" in nss and "group:          files legion" in nss and "hosts:          files dns\n" in nss
    # a second install does not add it twice
    subprocess.run([str(repo_root / "scripts" / "install"), "--root", str(root), "--binary", str(legion_bin), "--ssh"], check=True,
                   capture_output=True, timeout=120)
    assert (root / "etc/nsswitch.conf").read_text() == nss
    config = root / "etc/ssh/sshd_legion.conf"
    assert "ForceCommand /usr/local/lib/legion/legion-shell" in config.read_text()
    assert 'ssh_keys_dir = "/run/legion/ssh-keys"' in (root / "etc/legion/node.toml").read_text()
    if Path("/usr/sbin/sshd").exists():   # scripts/setup --test installs it: the shipped config is valid for sshd
        t = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], capture_output=True, text=True)
        assert t.returncode == 0 or "no hostkeys available" in t.stderr, t.stderr
    # the NSS module answers the containers' range and nothing else (loaded as glibc would)
    probe = subprocess.run(["python3", "-c", PROBE_NSS, str(root / "usr/lib/x86_64-linux-gnu/libnss_legion.so.2")],
                           capture_output=True, text=True, timeout=30)
    assert probe.stdout.split() == ["30001:30001:/:/bin/sh", "notfound", "notfound", "notfound", "30042"], probe.stdout + probe.stderr


PROBE_NSS = r'''
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
class Passwd(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("passwd", ctypes.c_char_p), ("uid", ctypes.c_uint), ("gid", ctypes.c_uint),
                ("gecos", ctypes.c_char_p), ("dir", ctypes.c_char_p), ("shell", ctypes.c_char_p)]
def getpwnam(name):
    pw, buf, err = Passwd(), ctypes.create_string_buffer(1024), ctypes.c_int(0)
    status = lib._nss_legion_getpwnam_r(name.encode(), ctypes.byref(pw), buf, 1024, ctypes.byref(err))
    return f"{pw.uid}:{pw.gid}:{pw.dir.decode()}:{pw.shell.decode()}" if status == 1 else "notfound"
def getpwuid(uid):
    pw, buf, err = Passwd(), ctypes.create_string_buffer(1024), ctypes.c_int(0)
    return pw.name.decode() if lib._nss_legion_getpwuid_r(uid, ctypes.byref(pw), buf, 1024, ctypes.byref(err)) == 1 else "notfound"
print(getpwnam("30001"), getpwnam("root"), getpwnam("030001"), getpwnam("30000"), getpwuid(30042))
'''


def test_node_tells_systemd_when_it_is_ready_and_when_it_stops(legion_bin, tmp_path):
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(20)
    data_dir = tmp_path / "node"
    store = f"127.0.0.1:{free_port()}"
    config = tmp_path / "node.toml"
    q = json.dumps
    config.write_text("\n".join([
        "[node]", 'name = "solo"', f"data_dir = {q(str(data_dir))}", "",
        "[legion]", 'name = "solo"', f'bind = "127.0.0.1:{free_port()}"', "nodes = []", "valor = 1", "quorum = 1",
        'secret = "aes-256-cbc:solo-secret"', "",
        "[api]", f'bind = "127.0.0.1:{free_port()}"', "",
        "[store]", "id = 1", f"bind = {q(store)}", "peers = []", "",
    ]))
    data_dir.mkdir()
    log = open(tmp_path / "node.log", "w")
    t0 = time.monotonic()
    p = subprocess.Popen([str(legion_bin), "node", "--config", str(config)], env=dict(os.environ, NOTIFY_SOCKET=str(sock_path)),
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        message = listener.recv(4096).decode()
        ready_after = time.monotonic() - t0
        assert "READY=1" in message and "solo" in message, message
        # ready means ready: the store answers (the schema is in place) when READY=1 arrives
        st = subprocess.run([str(legion_bin), "store", "status", "--json", "--store", store, "--timeout", "3"],
                            capture_output=True, text=True, timeout=20)
        assert st.returncode == 0 and json.loads(st.stdout)["leader"], st.stdout + st.stderr
        p.send_signal(signal.SIGTERM)
        message = listener.recv(4096).decode()
        assert "STOPPING=1" in message, message
        assert p.wait(timeout=30) == 0, tail(tmp_path / "node.log")
        print(f"\nREADY=1 after {ready_after:.2f} s; STOPPING=1 on SIGTERM; clean exit")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        listener.close()
