"""Signed, hash-chained receipts with the real binary: every call (allowed or refused) leaves one, with
digests and never a body or a secret; `sidecar receipts verify` accepts the files and names the line of
any tampering; the admin API returns a run's receipts; with Redis the sealed head is stored so a
truncated file is caught."""

import json
import os
import subprocess
import time

import requests

from conftest import BIN, LIVE_ENV, live_config

SEND = "/gmail/v1/users/me/messages/send"


def verify(directory, *extra):
    return subprocess.run([str(BIN), "receipts", "verify", str(directory), *extra], capture_output=True, text=True, timeout=60)


def wait_receipts(s, n, timeout=5.0):
    deadline = time.time() + timeout
    while True:
        files = sorted((s.state_dir / "receipts").glob("receipts-*.jsonl"))
        lines = [l for f in files for l in f.read_text().splitlines()]
        if len(lines) >= n or time.time() > deadline:
            return files, lines
        time.sleep(0.05)


def test_every_call_leaves_a_verifiable_receipt_and_tampering_is_named(pki, https_upstream, sidecar_factory):
    s = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
    token = s.new_token()
    ok = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", headers={"X-Agent-Token": token},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a secret plan"}]}, timeout=10)
    assert ok.status_code == 200
    refused = requests.get(f"{s.proxy_url}/serpapi/search?q=x", timeout=10)
    assert refused.status_code == 401
    for i in range(40):
        requests.get(f"{s.proxy_url}/serpapi/search?q=n{i}", headers={"X-Agent-Token": token}, timeout=10)
    files, lines = wait_receipts(s, 42)
    assert len(lines) == 42
    receipts = [json.loads(l) for l in lines]
    by_id = {r["request_id"]: r for r in receipts}
    chat = by_id[ok.headers["X-Request-Id"]]
    assert chat["tool"] == "openai" and chat["action"] == "chat" and chat["status"] == 200 and chat["outcome"] == "ok"
    assert chat["credential"] == "openai@env" and len(chat["request_sha256"]) == 64 and len(chat["response_sha256"]) == 64
    assert len(chat["policy"]) == 64 and chat["agent"].startswith("agt_")
    denied = by_id[refused.headers["X-Request-Id"]]
    assert denied["status"] == 401 and denied["outcome"] == "token_missing"
    text = "\n".join(lines)
    assert "a secret plan" not in text and LIVE_ENV["OPENAI_API_KEY"] not in text and token not in text
    assert [r["seq"] for r in receipts] == list(range(1, 43))
    assert os.stat(next((s.state_dir / "keys").glob("receipts-*.key"))).st_mode & 0o777 == 0o600

    r = verify(s.state_dir / "receipts")
    assert r.returncode == 0 and "ok sidecar-1: 42 receipts" in r.stdout, r.stdout + r.stderr

    # One line altered: verification fails at that line.
    path = files[0]
    original = path.read_text()
    rows = original.splitlines(keepends=True)
    rows[9] = rows[9].replace('"status":200', '"status":201')
    path.write_text("".join(rows))
    r = verify(s.state_dir / "receipts")
    assert r.returncode == 1 and f"{path.name}:10:" in r.stdout, r.stdout
    # One line removed.
    rows = original.splitlines(keepends=True)
    del rows[20]
    path.write_text("".join(rows))
    r = verify(s.state_dir / "receipts")
    assert r.returncode == 1 and f"{path.name}:21:" in r.stdout and "missing" in r.stdout, r.stdout
    # Truncated mid-line.
    path.write_text(original[: len(original) - 30])
    r = verify(s.state_dir / "receipts")
    assert r.returncode == 1 and "truncated" in r.stdout, r.stdout
    path.write_text(original)
    assert verify(s.state_dir / "receipts").returncode == 0


def test_a_runs_receipts_through_the_admin_api(pki, https_upstream, sidecar_factory):
    s = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
    agent = s.new_agent()
    token = s.new_token(agent_id=agent)
    run = s.admin_request("POST", "/api/runs", {"name": "r", "agent_id": agent}).json()["run"]["id"]
    assert s.admin_request("POST", f"/api/runs/{run}/start").status_code == 200
    for q in ("a", "b", "c"):
        r = requests.get(f"{s.proxy_url}/serpapi/search?q={q}", headers={"X-Agent-Token": token, "X-Run-Id": run}, timeout=10)
        assert r.status_code == 200
    requests.get(f"{s.proxy_url}/serpapi/search?q=other", headers={"X-Agent-Token": token}, timeout=10)
    deadline = time.time() + 5
    while True:
        got = s.admin_request("GET", f"/api/receipts?run={run}").json()
        if got["count"] == 3 or time.time() > deadline:
            break
        time.sleep(0.05)
    assert got["count"] == 3 and all(r["run"] == run for r in got["receipts"])
    assert [r["seq"] for r in got["receipts"]] == sorted([r["seq"] for r in got["receipts"]], reverse=True)
    head = s.admin_request("GET", "/api/receipts/head").json()
    assert head["seq"] >= 3 and len(head["hash"]) == 64 and head["sidecar"] == "sidecar-1"
    assert requests.get(f"{s.admin_url}/api/receipts?run={run}", timeout=5).status_code == 401
    assert s.admin_request("GET", "/api/receipts").status_code == 422


def test_receipts_can_be_turned_off(pki, https_upstream, sidecar_factory):
    s = sidecar_factory(live_config(pki, https_upstream, extra="receipts: {enabled: false}\n"), env=LIVE_ENV)
    token = s.new_token()
    assert requests.get(f"{s.proxy_url}/serpapi/search?q=a", headers={"X-Agent-Token": token}, timeout=10).status_code == 200
    time.sleep(0.3)
    assert not list((s.state_dir / "receipts").glob("*.jsonl")) if (s.state_dir / "receipts").exists() else True


def test_the_fleet_head_in_redis_catches_a_truncated_file(pki, https_upstream, sidecar_factory, redis, tmp_path):
    env = {**LIVE_ENV, "REDIS_URL": redis.url, "SIDECAR_ID": "sc-r", "SIDECAR_STATE_DIR": str(tmp_path / "state")}
    s = sidecar_factory(live_config(pki, https_upstream), env=env)
    token = s.new_token()
    for i in range(10):
        requests.get(f"{s.proxy_url}/serpapi/search?q=t{i}", headers={"X-Agent-Token": token}, timeout=10)
    assert s.stop() == 0  # the last batch is sealed at shutdown
    files, lines = wait_receipts(s, 10)
    receipts_dir = s.state_dir / "receipts"
    r = verify(receipts_dir, "--redis", redis.url, "--strict")
    assert r.returncode == 0 and "reaches the fleet's head" in r.stdout, r.stdout + r.stderr
    # Drop the last three receipts cleanly (line boundaries): only the fleet's head shows it.
    path = files[-1]
    rows = path.read_text().splitlines(keepends=True)
    path.write_text("".join(rows[:-3]))
    assert verify(receipts_dir).returncode == 0
    r = verify(receipts_dir, "--redis", redis.url)
    assert r.returncode == 1 and "truncated" in r.stdout, r.stdout
