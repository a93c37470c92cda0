"""Metrics, alarm delivery and the dashboard, on the local 3-node hosting cluster (real uWSGI vassals):

- each node samples its containers and its router's domains into its own SQLite metric store; the customer
  metric routes answer from any node (the owning node is asked over the signed peer endpoint); samples survive
  the owning node's restart; another customer is refused;
- an alarm raised while the webhook receiver is down is delivered once it is back, exactly once per channel
  (generic webhook, Slack, Pushover, Pushbullet — the push services pointed at a local receiver), while an
  endpoint that never answers delays only its own deliveries; alarm_freq rate-limits a channel;
- the dashboard in headless Chromium (Debian's chromium + chromedriver, Selenium): an operator sees the Lord
  change live when the Lord is killed, a customer sees their container's graphs, and another customer sees none
  of it. Screenshots of both views go to docs/.

Run:  python3 -m pytest -v -s tests/integration/test_observability.py
"""
from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from test_hosting import DOMAIN, ROUTERS, drop_vassal, get, hosting_cluster, wait_for

APIS = {"node1": "127.0.0.1:17201", "node2": "127.0.0.1:17202", "node3": "127.0.0.1:17203"}
PASSWORDS = {"hoster": "hoster-password-1", "other": "other-password-1"}


class Receiver:
    """A local HTTP endpoint that records every request (the webhook, Slack, Pushover and Pushbullet stand-in)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                with outer.lock:
                    outer.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode()})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def on(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


def api(node: str, method: str, path: str, body=None, user: str = "hoster", raw: bytes | None = None, timeout: float = 20) -> tuple[int, object]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://{APIS[node]}{path}", method=method, data=data, headers={
        "Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode(), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
            return r.status, json.loads(text) if text.strip().startswith((b"{", b"[")) else text.decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def store_rows(c, sql: str, *params: str) -> list[dict]:
    args = [str(c.legion), "store", "query", "--json", sql]
    for p in params:
        args += ["--param", p]
    p = subprocess.run(args, cwd=c.repo, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout) if p.stdout.strip() else []


def restart(c, node: str) -> None:
    pid = c.node_pid(node)
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), 20), f"{node} did not stop:\n{c.log(node)[-2000:]}"
    log = open(c.run_dir / node / "node.log", "ab")
    subprocess.Popen([str(c.legion), "node", "--config", str(c.run_dir / "configs" / f"{node}.toml"), "--data-dir", str(c.run_dir / node)],
                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    (c.run_dir / node / "node.pid").unlink(missing_ok=True)


RECEIVER_PORT = free_port()
METRICS_AND_ALARMS = f"""
[metrics]
interval_s = 1

[alarms]
poll_ms = 200
timeout_ms = 1500
pushover_url = "http://127.0.0.1:{RECEIVER_PORT}/pushover"
pushbullet_url = "http://127.0.0.1:{RECEIVER_PORT}/pushbullet"
"""


@pytest.fixture
def cluster(legion_bin, repo_root):
    yield from hosting_cluster(legion_bin, repo_root, node_extra=METRICS_AND_ALARMS)


def samples(node: str, metric: str, uid: int, user: str = "hoster") -> list:
    status, body = api(node, "GET", f"/api/metrics/container.{metric}/{uid}?last=3600", user=user)
    return body if status == 200 and isinstance(body, list) else []


def test_metrics_answer_from_any_node_survive_a_restart_and_stay_private(cluster):
    c = cluster
    u2 = c.containers()["web2"]
    drop_vassal(c, "node2", u2)
    assert wait_for(lambda: get(ROUTERS["node2"])[0] == 200, 20), c.log("node2")[-3000:]
    for _ in range(20):
        get(ROUTERS["node2"])
    # The container's samples live on node2 and are answered by every node: cpu (cumulative ns) and memory (bytes).
    for node in ("node1", "node2", "node3"):
        assert wait_for(lambda: len(samples(node, "cpu", u2)) >= 3, 20), (node, api(node, "GET", f"/api/metrics/container.cpu/{u2}?last=3600"))
    cpu = samples("node3", "cpu", u2)
    assert all(len(s) == 2 and s[1] > 0 for s in cpu), cpu
    assert [s[0] for s in cpu] == sorted(s[0] for s in cpu), "samples come in time order"
    assert abs(cpu[-1][0] - time.time()) < 30, cpu[-1]
    mem = samples("node1", "mem", u2)
    assert mem and all(s[1] > 1 << 20 for s in mem), mem   # a python3 uWSGI vassal holds more than a MiB
    # uwsgi.it's day form: today's samples (UTC), the same data.
    status, today = api("node1", "GET", f"/api/metrics/container.cpu/{u2}")
    assert status == 200 and len(today) >= 3, today
    # The domain's hits, counted by node2's router and read through node1.
    status, domains = api("node1", "GET", "/api/domains")
    domain_id = next(d["id"] for d in domains if d["name"] == DOMAIN)
    def hits():
        status, body = api("node1", "GET", f"/api/metrics/domain.hits/{domain_id}?last=3600")
        return {e["node"]: e["metrics"] for e in body} if status == 200 else {}
    assert wait_for(lambda: hits().get("node2") and hits()["node2"][-1][1] >= 20, 15), hits()
    # Another customer sees nothing of it.
    status, body = api("node1", "GET", f"/api/metrics/container.cpu/{u2}", user="other")
    assert status == 403 and "not one of yours" in body, (status, body)
    status, body = api("node3", "GET", f"/api/metrics/domain.hits/{domain_id}", user="other")
    assert status == 404, (status, body)
    # Bad input: a clear 400, nothing else.
    status, body = api("node1", "GET", f"/api/metrics/container.cpu/{u2}?last=abc")
    assert status == 400 and "last" in body, (status, body)
    status, body = api("node1", "GET", f"/api/metrics/container.cpu/{u2}?year=2026&month=2&day=31")
    assert status == 400 and "not a date" in body, (status, body)

    # node2 restarts: what it sampled before is still there, and sampling goes on.
    before = samples("node1", "cpu", u2)
    first = before[0]
    restart(c, "node2")
    assert wait_for(lambda: first in samples("node1", "cpu", u2) and samples("node1", "cpu", u2)[-1][0] > before[-1][0] + 2, 40), \
        (first, samples("node1", "cpu", u2)[:3], c.log("node2")[-3000:])
    assert (c.run_dir / "node2" / "metrics.sqlite").exists()


def test_alarms_reach_every_channel_once_after_the_receiver_comes_back(cluster):
    c = cluster
    u2, u3 = c.containers()["web2"], c.containers()["web3"]
    receiver = Receiver(RECEIVER_PORT)
    base = f"http://127.0.0.1:{RECEIVER_PORT}"
    # web3's webhook never answers (a listening socket nobody accepts from): it must not hold web2's alarms back.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    try:
        status, body = api("node1", "POST", f"/api/containers/{u2}", {
            "alarm_webhook": f"{base}/hook", "slack_webhook": f"{base}/slack", "pushover_user": "u-1", "pushover_token": "t-1",
            "pushover_sound": "siren", "pushbullet_token": "pb-secret"})
        assert status == 200, body
        status, body = api("node1", "POST", f"/api/containers/{u3}", {"alarm_webhook": f"http://127.0.0.1:{blackhole.getsockname()[1]}/slow"})
        assert status == 200, body
        # Bad settings are refused with a reason and change nothing.
        status, body = api("node1", "POST", f"/api/containers/{u2}", {"alarm_webhook": "file:///etc/passwd"})
        assert status == 400 and "http" in body, (status, body)
        assert api("node1", "GET", f"/api/containers/{u2}")[1]["alarm_webhook"] == f"{base}/hook"

        # Receiver down: both alarms are stored, their deliveries fail and wait.
        status, body = api("node3", "POST", f"/api/alarms/raise/{u3}", raw=b"slow endpoint alarm")
        assert status == 201, body
        status, body = api("node2", "POST", f"/api/alarms/raise/{u2}", raw="disk full on /data \u00e9".encode())
        assert status == 201, body
        def deliveries(uid):
            return store_rows(c, "SELECT channel, state, attempts, last_error FROM alarm_deliveries WHERE container_id = ? ORDER BY channel", str(uid - 30000))
        assert wait_for(lambda: len(deliveries(u2)) == 4 and all(d["attempts"] >= 2 for d in deliveries(u2)), 20), deliveries(u2)
        assert all(d["state"] == "pending" and "connect" in (d["last_error"] or "").lower() for d in deliveries(u2)), deliveries(u2)

        # Receiver back: each channel gets the alarm once, while web3's endpoint still hangs.
        receiver.start()
        assert wait_for(lambda: all(d["state"] == "delivered" for d in deliveries(u2)), 30), deliveries(u2)
        assert [d["state"] for d in deliveries(u3)] == ["pending"], deliveries(u3)
        time.sleep(3)   # nothing more comes
        for path in ("/hook", "/slack", "/pushover", "/pushbullet"):
            assert len(receiver.on(path)) == 1, (path, receiver.requests)
        hook = receiver.on("/hook")[0]
        payload = json.loads(hook["body"])
        assert payload["container"] == u2 and payload["msg"] == "disk full on /data \u00e9" and payload["level"] == 1, payload
        assert hook["headers"]["idempotency-key"] == f"legion-alarm-{payload['id']}-webhook"
        slack = json.loads(receiver.on("/slack")[0]["body"])
        assert "disk full on /data" in slack["text"] and f"({u2})" in slack["text"], slack
        pushover = receiver.on("/pushover")[0]
        assert pushover["headers"]["content-type"] == "application/x-www-form-urlencoded"
        assert "token=t-1" in pushover["body"] and "user=u-1" in pushover["body"] and "sound=siren" in pushover["body"], pushover
        pushbullet = receiver.on("/pushbullet")[0]
        assert pushbullet["headers"]["access-token"] == "pb-secret" and json.loads(pushbullet["body"])["type"] == "note"

        # A second alarm within alarm_freq (60 s): stored, visible, not pushed (uwsgi.it's rate limit), logged as such.
        status, body = api("node1", "POST", f"/api/alarms/raise/{u2}", raw=b"second one")
        assert status == 201, body
        assert wait_for(lambda: sorted(d["state"] for d in deliveries(u2)).count("rate_limited") == 4, 10), deliveries(u2)
        time.sleep(1.5)
        assert len(receiver.on("/hook")) == 1, receiver.on("/hook")
        status, alarms = api("node1", "GET", "/api/alarms")
        assert any(a["msg"] == "second one" for a in alarms), alarms
    finally:
        receiver.stop()
        blackhole.close()


# ---------------------------------------------------------------- the dashboard in a real browser

def browser():
    from selenium import webdriver   # scripts/setup --test installs it; a missing module fails the test
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # The API's name resolves to the failover IP, as DNS would make it: the page and its live stream go through
    # the Lord's router and move with the VIP.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--host-resolver-rules=MAP api.local-3.test 127.0.0.100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def console_errors(d) -> list:
    """Severe console entries, except the expected ones: the deliberate wrong-token 401, and the live stream cut
    when the Lord holding the failover IP is killed (the page reconnects; that is what is being tested)."""
    expected = ("status of 401", "/events - Failed to load resource: net::ERR_INCOMPLETE_CHUNKED_ENCODING",
                "/events - Failed to load resource: net::ERR_CONNECTION_RESET", "/events - Failed to load resource: net::ERR_CONNECTION_REFUSED")
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE" and not any(x in e["message"] for x in expected)]


def test_dashboard_shows_a_failover_live_and_each_customer_only_their_own(cluster, repo_root):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    c = cluster
    u2 = c.containers()["web2"]
    drop_vassal(c, "node2", u2)
    assert wait_for(lambda: get(ROUTERS["node2"])[0] == 200, 20), c.log("node2")[-3000:]
    token = c.admin("token", "add", "dashboard").stdout.strip().split()[-1]
    assert token.startswith("lgn_"), token
    assert wait_for(lambda: len(samples("node1", "cpu", u2)) >= 4, 20)
    docs = repo_root / "docs"
    d = browser()
    wait = lambda t=15: WebDriverWait(d, t)  # noqa: E731
    try:
        # Operator, by the API's name through the failover IP: the Lord (node1, highest valor), every member, the store leader.
        d.get("http://api.local-3.test:18480/dashboard/")
        assert d.title == "legion dashboard"
        d.find_element(By.ID, "tab-operator").click()
        d.find_element(By.ID, "op-token").send_keys("lgn_wrong")
        d.find_element(By.ID, "op-login").click()
        wait().until(lambda d: d.find_element(By.ID, "login-error").text.strip())
        assert "Unauthorized" in d.find_element(By.ID, "login-error").text
        d.find_element(By.ID, "op-token").clear()
        d.find_element(By.ID, "op-token").send_keys(token)
        d.find_element(By.ID, "op-login").click()
        wait().until(lambda d: d.find_elements(By.ID, "lord-name") and d.find_element(By.ID, "lord-name").text == "node1")
        wait().until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#nodes-table tr[data-node]")) == 3)
        assert d.find_element(By.ID, "vip-holder").text == "node1"
        assert d.find_element(By.ID, "store-leader").text in ("node1", "node2", "node3")
        assert d.find_element(By.ID, "live-status").text == "live"
        wait().until(lambda d: DOMAIN in d.find_element(By.ID, "domains-table").text)
        d.save_screenshot(str(docs / "dashboard-operator.png"))

        # Kill the Lord: the page (no reload) shows the new Lord and the failover in its history.
        os.kill(c.node_pid("node1"), signal.SIGKILL)
        wait(20).until(lambda d: d.find_element(By.ID, "lord-name").text == "node2")
        wait(10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#nodes-table tr[data-node='node1'].state-unreachable"))
        wait(10).until(lambda d: any("node2" in li.text for li in d.find_elements(By.CSS_SELECTOR, "#failover-history li.ev-lord")))
        d.save_screenshot(str(docs / "dashboard-failover.png"))
        # The new Lord measured the failover: one gap (previous Lord last heard → Lord here), a few seconds at most.
        metrics = urllib.request.urlopen(f"http://{APIS['node2']}/metrics", timeout=5).read().decode()
        values = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in metrics.splitlines() if line and not line.startswith("#")}
        assert values.get("legion_failover_gap_seconds_count") == 1 and 0 < values["legion_failover_gap_seconds_sum"] < 5, metrics
        assert values.get("legion_lord_election_seconds_count") == 1, metrics
        assert not console_errors(d), console_errors(d)
        d.find_element(By.ID, "logout").click()
        wait().until(lambda d: d.find_element(By.ID, "login").is_displayed())

        # Customer: their containers and domain; a container's graphs drawn from its samples.
        d.find_element(By.ID, "tab-customer").click()
        d.find_element(By.ID, "cu-username").send_keys("hoster")
        d.find_element(By.ID, "cu-password").send_keys(PASSWORDS["hoster"])
        d.find_element(By.ID, "cu-login").click()
        wait().until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#containers-table tr[data-uid='{u2}']"))
        row = d.find_element(By.CSS_SELECTOR, f"#containers-table tr[data-uid='{u2}']")
        wait().until(lambda d: "running" in d.find_element(By.CSS_SELECTOR, f"#containers-table tr[data-uid='{u2}']").text)
        assert "web2" in row.text and "node2" in row.text
        d.find_element(By.CSS_SELECTOR, f".show-graphs[data-uid='{u2}']").click()
        wait().until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#graphs svg.chart")) == 4)
        wait().until(lambda d: d.find_elements(By.CSS_SELECTOR, "#graphs svg.chart[data-metric='cpu'] path.series"))
        wait().until(lambda d: d.find_elements(By.CSS_SELECTOR, "#graphs svg.chart[data-metric='mem'] path.series"))
        d.save_screenshot(str(docs / "dashboard-customer.png"))
        assert not console_errors(d), console_errors(d)
        d.find_element(By.ID, "logout").click()
        wait().until(lambda d: d.find_element(By.ID, "login").is_displayed())

        # Another customer: their own (empty) view, none of hoster's containers, domains or alarms.
        d.find_element(By.ID, "tab-customer").click()
        d.find_element(By.ID, "cu-username").clear()   # the page keeps the last user name; the password it clears
        d.find_element(By.ID, "cu-username").send_keys("other")
        d.find_element(By.ID, "cu-password").send_keys(PASSWORDS["other"])
        d.find_element(By.ID, "cu-login").click()
        wait().until(lambda d: d.find_elements(By.ID, "customer-view") and "not-yours.example.com" in d.find_element(By.ID, "customer-view").text)
        view = d.find_element(By.ID, "customer-view").text
        assert "web2" not in view and DOMAIN not in view and str(u2) not in view, view
        assert not d.find_elements(By.CSS_SELECTOR, "#containers-table tr[data-uid]")
        # …and the page's own credentials cannot read hoster's samples (the server refuses, not just the page).
        status = d.execute_script(
            "return fetch(arguments[0], {headers: {Authorization: 'Basic ' + btoa('other:' + arguments[1])}}).then(r => r.status)",
            f"/api/metrics/container.cpu/{u2}", PASSWORDS["other"])
        assert status == 403, status
    finally:
        d.quit()


def test_the_grafana_dashboard_reads_metrics_the_nodes_export(cluster, repo_root):
    """Every metric the Grafana dashboard queries is in a node's /metrics (families labeled by a refusal reason
    appear with their first refusal, so those are checked against the code that emits them)."""
    import re
    dashboard = json.loads((repo_root / "packaging" / "grafana" / "legion-dashboard.json").read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\blegion_[a-z_]+", target["expr"])}
    assert len(names) >= 15, names
    # The Lord's store writes (the API) and a request through the router fill the store and router families.
    status, _ = api("node1", "POST", f"/api/containers/{c_uid(cluster)}", {"note": "grafana check"})
    assert status == 200
    get(ROUTERS["node1"])
    sources = "".join(p.read_text() for p in (repo_root / "Sources").rglob("*.swift"))
    def exported():
        text = "".join(urllib.request.urlopen(f"http://{a}/metrics", timeout=5).read().decode() for a in APIS.values())
        return {n for n in names if f"# TYPE {n} " in text}
    wait_for(lambda: exported() >= names - {"legion_packets_dropped_total", "legion_subscriptions_rejected_total"}, 10)
    missing = names - exported()
    assert missing <= {"legion_packets_dropped_total", "legion_subscriptions_rejected_total"}, missing
    for name in missing:
        assert f'"{name}"' in sources, f"{name} is queried by the dashboard but emitted nowhere"


def c_uid(c) -> int:
    return c.containers()["web2"]


def test_the_embedded_dashboard_matches_its_source_files(repo_root):
    """The binary serves DashboardAssets.swift, generated from Sources/Api/Dashboard/Assets: they must not drift."""
    p = subprocess.run([str(repo_root / "scripts" / "embed-dashboard"), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
