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


def test_sni_certificates_from_subscriptions_and_https_vars(legion_bin, tmp_path: Path):
    uwsgi = ul.ensure_uwsgi_python3()
    default_crt, default_key = make_cert(tmp_path, "default.test")
    site_crt, site_key = make_cert(tmp_path, "secure.example.com")
    http_port, https_port, sub_port, legion_port, app_port = free_port(), free_port(), free_port(udp=True), free_port(udp=True), free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"""
[node]
name = "tls"
data_dir = "{tmp_path / 'data'}"
[legion]
name = "tls"
bind = "127.0.0.1:{legion_port}"
valor = 1
secret = "aes-256-cbc:x"
[router]
http = "127.0.0.1:{http_port}"
https = "127.0.0.1:{https_port}"
https_certificate = "{default_crt}"
https_key = "{default_key}"
subscription = "127.0.0.1:{sub_port}"
""")
    (tmp_path / "app.py").write_text(APP)
    procs = []
    try:
        procs.append(subprocess.Popen([str(legion_bin), "node", "--config", str(cfg)], stdout=open(tmp_path / "node.log", "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        time.sleep(0.5)
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
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
