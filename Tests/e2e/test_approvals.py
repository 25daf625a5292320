"""Approval holds with the real binary and a live (fake) Gmail: a send the policy marks `approval:` is held
until a human decides; approved within the hold it proceeds; after the hold the agent gets 403
approval_pending and its repeated identical call passes once; a third identical call is replayed from
the idempotency ledger (nothing sent); a call differing in one byte needs its own approval; denial,
expiry, the agent approving itself, and a fleet on one Redis (approve on one sidecar, pass on the other)."""

import base64
import concurrent.futures
import json
import subprocess
import time

import pytest
import requests

from conftest import BIN, LIVE_ENV, live_config, metric

SEND = "/gmail/v1/users/me/messages/send"


def mail(body="hi"):
    raw = f"To: boss@example.com\r\nSubject: quarterly numbers\r\n\r\n{body}"
    return {"raw": base64.urlsafe_b64encode(raw.encode()).decode()}


def policy_file(tmp_path, hold="1s", expires="15m"):
    p = tmp_path / f"policy-{hold}-{expires}.yaml"
    p.write_text(f"""
version: 1
roles:
  developer:
    allow: ["*"]
    rules:
      - scope: gmail_send:send
        approval: {{required: true, approvers: ["role:reviewer"], expires: {expires}, hold: {hold}}}
  reviewer: {{allow: ["serpapi:search"]}}
""")
    return p


def start(pki, up, sidecar_factory, tmp_path, hold="1s", expires="15m", extra="", env=None):
    sent = []

    def handler(h, rec):
        sent.append(rec.body)
        up.send_json(h, 200, {"id": f"msg-{len(sent)}"})
    up.routes[SEND] = handler
    cfg = live_config(pki, up, extra=f"policy: {{file: \"{policy_file(tmp_path, hold, expires)}\"}}\n{extra}")
    s = sidecar_factory(cfg, env={**LIVE_ENV, **(env or {})})
    return s, sent


def send(s, token, body=None, timeout=15):
    return requests.post(f"{s.proxy_url}{SEND}", json=body or mail(), headers={"X-Agent-Token": token}, timeout=timeout)


def pending(s, token=None):
    return s.admin_request("GET", "/api/approvals?status=pending", token=token).json()["approvals"]


def decide(s, approval_id, verb="approve", token=None, reason=None):
    return s.admin_request("POST", f"/api/approvals/{approval_id}/{verb}", {"reason": reason} if reason else {}, token=token)


def test_a_send_approved_within_the_hold_proceeds(pki, https_upstream, sidecar_factory, tmp_path):
    s, sent = start(pki, https_upstream, sidecar_factory, tmp_path, hold="10s")
    token = s.new_token()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(send, s, token)
        deadline = time.time() + 5
        while not (waiting := pending(s)):
            assert time.time() < deadline
            time.sleep(0.05)
        assert len(sent) == 0, "nothing is sent while the call is held"
        a = waiting[0]
        assert a["tool"] == "gmail_send" and a["summary"]["recipients"] == "boss@example.com" and a["status"] == "pending"
        r = decide(s, a["id"], reason="looks fine")
        assert r.status_code == 200 and r.json()["decided_by"] == "admin"
        answer = held.result()
    assert answer.status_code == 200 and answer.json()["id"] == "msg-1"
    assert len(sent) == 1
    assert s.access(answer.headers["X-Request-Id"])["status"] == 200
    m = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(m, "gateway_approval_checks_total", result="granted") == 1


def test_after_the_hold_the_repeated_call_passes_once(pki, https_upstream, sidecar_factory, tmp_path):
    s, sent = start(pki, https_upstream, sidecar_factory, tmp_path, hold="0s")
    token = s.new_token()
    r = send(s, token)
    assert r.status_code == 403 and r.json()["code"] == "approval_pending", r.text
    approval_id = r.json()["approval_id"]
    assert int(r.headers["Retry-After"]) >= 1
    assert send(s, token).json()["approval_id"] == approval_id, "the same call waits on the same approval"
    assert decide(s, approval_id).status_code == 200
    ok = send(s, token)
    assert ok.status_code == 200 and "X-Idempotent-Replay" not in ok.headers and len(sent) == 1
    # A third identical call: replayed from the idempotency ledger, nothing sent, no new approval.
    third = send(s, token)
    assert third.status_code == 200 and third.headers["X-Idempotent-Replay"] == "true" and len(sent) == 1
    # One byte different: its own approval.
    other = send(s, token, mail("hi!"))
    assert other.status_code == 403 and other.json()["approval_id"] != approval_id
    assert len(sent) == 1
    # The receipt of the sent call names the grant it spent.
    deadline = time.time() + 3
    while time.time() < deadline:
        got = s.admin_request("GET", f"/api/receipts?request_id={ok.headers['X-Request-Id']}").json()["receipts"]
        if got:
            break
        time.sleep(0.05)
    assert got[0]["approval"] == approval_id


def test_denial_expiry_and_who_may_decide(pki, https_upstream, sidecar_factory, tmp_path):
    s, sent = start(pki, https_upstream, sidecar_factory, tmp_path, hold="0s", expires="2s")
    agent = s.new_agent()
    token = s.new_token(agent_id=agent)
    reviewer = s.new_token(role="reviewer")
    outsider = s.new_token(role="developer")
    approval_id = send(s, token).json()["approval_id"]
    # The agent never approves its own call; a non-approver cannot either; unknown ids are 404.
    r = decide(s, approval_id, token=token)
    assert r.status_code == 403 and r.json()["code"] == "approval_forbidden"
    assert decide(s, approval_id, token=outsider).json()["code"] == "approval_forbidden"
    assert decide(s, "apr_" + "0" * 32).status_code == 404
    assert decide(s, "../etc").status_code == 404
    assert pending(s, token=reviewer)[0]["id"] == approval_id and pending(s, token=outsider) == []
    r = decide(s, approval_id, verb="deny", token=reviewer, reason="not to the boss")
    assert r.status_code == 200 and r.json()["status"] == "denied"
    assert decide(s, approval_id).json()["code"] == "approval_not_pending"
    r = send(s, token)
    assert r.status_code == 403 and r.json()["code"] == "approval_denied" and "not to the boss" in r.json()["detail"]
    assert len(sent) == 0
    # Expiry: a pending approval not decided in time.
    fresh = send(s, token, mail("again")).json()["approval_id"]
    time.sleep(2.2)
    r = decide(s, fresh)
    assert r.status_code == 403 and r.json()["code"] == "approval_expired"
    r = send(s, token, mail("again"))
    assert r.status_code == 403 and r.json()["code"] == "approval_expired"
    r = send(s, token, mail("again"))
    assert r.json()["code"] == "approval_pending" and r.json()["approval_id"] != fresh
    assert len(sent) == 0


def test_the_runs_stream_shows_the_approval(pki, https_upstream, sidecar_factory, tmp_path):
    s, sent = start(pki, https_upstream, sidecar_factory, tmp_path, hold="0s")
    agent = s.new_agent()
    token = s.new_token(agent_id=agent)
    run = s.admin_request("POST", "/api/runs", {"name": "mail", "agent_id": agent}).json()["run"]["id"]
    s.admin_request("POST", f"/api/runs/{run}/start")
    r = requests.post(f"{s.proxy_url}{SEND}", json=mail(), headers={"X-Agent-Token": token, "X-Run-Id": run}, timeout=10)
    assert r.json()["code"] == "approval_pending"
    seen = ""
    with requests.get(f"{s.admin_url}/api/runs/{run}/events", headers={"Authorization": f"Bearer {s.admin_token}"}, stream=True, timeout=5) as ev:
        deadline = time.time() + 5
        for line in ev.iter_lines(decode_unicode=True):
            seen += (line or "") + "\n"
            if r.json()["approval_id"] in seen or time.time() > deadline:
                break
    assert "event: approval.requested" in seen and r.json()["approval_id"] in seen


def test_approve_on_one_sidecar_pass_on_another(pki, https_upstream, sidecar_factory, tmp_path, redis):
    keys = tmp_path / "keys"
    subprocess.run([str(BIN), "keys", "init", str(keys)], check=True, capture_output=True)
    env = {"REDIS_URL": redis.url}
    extra = f"auth: {{keys_dir: \"{keys}\"}}\n"
    a, sent = start(pki, https_upstream, sidecar_factory, tmp_path, hold="0s", extra=extra, env={**env, "SIDECAR_ID": "sc-a"})
    b = sidecar_factory(live_config(pki, https_upstream, extra=f"policy: {{file: \"{policy_file(tmp_path, '0s', '15m')}\"}}\n{extra}"),
                        env={**LIVE_ENV, **env, "SIDECAR_ID": "sc-b"})
    token = a.new_token()
    deadline = time.time() + 5
    while (r := send(b, token)).status_code == 401:
        assert time.time() < deadline
        time.sleep(0.05)
    assert r.json()["code"] == "approval_pending"
    approval_id = r.json()["approval_id"]
    assert send(a, token).json()["approval_id"] == approval_id, "both sidecars see one approval"
    assert decide(a, approval_id).status_code == 200
    assert send(b, token).status_code == 200 and len(sent) == 1
    dup = send(a, token)
    assert dup.status_code == 200 and dup.headers["X-Idempotent-Replay"] == "true" and len(sent) == 1


def test_the_compatibility_api_meets_the_same_approval_and_ledger(pki, https_upstream, sidecar_factory, tmp_path):
    """The guard sits in the stage every entry passes: a Gmail send through /api/proxy-request is held for
    approval like a native one, and once sent, repeating it is replayed from the ledger."""
    s, sent = start(pki, https_upstream, sidecar_factory, tmp_path, hold="0s")
    token = s.new_token()
    envelope = {"agent_token": token, "tool": "gmail_send", "action": "send",
                "params": {"to": "boss@example.com", "subject": "numbers", "body": "hi"}}
    r = requests.post(f"{s.proxy_url}/api/proxy-request", json=envelope, timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "approval_pending" and r.json()["success"] is False, r.text
    assert decide(s, r.json()["approval_id"]).status_code == 200
    assert requests.post(f"{s.proxy_url}/api/proxy-request", json=envelope, timeout=10).json()["success"] is True
    again = requests.post(f"{s.proxy_url}/api/proxy-request", json=envelope, timeout=10)
    assert again.json()["success"] is True and len(sent) == 1
    # A repeated Idempotency-Key line is ambiguous: refused before anything reads it.
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", s.proxy_port, timeout=10)
    body = json.dumps(mail("x")).encode()
    conn.putrequest("POST", SEND)
    for name, value in [("X-Agent-Token", token), ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                        ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]:
        conn.putheader(name, value)
    conn.endheaders(body)
    r = conn.getresponse()
    assert r.status == 400 and json.loads(r.read())["code"] == "ambiguous_header"
    conn.close()
    assert len(sent) == 1


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_an_agent_waits_on_at_most_max_pending_per_agent_approvals(pki, https_upstream, sidecar_factory, tmp_path, redis, store):
    """Each distinct call asks anew: an agent varying one byte per call would fill the approval store and the
    approvers' list. Past `approvals.max_pending_per_agent` its next new ask is 429; a repeat of a call
    already asked for is still answered with its approval; a decision frees a place; another agent is not
    affected."""
    env, extra = {}, "approvals: {max_pending_per_agent: 2}\n"
    if store == "redis":
        keys = tmp_path / "keys"
        subprocess.run([str(BIN), "keys", "init", str(keys)], check=True, capture_output=True)
        env, extra = {"REDIS_URL": redis.url}, extra + f"auth: {{keys_dir: \"{keys}\"}}\n"
    s, sent = start(pki, https_upstream, sidecar_factory, tmp_path, hold="0s", extra=extra, env=env)
    token, other = s.new_token(), s.new_token(agent_id=s.new_agent(name="other"))
    asked = [send(s, token, mail(f"draft {i}")) for i in range(2)]
    assert [r.json()["code"] for r in asked] == ["approval_pending"] * 2
    over = send(s, token, mail("draft 2"))
    assert over.status_code == 429 and over.json()["code"] == "too_many_pending_approvals", over.text
    assert "Retry-After" in over.headers and "approval_id" not in over.json()
    assert len(pending(s)) == 2, "nothing was created for the refused call"
    assert send(s, token, mail("draft 0")).json()["approval_id"] == asked[0].json()["approval_id"]
    assert send(s, other, mail("draft 2")).json()["code"] == "approval_pending"
    assert decide(s, asked[1].json()["approval_id"], "deny").status_code == 200
    assert send(s, token, mail("draft 2")).json()["code"] == "approval_pending"
    assert metric(requests.get(f"{s.admin_url}/metrics", timeout=5).text, "gateway_approval_checks_total", result="too_many_pending") == 1
    assert sent == []
    if store == "redis":
        # Each agent's set of pending approvals ends with its longest-lived member (with Redis 6 too: no
        # `PEXPIRE … GT`, a Redis 7 option that an older server refuses and the set would then never expire).
        import redis as redis_py
        client = redis_py.Redis.from_url(redis.url)
        sets = list(client.scan_iter("sidecar:approvals:pending:*"))
        assert len(sets) == 2 and all(0 < client.pttl(k) <= 25 * 3600 * 1000 for k in sets), [(k, client.pttl(k)) for k in sets]
