"""Forward proxy and reverse routes with real clients (curl, requests) against a fake HTTPS upstream."""

import json
import subprocess

import pytest
import requests

from conftest import LIVE_ENV, live_config


@pytest.mark.parametrize("http2", [True, False], ids=["ahc", "h1pool"])
def test_curl_forward_proxy_originates_tls_and_injects_the_key(pki, https_upstream, sidecar_factory, http2):
    s = sidecar_factory(live_config(pki, https_upstream, http2=http2), env=LIVE_ENV)
    token = s.new_token()
    out = subprocess.run(
        ["curl", "-sS", "-i", "-x", s.proxy_url, "-H", "X-Forwarded-For: 10.9.8.7", "-H", "X-Request-Id: curl-req-1",
         "-U", f"agent:{token}", "http://serpapi.com/search.json?q=coffee&api_key=agent-guess"],
        capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    assert "x-request-id: curl-req-1" in head.lower()
    assert "via: 1.1 agent-sidecar" in head.lower()
    assert json.loads(body)["path"] == "/search.json"
    # What reached the upstream: TLS (the fake only speaks https), the real key, no agent key,
    # no proxy credentials, no client address, the request id.
    rec = https_upstream.requests[-1]
    assert "api_key=serp-REAL-0123456789" in rec.path
    assert "agent-guess" not in rec.path
    assert rec.header("Proxy-Authorization") is None
    assert rec.header("X-Forwarded-For") is None
    assert rec.header("X-Request-Id") == "curl-req-1"
    assert rec.header("Host") == f"127.0.0.1:{https_upstream.port}"
    assert "1.1 agent-sidecar" in rec.header("Via")
    # Nothing secret in what the agent saw.
    assert "serp-REAL" not in out.stdout and token not in out.stdout
    line = s.access("curl-req-1")
    assert line["tool"] == "serpapi" and line["action"] == "search" and line["entry"] == "forward" and line["status"] == 200
    assert "serp-REAL" not in json.dumps(line) and token not in json.dumps(line)
    assert line["agent_id"].startswith("agt_") and line["token_id"].startswith("tok_")


def test_requests_http_fetch_through_proxy(http_upstream, pki, sidecar_factory):
    s = sidecar_factory(live_config(pki, http_upstream), env=LIVE_ENV)
    token = s.new_token(scopes=["http_fetch:*"])
    r = requests.get(f"{http_upstream.base_url}/page?x=1", proxies={"http": s.proxy_url_with(token)}, timeout=10,
                     headers={"Authorization": "Bearer site-token"})
    assert r.status_code == 200
    assert r.json()["path"] == "/page"
    rec = http_upstream.requests[-1]
    assert rec.path == "/page?x=1"
    # http_fetch brokers no credential, so the agent's own Authorization for the site passes through.
    assert rec.header("Authorization") == "Bearer site-token"
    assert rec.header("Proxy-Authorization") is None
    line = s.access(r.headers["X-Request-Id"])
    assert line["tool"] == "http_fetch" and line["action"] == "get" and line["upstream_host"] == "127.0.0.1"


def test_reverse_routes_and_compat_api(pki, https_upstream, sidecar_factory):
    s = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
    token = s.new_token()
    auth = {"Authorization": f"Bearer {token}"}
    r = requests.get(f"{s.proxy_url}/serpapi/search?q=tea", headers=auth, timeout=10)
    assert r.status_code == 200 and "api_key=serp-REAL" in https_upstream.requests[-1].path

    r = requests.post(f"{s.proxy_url}/gmail/gmail/v1/users/me/messages/send", headers=auth, timeout=10)
    assert r.status_code == 400  # /gmail/gmail/... is not a Gmail endpoint: unknown action
    raw = "To: a@example.com\r\nSubject: hi\r\n\r\nhello"
    import base64
    r = requests.post(f"{s.proxy_url}/gmail/v1/users/me/messages/send", headers={"X-Agent-Token": token},
                      json={"raw": base64.urlsafe_b64encode(raw.encode()).decode()}, timeout=10)
    assert r.status_code == 200
    assert https_upstream.requests[-1].header("Authorization") == "Bearer ya29.REAL-gmail-token"

    r = requests.post(f"{s.proxy_url}/api/proxy-request",
                      json={"agent_token": token, "tool": "openai", "action": "chat",
                            "params": {"model": "gpt-4o-mini", "prompt": "hi"}}, timeout=10)
    assert r.status_code == 200
    env = r.json()
    assert env["success"] is True and env["metadata"]["tool"] == "openai" and env["data"]["ok"] is True
    up = https_upstream.requests[-1]
    assert up.path == "/v1/chat/completions"
    assert up.header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    assert json.loads(up.body)["messages"] == [{"role": "user", "content": "hi"}]
    # The token never travels upstream, whichever header carried it.
    for rec in https_upstream.requests:
        assert all(token not in v for _, v in rec.headers) and token.encode() not in rec.body


def test_embedded_default_mocks_every_tool_without_any_key(sidecar_factory):
    s = sidecar_factory(None, env={})
    token = s.new_token(scopes=None, role="developer")
    calls = [
        {"tool": "serpapi", "action": "search", "params": {"q": "coffee"}},
        {"tool": "openai", "action": "chat", "params": {"prompt": "hello"}},
        {"tool": "openai", "action": "embeddings", "params": {"model": "text-embedding-3-small", "input": "x"}},
        {"tool": "http_fetch", "action": "get", "params": {"url": "https://example.com/"}},
        {"tool": "gmail_send", "action": "send", "params": {"to": "a@example.com", "subject": "s", "body": "b"}},
        {"tool": "gmail_send", "action": "profile", "params": {}},
    ]
    for call in calls:
        r = requests.post(f"{s.proxy_url}/api/proxy-request", json=call, headers={"X-Agent-Token": token}, timeout=10)
        assert r.status_code == 200, (call, r.text)
        assert r.json()["success"] is True and r.json()["metadata"]["mock"] is True
    r = requests.get("http://serpapi.com/search?q=x", proxies={"http": s.proxy_url_with(token)}, timeout=10)
    assert r.json()["search_metadata"]["status"] == "Success"
    # Without a token the same call is refused with 407 and a Proxy-Authenticate challenge.
    r = requests.get("http://serpapi.com/search?q=x", proxies={"http": s.proxy_url}, timeout=10)
    assert r.status_code == 407 and r.headers["Proxy-Authenticate"].startswith("Basic")
    assert r.json()["code"] == "token_missing"


@pytest.mark.parametrize("userinfo", ["{t}", "{t}:", "{t}:x", "agent:{t}"], ids=["user", "user-colon", "user-any-password", "password"])
def test_the_token_is_found_as_the_proxy_user_name_or_password(pki, https_upstream, sidecar_factory, userinfo):
    """`HTTP_PROXY=http://TOKEN@host:port` is how some operators write it: the token as the user name, with
    no or any password, works as the token as the password does; nothing of it reaches the upstream."""
    s = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
    token = s.new_token()
    proxy = f"http://{userinfo.format(t=token)}@{s.proxy}"
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, "http://serpapi.com/search?q=x"],
                         capture_output=True, text=True, timeout=20)
    assert out.stdout == "200", out.stderr
    assert https_upstream.requests[-1].header("Proxy-Authorization") is None
    assert token not in https_upstream.requests[-1].path
