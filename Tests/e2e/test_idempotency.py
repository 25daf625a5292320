"""Exactly-once side effects, with the real binary and a live (fake) Gmail upstream: an identical send is
replayed from the ledger and never reaches Gmail twice; a duplicate while the first is in flight is 409;
a refused send frees its key; a send whose answer was lost is never repeated; the ledger survives a
restart (embedded) and is shared by a fleet (Redis)."""

import base64
import concurrent.futures
import socket
import threading
import time

import pytest
import requests

from conftest import LIVE_ENV, live_config, metric

SEND = "/gmail/v1/users/me/messages/send"


def mail(subject="hello", body="hi", to="a@example.com"):
    raw = f"To: {to}\r\nSubject: {subject}\r\n\r\n{body}"
    return {"raw": base64.urlsafe_b64encode(raw.encode()).decode()}


def gmail_upstream(up, delay=0.0, status=200):
    sent = []

    def handler(h, rec):
        sent.append(rec.body)
        if delay:
            time.sleep(delay)
        up.send_json(h, status, {"id": f"msg-{len(sent)}", "threadId": "t1", "labelIds": ["SENT"]})
    up.routes[SEND] = handler
    return sent


def chunked_gmail(up, chunks, end=True):
    """Gmail's route answering 200 with a chunked body: `chunks` as (bytes, pause after it), written
    together up to each pause (so what has no pause between arrives in one read), the last chunk marker
    only when `end`. Returns the request bodies it received."""
    sent = []

    def handler(h, rec):
        sent.append(rec.body)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        out = b""
        for part, pause in chunks:
            out += b"%x\r\n%s\r\n" % (len(part), part)
            if pause:
                h.wfile.write(out)
                h.wfile.flush()
                out = b""
                time.sleep(pause)
        h.wfile.write(out + (b"0\r\n\r\n" if end else b""))
        h.wfile.flush()
    up.routes[SEND] = handler
    return sent


def config(pki, up, extra="", http2=True, timeout="2s"):
    return live_config(pki, up, extra=extra, http2=http2).replace(
        f'gmail_send: {{mode: live, base_url: "{up.base_url}"}}', f'gmail_send: {{mode: live, base_url: "{up.base_url}", timeout: {timeout}}}')


def send(s, token, body, key=None, timeout=10):
    headers = {"X-Agent-Token": token}
    if key:
        headers["Idempotency-Key"] = key
    return requests.post(f"{s.proxy_url}{SEND}", json=body, headers=headers, timeout=timeout)


def test_an_identical_send_is_replayed_and_gmail_sees_it_once(pki, https_upstream, sidecar_factory):
    sent = gmail_upstream(https_upstream)
    s = sidecar_factory(config(pki, https_upstream), env=LIVE_ENV)
    token = s.new_token()
    first = send(s, token, mail())
    assert first.status_code == 200 and first.json()["id"] == "msg-1"
    assert "X-Idempotent-Replay" not in first.headers
    again = send(s, token, mail())
    assert again.status_code == 200, again.text
    assert again.headers["X-Idempotent-Replay"] == "true"
    assert again.json() == first.json() and again.headers["Content-Type"] == "application/json"
    assert len(sent) == 1
    # One byte different is another email.
    other = send(s, token, mail(body="hi!"))
    assert other.status_code == 200 and "X-Idempotent-Replay" not in other.headers and len(sent) == 2
    # Another agent sending the same email is not this agent's duplicate.
    assert "X-Idempotent-Replay" not in send(s, s.new_token(), mail()).headers and len(sent) == 3
    m = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(m, "gateway_idempotency_decisions_total", result="replay") == 1
    assert metric(m, "gateway_idempotency_decisions_total", result="proceed") == 3
    rid = again.headers["X-Request-Id"]
    assert s.access(rid)["idempotency"] == "replay"


def test_the_agents_idempotency_key_binds_one_call(pki, https_upstream, sidecar_factory):
    sent = gmail_upstream(https_upstream)
    s = sidecar_factory(config(pki, https_upstream), env=LIVE_ENV)
    token = s.new_token()
    assert send(s, token, mail(), key="order-42").status_code == 200
    r = send(s, token, mail(body="changed"), key="order-42")
    assert r.status_code == 409 and r.json()["code"] == "idempotency_conflict", r.text
    assert send(s, token, mail(), key="order-42").headers.get("X-Idempotent-Replay") == "true"
    # A new key sends the same email again, on purpose.
    r = send(s, token, mail(), key="order-43")
    assert r.status_code == 200 and "X-Idempotent-Replay" not in r.headers
    assert len(sent) == 2
    assert https_upstream.requests[-1].header("Idempotency-Key") == "order-43"
    for bad in ["", "a" * 256, "sp ace", "naïve"]:
        r = requests.post(f"{s.proxy_url}{SEND}", json=mail(), headers={"X-Agent-Token": token, "Idempotency-Key": bad.encode().decode("latin-1")}, timeout=5)
        assert r.status_code == 400 and r.json()["code"] == "invalid_parameter", (bad, r.text)
    assert len(sent) == 2


def test_a_duplicate_while_the_first_is_in_flight_is_409(pki, https_upstream, sidecar_factory):
    sent = gmail_upstream(https_upstream, delay=1.0)
    s = sidecar_factory(config(pki, https_upstream), env=LIVE_ENV)
    token = s.new_token()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(send, s, token, mail())
        time.sleep(0.3)
        dupes = [pool.submit(send, s, token, mail()) for _ in range(3)]
        answers = [first.result()] + [d.result() for d in dupes]
    assert answers[0].status_code == 200
    for r in answers[1:]:
        assert r.status_code == 409 and r.json()["code"] == "duplicate_in_flight", r.text
        assert r.headers["Retry-After"] == "1"
    assert len(sent) == 1
    # Once it is done, the duplicate gets its answer.
    r = send(s, token, mail())
    assert r.headers.get("X-Idempotent-Replay") == "true" and r.json() == answers[0].json()


@pytest.mark.parametrize("http2", [True, False], ids=["client", "pool"])
def test_identical_sends_racing_reach_gmail_once(pki, https_upstream, sidecar_factory, http2):
    """40 identical sends released at once on 40 connections, and 40 more distinct ones among them: each
    distinct email reaches Gmail exactly once, and every identical one but the first is refused (in
    flight) or replayed — never sent."""
    sent = gmail_upstream(https_upstream, delay=0.2)
    # A roomy deadline: 41 TLS connections opened at once to a Python server, beside 80 client threads on
    # two cores, can take past 2 s for one of them — which says nothing about exactly-once.
    s = sidecar_factory(config(pki, https_upstream, http2=http2, timeout="15s"), env=LIVE_ENV)
    token = s.new_token()
    start = threading.Barrier(80)

    def go(body):
        start.wait(timeout=10)
        return send(s, token, body, timeout=20)
    with concurrent.futures.ThreadPoolExecutor(80) as pool:
        same = [pool.submit(go, mail(subject="same")) for _ in range(40)]
        distinct = [pool.submit(go, mail(subject=f"distinct {i}")) for i in range(40)]
        same, distinct = [f.result() for f in same], [f.result() for f in distinct]
    assert all(r.status_code == 200 and "X-Idempotent-Replay" not in r.headers for r in distinct), [r.text for r in distinct if r.status_code != 200]
    firsts = [r for r in same if r.status_code == 200 and "X-Idempotent-Replay" not in r.headers]
    assert len(firsts) == 1
    for r in same:
        assert r in firsts or r.headers.get("X-Idempotent-Replay") == "true" or r.json()["code"] == "duplicate_in_flight", r.text
    assert len(sent) == 41


def test_a_refused_send_frees_its_key(pki, https_upstream, sidecar_factory):
    sent = gmail_upstream(https_upstream, status=400)
    s = sidecar_factory(config(pki, https_upstream), env=LIVE_ENV)
    token = s.new_token()
    assert send(s, token, mail()).status_code == 400
    assert send(s, token, mail()).status_code == 400
    assert len(sent) == 2, "a call Gmail refused did nothing: sending it again is not a duplicate"


def test_a_send_whose_answer_was_lost_is_never_sent_again(pki, https_upstream, sidecar_factory):
    sent = gmail_upstream(https_upstream, delay=3.0)  # past the 2 s timeout: sent, answer lost
    s = sidecar_factory(config(pki, https_upstream), env=LIVE_ENV)
    token = s.new_token()
    r = send(s, token, mail())
    assert r.status_code == 504, r.text
    r = send(s, token, mail())
    assert r.status_code == 409 and r.json()["code"] == "duplicate_outcome_unknown", r.text
    assert "Idempotency-Key" in r.json()["detail"]
    assert len(sent) == 1
    # The agent decides to send anyway: a new key.
    gmail_upstream(https_upstream)
    assert send(s, token, mail(), key="retry-after-check").status_code == 200


@pytest.mark.parametrize("http2", [True, False], ids=["client", "pool"])
def test_an_answer_still_arriving_is_kept_whole_and_replayed(pki, https_upstream, sidecar_factory, http2):
    """Gmail's answer head comes first and its body 300 ms later (chunked): the sidecar reads it whole
    before keeping it, answers it framed by length, and replays exactly that — through either upstream
    client (the HTTP/1.1 pool's call runs on the loop, async-http-client's in a task)."""
    sent = chunked_gmail(https_upstream, [(b'{"id": "msg-slow", ', 0.3), (b'"threadId": "t9", "labelIds": ["SENT"]}', 0)])
    s = sidecar_factory(config(pki, https_upstream, http2=http2), env=LIVE_ENV)
    token = s.new_token()
    first = send(s, token, mail(subject="slow"))
    assert first.status_code == 200, first.text
    assert first.json() == {"id": "msg-slow", "threadId": "t9", "labelIds": ["SENT"]}
    assert first.headers.get("Content-Length") == str(len(first.content)) and "Transfer-Encoding" not in first.headers
    again = send(s, token, mail(subject="slow"))
    assert again.headers.get("X-Idempotent-Replay") == "true" and again.content == first.content
    assert len(sent) == 1


@pytest.mark.parametrize("http2", [True, False], ids=["client", "pool"])
def test_an_answer_over_the_size_limit_is_refused_but_the_send_is_recorded(pki, https_upstream, sidecar_factory, http2):
    """Gmail took the send (2xx) but its chunked answer, arrived whole in one read, is over
    `max_response_body_bytes`: the agent gets 502, and the ledger still records that the email went, so
    the same send is never repeated (replayed as status and headers only)."""
    sent = chunked_gmail(https_upstream, [(b'{"id": "msg-big", "pad": "' + b"x" * 4000 + b'"}', 0)])
    cfg = config(pki, https_upstream, http2=http2).replace("limits:\n", "limits:\n  max_response_body_bytes: 2048\n", 1)
    s = sidecar_factory(cfg, env=LIVE_ENV)
    token = s.new_token()
    first = send(s, token, mail(subject="big"))
    assert first.status_code == 502 and first.json()["code"] == "upstream_response_too_large", first.text
    again = send(s, token, mail(subject="big"))
    assert again.status_code == 200 and again.headers.get("X-Idempotent-Replay") == "true", again.text
    assert again.headers.get("X-Idempotent-Replay-Body") == "omitted"
    assert len(sent) == 1


@pytest.mark.parametrize("http2", [True, False], ids=["client", "pool"])
def test_an_answer_that_stalls_after_its_head_is_never_resent(pki, https_upstream, sidecar_factory, http2):
    """Gmail accepted the send (200 head, part of the body) and then went silent past the tool's 2 s
    timeout: the agent gets an error, never a hang, and the email — which went — is not sent again."""
    sent = chunked_gmail(https_upstream, [(b'{"id": "msg-stall", ', 4)], end=False)
    s = sidecar_factory(config(pki, https_upstream, http2=http2), env=LIVE_ENV)
    token = s.new_token()
    started = time.time()
    first = send(s, token, mail(subject="stall"), timeout=15)
    assert first.status_code >= 500 and first.headers.get("Content-Type", "").startswith("application/problem+json"), first.text
    assert time.time() - started < 8
    again = send(s, token, mail(subject="stall"), timeout=15)
    assert again.status_code in (200, 409), again.text
    if again.status_code == 200:
        assert again.headers.get("X-Idempotent-Replay") == "true"
    else:
        assert again.json()["code"] in ("duplicate_outcome_unknown", "duplicate_in_flight"), again.text
    assert len(sent) == 1


def test_the_ledger_survives_a_restart(pki, https_upstream, sidecar_factory, tmp_path):
    sent = gmail_upstream(https_upstream)
    env = {**LIVE_ENV, "SIDECAR_STATE_DIR": str(tmp_path / "state")}
    s = sidecar_factory(config(pki, https_upstream), env=env)
    token = s.new_token(ttl="30m")
    first = send(s, token, mail())
    assert first.status_code == 200
    assert s.stop() == 0
    s2 = sidecar_factory(config(pki, https_upstream), env=env)
    r = send(s2, token, mail())
    assert r.headers.get("X-Idempotent-Replay") == "true" and r.json() == first.json()
    assert len(sent) == 1


def test_idempotency_can_cover_other_calls_or_be_off(pki, https_upstream, sidecar_factory):
    sent = gmail_upstream(https_upstream)
    s = sidecar_factory(config(pki, https_upstream, extra="idempotency: {calls: [gmail_send, \"openai:chat\"]}\n"), env=LIVE_ENV)
    token = s.new_token()
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "file the ticket"}]}
    answers = [requests.post(f"{s.proxy_url}/openai/v1/chat/completions", json=chat, headers={"X-Agent-Token": token}, timeout=10) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[1].headers.get("X-Idempotent-Replay") == "true"
    assert sum(1 for r in https_upstream.requests if r.path.startswith("/v1/chat")) == 1
    off = sidecar_factory(config(pki, https_upstream, extra="idempotency: {enabled: false}\n"), env=LIVE_ENV)
    t2 = off.new_token()
    assert send(off, t2, mail()).status_code == 200 and send(off, t2, mail()).status_code == 200
    assert len(sent) == 2


def test_a_fleet_on_one_redis_sends_once(pki, https_upstream, sidecar_factory, redis, tmp_path):
    sent = gmail_upstream(https_upstream, delay=0.8)
    keys = tmp_path / "keys"
    import subprocess
    from conftest import BIN
    subprocess.run([str(BIN), "keys", "init", str(keys)], check=True, capture_output=True)
    cfg = config(pki, https_upstream, extra=f"auth: {{keys_dir: \"{keys}\"}}\n")
    env = {**LIVE_ENV, "REDIS_URL": redis.url}
    a = sidecar_factory(cfg, env={**env, "SIDECAR_ID": "sc-a"})
    b = sidecar_factory(cfg, env={**env, "SIDECAR_ID": "sc-b"})
    token = a.new_token()
    deadline = time.time() + 5
    while send(b, token, mail(subject="warm")).status_code == 401:
        assert time.time() < deadline
        time.sleep(0.05)
    warm = len(sent)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        on_a = pool.submit(send, a, token, mail())
        time.sleep(0.2)
        on_b = pool.submit(send, b, token, mail())
        ra, rb = on_a.result(), on_b.result()
    assert ra.status_code == 200
    assert rb.status_code == 409 and rb.json()["code"] == "duplicate_in_flight", rb.text
    r = send(b, token, mail())
    assert r.headers.get("X-Idempotent-Replay") == "true" and r.json() == ra.json()
    assert len(sent) == warm + 1
