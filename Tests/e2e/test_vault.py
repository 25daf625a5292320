"""The sealed credential vault end to end: sealing with the CLI, injection, echo scrubbing, rotation
under load, Gmail's OAuth refresh against a fake token endpoint, and a leak check over everything."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import requests

from conftest import BIN, live_config

KEK = "q3ZG0b0iI8v0CwGgG3q2mW1f7tYk1Z2Xb0p9N4c5d6E="  # 32 bytes, base64


def seal(state: Path, tool: str, secret: str | None = None, from_file: Path | None = None, env=None):
    vault = state / "vault"
    vault.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN), "secrets", "seal", "--tool", tool, "--out", str(vault)]
    full_env = dict(os.environ, KEK_BASE64=KEK, **(env or {}))
    if secret is not None:
        full_env["SECRET_UNDER_TEST"] = secret
        cmd += ["--from-env", "SECRET_UNDER_TEST"]
    else:
        cmd += ["--from-file", str(from_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
    assert out.returncode == 0, out.stderr
    assert secret is None or secret not in out.stdout + out.stderr
    return out.stdout


def start(sidecar_factory, pki, upstream, tmp_path, extra=""):
    state = tmp_path / "state"
    cfg = live_config(pki, upstream, extra=f"vault:\n  gmail_token_url: \"{upstream.base_url}/token\"\n{extra}")
    s = sidecar_factory(cfg, env={"KEK_BASE64": KEK, "SIDECAR_STATE_DIR": str(state)})
    return s, state


def echo_route(up):
    def handler(h, rec):
        auth = rec.header("Authorization") or ""
        up.send_json(h, 200, {"you_sent": auth, "note": "debug echo"}, extra_headers=[("X-Echo-Auth", auth)])
    return handler


def test_sealed_key_is_injected_and_echoes_are_scrubbed(pki, https_upstream, sidecar_factory, tmp_path):
    state = tmp_path / "state"
    seal(state, "openai", "sk-SEALED-v1-aaaaaaaaaaaa")
    https_upstream.routes["/v1/embeddings"] = echo_route(https_upstream)
    s, _ = start(sidecar_factory, pki, https_upstream, tmp_path)
    token = s.new_token()
    r = requests.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200
    assert https_upstream.requests[-1].header("Authorization") == "Bearer sk-SEALED-v1-aaaaaaaaaaaa"
    assert https_upstream.requests[-1].header("Accept-Encoding") == "identity"
    assert r.json()["you_sent"] == "Bearer [REDACTED]"
    assert r.headers["X-Echo-Auth"] == "Bearer [REDACTED]"
    assert "sk-SEALED" not in r.text


def test_a_live_tool_without_credential_is_refused_and_not_forwarded(pki, https_upstream, sidecar_factory, tmp_path):
    s, _ = start(sidecar_factory, pki, https_upstream, tmp_path)
    before = len(https_upstream.requests)
    r = requests.get(f"{s.proxy_url}/serpapi/search?q=x", headers={"X-Agent-Token": s.new_token()}, timeout=10)
    assert r.status_code == 503 and r.json()["code"] == "credential_unavailable"
    assert len(https_upstream.requests) == before


def test_rotation_under_load_fails_no_request(pki, https_upstream, sidecar_factory, tmp_path):
    state = tmp_path / "state"
    seal(state, "serpapi", "serp-ROTATE-v1-xxxxxxxx")
    s, _ = start(sidecar_factory, pki, https_upstream, tmp_path)
    token = s.new_token()
    stop = threading.Event()
    results = []

    def load():
        with requests.Session() as session:
            while not stop.is_set():
                # A fresh query each time: a cached answer would not reach the upstream.
                r = session.get(f"{s.proxy_url}/serpapi/search?q=rot-{os.urandom(4).hex()}", headers={"X-Agent-Token": token}, timeout=10)
                results.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        seal(state, "serpapi", "serp-ROTATE-v2-xxxxxxxx")
        r = s.admin_request("POST", "/api/credentials/reload")
        assert r.status_code == 200 and r.json()["versions"]["serpapi"] == 2
        time.sleep(0.5)
        seal(state, "serpapi", "serp-ROTATE-v3-xxxxxxxx")
        s.signal(signal.SIGHUP)
        s.wait_for_log(lambda l: l.get("msg") == "credentials reloaded" and "serpapi=v3" in l.get("versions", ""))
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(results) > 50 and set(results) == {200}, (len(results), set(results))
    keys = [rec.path.split("api_key=")[1] for rec in https_upstream.requests if "api_key=" in rec.path]
    # Each version takes over in turn. A call that took its key just before a reload still finishes
    # with it, so with four agents in flight the upstream may see one old key after a new one.
    first_seen = sorted(set(keys), key=keys.index)
    assert first_seen == ["serp-ROTATE-v1-xxxxxxxx", "serp-ROTATE-v2-xxxxxxxx", "serp-ROTATE-v3-xxxxxxxx"], first_seen
    assert keys[-1] == "serp-ROTATE-v3-xxxxxxxx"


def test_gmail_refresh_token_is_exchanged_once_and_cached(pki, https_upstream, sidecar_factory, tmp_path):
    state = tmp_path / "state"
    secret_file = tmp_path / "gmail.json"
    secret_file.write_text(json.dumps({"refresh_token": "1//refresh-SECRET-abc", "client_id": "client-123.apps",
                                       "client_secret": "GOCSPX-client-SECRET"}))
    seal(state, "gmail_send", from_file=secret_file)
    exchanges = []

    def token_endpoint(h, rec):
        exchanges.append(rec.body.decode())
        https_upstream.send_json(h, 200, {"access_token": f"ya29.ACCESS-{len(exchanges)}-zzzz", "expires_in": 3599,
                                          "token_type": "Bearer"})

    https_upstream.routes["/token"] = token_endpoint
    s, _ = start(sidecar_factory, pki, https_upstream, tmp_path)
    token = s.new_token(role="engager")
    for i in range(3):
        r = requests.post(f"{s.proxy_url}/api/proxy-request", headers={"X-Agent-Token": token}, timeout=10,
                          json={"tool": "gmail_send", "action": "send", "params": {"to": "a@example.com", "subject": f"s{i}", "body": "b"}})
        assert r.status_code == 200, r.text
    assert len(exchanges) == 1
    assert "grant_type=refresh_token" in exchanges[0] and "refresh_token=1%2F%2Frefresh-SECRET-abc" in exchanges[0]
    sends = [rec for rec in https_upstream.requests if rec.path.endswith("/messages/send")]
    assert len(sends) == 3 and all(rec.header("Authorization") == "Bearer ya29.ACCESS-1-zzzz" for rec in sends)


def test_nothing_secret_leaks_into_logs_metrics_or_responses(pki, https_upstream, sidecar_factory, tmp_path):
    state = tmp_path / "state"
    seal(state, "openai", "sk-LEAKCHECK-openai-1234")
    secret_file = tmp_path / "gmail.json"
    secret_file.write_text(json.dumps({"refresh_token": "1//LEAKCHECK-refresh", "client_id": "cid-LEAKCHECK",
                                       "client_secret": "GOCSPX-LEAKCHECK"}))
    seal(state, "gmail_send", from_file=secret_file)
    https_upstream.routes["/token"] = lambda h, rec: https_upstream.send_json(h, 200, {"access_token": "ya29.LEAKCHECK-access", "expires_in": 3600})
    https_upstream.routes["/v1/chat/completions"] = echo_route(https_upstream)
    s, _ = start(sidecar_factory, pki, https_upstream, tmp_path,
                 extra="")
    seen = []
    token = s.new_token(role="engager")
    admin = s.admin_token
    for r in [
        requests.post(f"{s.proxy_url}/openai/v1/chat/completions", json={"model": "m", "messages": []},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10),
        requests.post(f"{s.proxy_url}/api/proxy-request", json={"agent_token": token, "tool": "gmail_send", "action": "send",
                                                                  "params": {"to": "x@example.com", "subject": "s", "body": "b"}}, timeout=10),
        requests.get("http://serpapi.com/search?q=x", proxies={"http": s.proxy_url_with(token)}, timeout=10),
        requests.get("http://serpapi.com/search?q=x", proxies={"http": s.proxy_url_with("garbage." + token)}, timeout=10),
        s.admin_request("GET", "/api/agents"),
        requests.get(f"{s.admin_url}/metrics", timeout=10),
    ]:
        seen.append(r.text + json.dumps(dict(r.headers)))
    s.admin_request("POST", "/api/credentials/reload")
    s.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert s.stop() == 0
    haystack = "\n".join(seen) + "\n".join(s.lines)
    secrets = [KEK, "sk-LEAKCHECK-openai-1234", "1//LEAKCHECK-refresh", "GOCSPX-LEAKCHECK", "ya29.LEAKCHECK-access",
               token, admin, token[40:120]]
    for secret in secrets:
        assert secret not in haystack, f"leaked: {secret[:12]}…"
    # The echoing upstream did receive the real key; the agent saw it redacted.
    assert any(rec.header("Authorization") == "Bearer sk-LEAKCHECK-openai-1234" for rec in https_upstream.requests)
    assert "[REDACTED]" in seen[0]


def test_seal_refuses_what_the_vault_would_refuse_at_start_and_never_overwrites(tmp_path):
    """A key with a space or control character inside sealed fine and stopped every later start; a Gmail
    JSON missing a member was sealed as an API key (its text the bearer token); --out naming an existing
    entry overwrote it. Each is refused at seal time, without printing the secret."""
    vault = tmp_path / "vault"
    vault.mkdir()
    env = dict(os.environ, KEK_BASE64=KEK)

    def run(*args, secret=None):
        e = dict(env)
        cmd = [str(BIN), "secrets", "seal", *args]
        if secret is not None:
            e["S"] = secret
            cmd += ["--from-env", "S"]
        return subprocess.run(cmd, capture_output=True, text=True, env=e)
    for bad in ("sk-abc def", "sk-abc\r\nX-Injected: 1", "sk-\x01abc", "sk-ключ"):
        out = run("--tool", "openai", "--out", str(vault), secret=bad)
        assert out.returncode != 0 and "no request header can carry" in out.stderr and "sk-abc" not in out.stderr
    assert list(vault.iterdir()) == []
    partial = tmp_path / "g.json"
    partial.write_text('{"refresh_token": "1//refresh-secret"}')
    out = run("--tool", "gmail_send", "--out", str(vault), "--from-file", str(partial))
    assert out.returncode != 0 and "client_id" in out.stderr and "refresh-secret" not in out.stderr
    assert run("--tool", "openai", "--out", str(vault), secret=" sk-padded-0123456789\n").returncode == 0
    first = (vault / "openai-v1.sealed").read_bytes()
    out = run("--tool", "openai", "--out", str(vault / "openai-v1.sealed"), secret="sk-other-0123456789")
    assert out.returncode != 0 and "exists" in out.stderr and (vault / "openai-v1.sealed").read_bytes() == first
    assert run("--tool", "openai", "--out", str(vault), "--version", "0", secret="sk-x-0123456789").returncode != 0
