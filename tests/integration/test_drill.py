"""Failover drills in the namespace lab (root; CI runs as root): `legion drill lord-pause --json` on lab-3 reports
one VIP holder and no lost write, and a short seeded campaign (10 drills over every scenario) reports no
split-brain, no lost write and no failed drill. The timeline pictures are written and hold an SVG.

Run:  sudo python3 -m pytest -v -s tests/integration/test_drill.py
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the namespace lab needs root (CI runs as root)")


def test_lord_pause_drill_has_one_vip_holder_and_loses_no_write(legion_bin, tmp_path: Path):
    html = tmp_path / "pause.html"
    r = subprocess.run([str(legion_bin), "drill", "lord-pause", "--json", "--timeline", str(html)], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"legion drill failed: {r.stderr[-2000:]}"
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nlord-pause: {result}")
    assert result["max_vip_holders"] == 1 and result["max_lords_audit"] == 1, result
    assert result["lost_writes"] == 0 and result["acknowledged_writes"] > 20, result
    assert result["new_lord"] not in (None, result["old_lord"]), result
    assert result["gap_ms"] < 2000 and result["new_lord_ms"] < 2000, result
    text = html.read_text()
    assert "<svg" in text and "lord-pause" in text


def test_short_campaign_no_split_brain_no_lost_write(legion_bin, tmp_path: Path):
    out = tmp_path / "campaign.jsonl"
    r = subprocess.run([str(REPO_ROOT / "scripts" / "drill-campaign"), "--drills", "10", "--seed", "7", "--out", str(out),
                        "--timeline-dir", str(tmp_path / "timelines")],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "LEGION_BIN": str(legion_bin)})
    print("\n" + r.stdout[-3000:])
    assert r.returncode == 0, f"campaign failed:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
    assert "campaign drills=10 split_brain=0 lost_writes=0 failed_drills=0" in r.stdout
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 10 and len({x["scenario"] for x in results}) >= 4, [x["scenario"] for x in results]
    assert len(list((tmp_path / "timelines").glob("*.html"))) == 10


def test_rolling_restart_drill_fails_no_request_on_a_cluster_domain(legion_bin):
    """Every node restarted in turn (SIGTERM, start, healthy; the Lord last) while a client asks a cluster domain
    through the VIP with a real client's patience (5 s per request): 0 failed requests, no write lost."""
    r = subprocess.run([str(legion_bin), "drill", "rolling-restart", "--json", "--observe-seconds", "3"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"legion drill failed: {r.stderr[-2000:]}"
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nrolling-restart: {result}")
    assert result["requests"] > 100, result
    assert result["failed_requests"] == 0, result
    assert result["lost_writes"] == 0 and result["max_vip_holders"] == 1 and result["max_lords_audit"] == 1, result
    assert result["new_lord"] is not None, "the Lord was restarted too: a Lord was elected during the roll"
