"""HTTPS with SNI: the router presents, per TLS ClientHello, the certificate a vassal carried in its
subscription (`--subscribe2 …,sni_key=KEY,sni_crt=CRT`, uwsgi.it's `ssl-domain`), a default certificate
to clients without a matching name, and tells the backend `HTTPS=on` / `X-Forwarded-Proto: https`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, ul

APP = """
import json
def application(env, start_response):
    body = json.dumps({"https": env.get("HTTPS", ""), "proto": env.get("HTTP_X_FORWARDED_PROTO", ""),
                       "port": env.get("SERVER_PORT", "")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def served_common_name(port: int, server_name: str | None) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    out = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True, text=True, timeout=10)
    return out.stdout.strip().split("CN")[-1].lstrip(" =")


def https_get(port: int, host: str) -> dict:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return json.loads(body)


def https_router(legion_bin, tmp_path: Path, name: str, default: tuple[Path, Path], procs: list,
                 fast_path: bool = True) -> tuple[int, int]:
    """Starts one `legion node` with an HTTP(S) router (default certificate `default`); returns (https, subscription)."""
    http_port, https_port, sub_port, legion_port = free_port(), free_port(), free_port(udp=True), free_port(udp=True)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"""
[node]
name = "{name}"
data_dir = "{tmp_path / 'data'}"
[legion]
name = "{name}"
bind = "127.0.0.1:{legion_port}"
valor = 1
secret = "aes-256-cbc:x"
[router]
http = "127.0.0.1:{http_port}"
https = "127.0.0.1:{https_port}"
https_certificate = "{default[0]}"
https_key = "{default[1]}"
subscription = "127.0.0.1:{sub_port}"
fast_path = {str(fast_path).lower()}
""")
    procs.append(subprocess.Popen([str(legion_bin), "node", "--config", str(cfg)], stdout=open(tmp_path / "node.log", "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True))
    time.sleep(0.5)
    return https_port, sub_port


def kill_all(procs: list) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "general-path"])
def test_sni_certificates_from_subscriptions_and_https_vars(legion_bin, tmp_path: Path, fast_path: bool):
    uwsgi = ul.ensure_uwsgi_python3()
    default_crt, default_key = make_cert(tmp_path, "default.test")
    site_crt, site_key = make_cert(tmp_path, "secure.example.com")
    app_port = free_port()
    (tmp_path / "app.py").write_text(APP)
    procs: list = []
    try:
        https_port, sub_port = https_router(legion_bin, tmp_path, "tls", (default_crt, default_key), procs, fast_path)
        procs.append(subprocess.Popen(
            [uwsgi, "--plugin", "python3", "--master", "--processes", "1", "--socket", f"127.0.0.1:{app_port}",
             "--wsgi-file", str(tmp_path / "app.py"), "--die-on-term",
             "--subscribe2", f"server=127.0.0.1:{sub_port},key=secure.example.com,sni_key={site_key},sni_crt={site_crt}"],
            stdout=open(tmp_path / "vassal.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 15
        name = ""
        while time.monotonic() < deadline:
            try:
                name = served_common_name(https_port, "secure.example.com")
                if name == "secure.example.com":
                    break
            except OSError:
                pass
            time.sleep(0.2)
        log = (tmp_path / "node.log").read_text()
        assert name == "secure.example.com", f"SNI certificate from the subscription not served (got {name!r}); log:\n{log[-2000:]}"
        assert served_common_name(https_port, "other.example.org") == "default.test"
        assert served_common_name(https_port, None) == "default.test"
        env = https_get(https_port, "secure.example.com")
        assert env == {"https": "on", "proto": "https", "port": str(https_port)}, env
    finally:
        kill_all(procs)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/O=Legion Test/CN={name}",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True, timeout=60)
    return crt, key


def make_client_cert(directory: Path, ca: tuple[Path, Path], cn: str, subject: str | None = None) -> tuple[Path, Path]:
    key, csr, crt = directory / f"{cn}.key", directory / f"{cn}.csr", directory / f"{cn}.crt"
    subprocess.run(["openssl", "req", "-utf8", "-newkey", "rsa:2048", "-nodes", "-subj", subject or f"/C=IT/O=Customers/CN={cn}",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
                    "-days", "2", "-out", str(crt)], check=True, capture_output=True, timeout=60)
    return crt, key


CERT_APP = """
import json
def application(env, start_response):
    body = json.dumps({"dn": env.get("HTTPS_DN"), "has_cc": "BEGIN CERTIFICATE" in env.get("HTTPS_CC", "")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


def tls_get(port: int, host: str, client: tuple[Path, Path] | None = None, chunked: bool = False) -> dict:
    """GET / (or, `chunked`, a chunked POST: the fast path bridges it to the general router, which must still
    see the certificate the fast path verified)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            if chunked:
                tls.sendall(f"POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                            "5\r\nhello\r\n0\r\n\r\n".encode())
            else:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return json.loads(body)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "general-path"])
def test_client_certificates_per_domain_required_and_optional(legion_bin, tmp_path: Path, fast_path: bool):
    """uwsgi.it's ssl-ca-domain: `sni_ca=!CA` makes a client certificate signed by CA mandatory for that name,
    `sni_ca=CA` checks it only when presented; the backend gets HTTPS_DN (and HTTPS_CC). Other names are untouched."""
    uwsgi = ul.ensure_uwsgi_python3()
    default_crt, default_key = make_cert(tmp_path, "default.test")
    strict_crt, strict_key = make_cert(tmp_path, "strict.example.com")
    loose_crt, loose_key = make_cert(tmp_path, "loose.example.com")
    ca = make_ca(tmp_path, "Customer CA")
    other_ca = make_ca(tmp_path, "Other CA")
    alice = make_client_cert(tmp_path, ca, "alice")
    mallory = make_client_cert(tmp_path, other_ca, "mallory")
    # Attributes beyond C/O/CN and bytes beyond ASCII: both paths write the DN as uWSGI does (X509_NAME_oneline).
    zoe = make_client_cert(tmp_path, ca, "zoe", subject="/C=IT/O=Società Clienti/OU=Ops/serialNumber=42/CN=Zoë")
    (tmp_path / "app.py").write_text(CERT_APP)
    procs: list = []
    try:
        https_port, sub_port = https_router(legion_bin, tmp_path, "mtls", (default_crt, default_key), procs, fast_path)
        for name, crt, key, ca_value in (("strict.example.com", strict_crt, strict_key, f"!{ca[0]}"),
                                         ("loose.example.com", loose_crt, loose_key, str(ca[0]))):
            procs.append(subprocess.Popen(
                [uwsgi, "--plugin", "python3", "--master", "--processes", "1", "--socket", f"127.0.0.1:{free_port()}",
                 "--wsgi-file", str(tmp_path / "app.py"), "--die-on-term",
                 "--subscribe2", f"server=127.0.0.1:{sub_port},key={name},sni_key={key},sni_crt={crt},sni_ca={ca_value}"],
                stdout=open(tmp_path / f"vassal-{name}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 15
        result = None
        while time.monotonic() < deadline:
            # Both subscriptions (with their CAs) must have arrived: a handshake made before the strict one's
            # CA was known asks for no certificate.
            try:
                result = tls_get(https_port, "strict.example.com", alice)
                tls_get(https_port, "loose.example.com")
                if result.get("dn"):
                    break
            except (OSError, AssertionError):
                pass
            time.sleep(0.2)
        log = (tmp_path / "node.log").read_text()
        assert result == {"dn": "/C=IT/O=Customers/CN=alice", "has_cc": True}, f"{result}; log:\n{log[-2000:]}"
        assert tls_get(https_port, "strict.example.com", alice, chunked=True) == result
        # Required: no certificate, or one from another CA, fails the handshake (or gets no answer).
        for client in (None, mallory):
            with pytest.raises((ssl.SSLError, ConnectionError, AssertionError, OSError)):
                tls_get(https_port, "strict.example.com", client)
        # Optional: without a certificate the request goes through without a DN; with one it carries the DN.
        assert tls_get(https_port, "loose.example.com") == {"dn": None, "has_cc": False}
        assert tls_get(https_port, "loose.example.com", alice)["dn"] == "/C=IT/O=Customers/CN=alice"
        assert tls_get(https_port, "loose.example.com", zoe)["dn"] == "/C=IT/O=Societ\\xC3\\xA0 Clienti/OU=Ops/serialNumber=42/CN=Zo\\xC3\\xAB"
        assert tls_get(https_port, "strict.example.com", zoe, chunked=True)["dn"] == tls_get(https_port, "strict.example.com", zoe)["dn"]
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError, OSError)):
            tls_get(https_port, "loose.example.com", mallory)
        # Names without sni_ca never ask for a certificate.
        assert served_common_name(https_port, "other.example.org") == "default.test"
        assert procs[0].poll() is None, "the router died"
    finally:
        kill_all(procs)
