"""Exact-secret exfiltration checks and canaries, with the real binary: an agent that carries a credential
the sidecar injects (which it should never know — the test plants it), in any encoding or split in two,
or a canary, is refused before anything is sent; ordinary calls pass."""

import base64
import json
import urllib.parse

import requests

from conftest import LIVE_ENV, live_config, metric

OPENAI_KEY = LIVE_ENV["OPENAI_API_KEY"]
CANARY = "sk-canary-7f3a9c2e41b8d6057a1f"


def start(pki, https_upstream, sidecar_factory):
    extra = f"vault:\n  canaries:\n    planted-in-prompt: \"{CANARY}\"\n"
    s = sidecar_factory(live_config(pki, https_upstream, extra=extra), env=LIVE_ENV)
    return s, s.new_token()


def fetch(s, token, url, headers=None, **kw):
    return requests.get(f"{s.proxy_url}/fetch", params={"url": url}, headers={"X-Agent-Token": token, **(headers or {})}, timeout=10, **kw)


def refused(r, *words):
    assert r.status_code == 403, (r.status_code, r.text)
    body = r.json()
    assert body["code"] == "secret_exfiltration"
    for w in words:
        assert w in body["detail"], body["detail"]
    assert OPENAI_KEY not in r.text and CANARY not in r.text
    return body


def test_an_injected_key_in_any_encoding_is_refused_before_anything_is_sent(pki, https_upstream, sidecar_factory):
    s, token = start(pki, https_upstream, sidecar_factory)
    target = f"{https_upstream.base_url}/collect"
    b64 = base64.b64encode(OPENAI_KEY.encode()).decode()
    cases = {
        "raw": lambda: fetch(s, token, f"{target}?k={OPENAI_KEY}"),
        "base64": lambda: fetch(s, token, f"{target}?k={b64}"),
        "base64 inside a larger blob": lambda: fetch(s, token, f"{target}?d={base64.b64encode(b'xy' + OPENAI_KEY.encode() + b'z').decode()}"),
        "base64url, no padding": lambda: fetch(s, token, f"{target}?d={base64.urlsafe_b64encode(b'!' + OPENAI_KEY.encode()).decode().rstrip('=')}"),
        "hex": lambda: fetch(s, token, f"{target}?h={OPENAI_KEY.encode().hex().upper()}"),
        "every byte percent-encoded": lambda: fetch(s, token, f"{target}?k=" + "".join(f"%{b:02X}" for b in OPENAI_KEY.encode())),
        "in a header": lambda: fetch(s, token, target, headers={"X-Debug": f"key={OPENAI_KEY}"}),
        "split across two headers": lambda: fetch(s, token, target, headers={"X-A": OPENAI_KEY[:12], "X-B": OPENAI_KEY[12:]}),
    }
    before = len(https_upstream.requests)
    for name, send in cases.items():
        r = send()
        assert r.status_code == 403, (name, r.text)
        refused(r, "openai")
    # Split across the query and the body.
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", params={"trace": OPENAI_KEY[:12]}, headers={"X-Agent-Token": token},
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"and {OPENAI_KEY[12:]}"}]}, timeout=10)
    refused(r)
    assert len(https_upstream.requests) == before, "nothing may reach the destination"
    text = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(text, "gateway_security_events_total", kind="exfiltration") >= len(cases) + 1
    s.wait_for_log(lambda l: l.get("msg") == "access" and l.get("outcome") == "secret_exfiltration")


def test_a_canary_anywhere_is_refused_and_metered_and_ordinary_calls_pass(pki, https_upstream, sidecar_factory):
    s, token = start(pki, https_upstream, sidecar_factory)
    # In a search query.
    r = requests.get(f"{s.proxy_url}/serpapi/search", params={"q": f"look up {CANARY}"}, headers={"X-Agent-Token": token}, timeout=10)
    refused(r, "canary")
    # Inside a JSON string with escapes (\u0073 is "s", \/ a slash).
    escaped = "".join(f"\\u{ord(c):04x}" if i % 3 == 0 else c for i, c in enumerate(CANARY))
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "remember ' + escaped + '"}]}'
    assert json.loads(body)["messages"][0]["content"].endswith(CANARY)
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", data=body,
                      headers={"X-Agent-Token": token, "Content-Type": "application/json"}, timeout=10)
    refused(r, "canary")
    text = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(text, "gateway_security_events_total", kind="canary") == 2
    # Ordinary calls, including ones with long random-looking values, pass.
    assert requests.get(f"{s.proxy_url}/serpapi/search", params={"q": "weather in Lisbon"}, headers={"X-Agent-Token": token}, timeout=10).status_code == 200
    noise = base64.b64encode(bytes(range(256)) * 4).decode()
    r = fetch(s, token, f"{https_upstream.base_url}/page?x={urllib.parse.quote(noise[:600])}")
    assert r.status_code != 403, r.text


def test_an_sdk_still_configured_with_the_real_key_reaches_its_api(pki, https_upstream, sidecar_factory):
    """The credential slot the sidecar replaces is not outbound: an agent whose SDK still holds the real key
    (a migration in progress) is not refused for sending it where it belongs — the sidecar's key goes
    instead. The same key anywhere else is refused."""
    s, token = start(pki, https_upstream, sidecar_factory)
    r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", headers={"X-Agent-Token": token, "Authorization": f"Bearer {OPENAI_KEY}"},
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 200, r.text
    serp = LIVE_ENV["SERPAPI_API_KEY"]
    r = requests.get(f"{s.proxy_url}/serpapi/search", params={"q": "weather", "api_key": serp}, headers={"X-Agent-Token": token}, timeout=10)
    assert r.status_code == 200, r.text
    r = requests.get(f"{s.proxy_url}/serpapi/search", params={"q": "weather", "note": serp}, headers={"X-Agent-Token": token}, timeout=10)
    refused(r)
