"""ssh into containers (root; CI runs as root), as a customer does it: a real OpenSSH sshd configured from
packaging/ssh/sshd_legion.conf (port, host key and paths changed for the test), libnss_legion resolving the
containers' users (enabled in a private mount namespace's nsswitch.conf, so the machine's own is untouched),
legion-shell setuid root as ForceCommand, and the keys the nodes write from the store. A key added with
`legion admin container ssh-keys` logs in to a shell inside the running runc container — its uid, host name,
cgroup, seccomp filter, never root; removing the key locks the login out; another container's user with the
same key gets nothing; `legion container enter` gives operators the same entry.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port
from test_containers import seccomp_profile  # noqa: F401  (fixture)
from test_hosting import hosting_cluster, wait_for

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="runc containers and a setuid helper need root (CI runs as root)")

MULTIARCH_LIB = Path("/usr/lib/x86_64-linux-gnu")


@pytest.fixture
def ssh_lab(legion_bin, repo_root, seccomp_profile):  # noqa: F811
    for tool in ("runc", "sshd", "cc"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            subprocess.run([str(repo_root / "scripts" / "setup"), "--test"], check=True)
    # Root-owned, not group/world-writable from / down: sshd's StrictModes checks the keys' path (not under /tmp).
    keys_root = Path(tempfile.mkdtemp(prefix="legion-ssh-", dir="/run"))
    keys_root.chmod(0o755)
    helper_dir = Path(tempfile.mkdtemp(prefix="legion-ssh-bin-", dir="/usr/local/lib"))
    helper_dir.chmod(0o755)
    work = Path(tempfile.mkdtemp(prefix="lssh"))
    nss = MULTIARCH_LIB / "libnss_legion.so.2"
    had_nss = nss.exists()
    sshd = None
    gen = hosting_cluster(legion_bin, repo_root, runtime="runc",
                          hosting_extra=f'seccomp = "{seccomp_profile}"\nssh_keys_dir = "{keys_root}/{{node}}"\n')
    try:
        subprocess.run([str(repo_root / "scripts" / "build-ssh"), str(work)], check=True, capture_output=True, timeout=120)
        if not had_nss:
            shutil.copy(work / "libnss_legion.so.2", nss)
        helper = helper_dir / "legion-shell"
        shutil.copy(work / "legion-shell", helper)
        os.chown(helper, 0, 0)
        helper.chmod(0o4755)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "customer@test", "-f", str(work / "client")], check=True)
        port = free_port()
        config = (repo_root / "packaging" / "ssh" / "sshd_legion.conf").read_text()
        replacements = {
            "Port 3022": f"Port {port}\nListenAddress 127.0.0.1",
            "PidFile /run/sshd-legion.pid": f"PidFile {work}/sshd.pid",
            "HostKey /etc/ssh/ssh_host_ed25519_key": f"HostKey {work}/host_key",
            "HostKey /etc/ssh/ssh_host_rsa_key\n": "",
            "AuthorizedKeysFile /run/legion/ssh-keys/%u": f"AuthorizedKeysFile {keys_root}/node1/%u {keys_root}/node2/%u {keys_root}/node3/%u",
            "ForceCommand /usr/local/lib/legion/legion-shell": f"ForceCommand {helper}",
        }
        for old, new in replacements.items():
            assert old in config, f"packaging/ssh/sshd_legion.conf no longer has {old!r}"
            config = config.replace(old, new)
        (work / "sshd_config").write_text(config)
        nsswitch = Path("/etc/nsswitch.conf").read_text()
        lines = [(line + " legion") if line.startswith(("passwd:", "group:")) else line for line in nsswitch.splitlines()]
        (work / "nsswitch.conf").write_text("\n".join(lines) + "\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        check = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(work / "sshd_config")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        log = open(work / "sshd.log", "w")
        sshd = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                 f"mount --bind {work}/nsswitch.conf /etc/nsswitch.conf && exec /usr/sbin/sshd -D -e -f {work}/sshd_config"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        cluster = next(gen)
        yield cluster, port, work, keys_root
    finally:
        if sshd is not None:
            os.killpg(sshd.pid, signal.SIGTERM)
            sshd.wait(timeout=10)
        try:
            next(gen)
        except StopIteration:
            pass
        if not had_nss:
            nss.unlink(missing_ok=True)
        shutil.rmtree(helper_dir, ignore_errors=True)
        shutil.rmtree(keys_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def ssh(port: int, work: Path, user: int, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-p", str(port), "-i", str(work / "client"), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
                           f"{user}@127.0.0.1", command], capture_output=True, text=True, timeout=30)


WHO = "id -u; id -g; hostname; pwd; grep Seccomp: /proc/self/status; grep NoNewPrivs /proc/self/status; grep memory /proc/self/cgroup; ls /containers"


def test_a_key_from_the_store_logs_in_to_a_shell_inside_the_container_and_removing_it_locks_out(ssh_lab):
    c, port, work, keys_root = ssh_lab
    uid = c.containers()["web2"]
    other = c.containers()["web3"]
    keys = work / "keys"
    keys.write_text((work / "client.pub").read_text())
    c.admin("container", "ssh-keys", str(uid), "--file", str(keys))
    key_file = keys_root / "node2" / str(uid)
    assert wait_for(lambda: "customer@test" in key_file.read_text(), 15), c.log("node2")[-2000:]
    assert key_file.stat().st_uid == 0 and key_file.stat().st_mode & 0o022 == 0

    t0 = time.monotonic()
    r = ssh(port, work, uid, WHO)
    login_ms = (time.monotonic() - t0) * 1000
    assert r.returncode == 0, r.stderr + (work / "sshd.log").read_text()[-2000:]
    out = r.stdout.splitlines()
    assert out[0] == str(uid) and out[1] == str(uid), out          # the container's user, never root
    assert out[2] == "web2", out                                    # the container's host name
    assert out[3] == f"/containers/{uid}", out
    assert out[4].split() == ["Seccomp:", "2"], out                 # the container's seccomp filter applies
    assert out[5].split() == ["NoNewPrivs:", "1"], out
    assert out[6].endswith(f"/legion/node2/{uid}"), out             # inside its memory cgroup: its limits hold
    assert out[7:] == [str(uid)], out                               # sees only its own home under /containers
    print(f"\nssh login + command + exit: {login_ms:.0f} ms")

    # The same key does not open another container (its keys file does not hold it), nor root.
    assert ssh(port, work, other, "true").returncode != 0
    assert ssh(port, work, 0, "true").returncode != 0
    # A user of the containers' range with no container here gets nothing either.
    assert ssh(port, work, 39999, "true").returncode != 0

    # Operators enter the same way (runc exec), as the container's user.
    e = subprocess.run([str(c.legion), "container", "enter", str(uid), "--", "sh", "-c", "id -u; hostname"], capture_output=True, text=True, timeout=30)
    assert e.returncode == 0 and e.stdout.split() == [str(uid), "web2"], e.stdout + e.stderr
    bad = subprocess.run([str(c.legion), "container", "enter", "39999", "--", "true"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "not running on this server" in bad.stderr, bad.stderr

    # Removing the key in the store locks the login out (no restart needed).
    keys.write_text("")
    c.admin("container", "ssh-keys", str(uid), "--file", str(keys))
    assert wait_for(lambda: not key_file.exists(), 15), c.log("node2")[-2000:]
    r = ssh(port, work, uid, "true")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr
