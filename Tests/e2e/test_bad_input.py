"""Every client mistake gets a clear 4xx problem+json answer, upstream failures their 5xx, and the
process never crashes."""

import json
import re
import time
from datetime import datetime

import pytest
import requests

from conftest import LIVE_ENV, free_port, live_config, parse_response, raw_request



@pytest.fixture
def sidecar(pki, https_upstream, sidecar_factory):
    def slow(h, rec):
        time.sleep(3)
        https_upstream.send_json(h, 200, {"late": True})
    https_upstream.routes["/v1/embeddings"] = slow
    # Data-plane input checks, without authentication in the way (identity has its own tests).
    cfg = live_config(pki, https_upstream, extra="", tools_extra="", auth=False)
    cfg = cfg.replace("openai: {mode: live", "openai: {mode: live, connect_timeout: 1s").replace("timeout: 5s}", "timeout: 1s}")
    cfg = cfg.replace(f'gmail_send: {{mode: live, base_url: "{https_upstream.base_url}"}}',
                      f'gmail_send: {{mode: live, base_url: "https://127.0.0.1:{free_port()}", timeout: 3s}}')
    cfg += "\nlimits:\n  max_header_bytes: 8192\n  max_request_body_bytes: 65536\n"
    cfg = cfg.replace("limits:\n  drain_timeout: 10s\n", "")
    s = sidecar_factory(cfg, env=LIVE_ENV)
    s.upstream = https_upstream
    return s


CASES = [
    ("malformed request line", b"GARBAGE\r\n\r\n", 400, "malformed_request"),
    ("bad header token", b"GET /serpapi/search HTTP/1.1\r\nHo st: x\r\n\r\n", 400, "malformed_request"),
    ("headers too large", b"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "headers_too_large"),
    ("request-target too long", b"GET /serpapi/search?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "headers_too_large"),
    ("body too large (declared)", b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", 413, "body_too_large"),
    ("body too large (chunked)", b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     + (b"8000\r\n" + b"a" * 0x8000 + b"\r\n") * 3 + b"0\r\n\r\n", 413, "body_too_large"),
    ("content-length and transfer-encoding", b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, None),
    ("duplicate content-length", b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400, "invalid_framing"),
    ("invalid content-length", b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", 400, "invalid_framing"),
    ("no route", b"GET /nothing/here HTTP/1.1\r\nHost: x\r\n\r\n", 404, "route_not_found"),
    ("unknown action", b"GET /openai/v1/files HTTP/1.1\r\nHost: x\r\n\r\n", 400, "unknown_action"),
    ("unknown gmail action", b"DELETE /gmail/v1/users/me/messages/1 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "unknown_action"),
    ("invalid json body", b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{{{", 400, "invalid_body"),
    ("fetch without url", b"GET /fetch HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_target"),
    ("fetch with a non-http url", b"GET /fetch?url=file%3A%2F%2F%2Fetc%2Fpasswd HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_target"),
    ("absolute-form with bad port", b"GET http://example.com:99999/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_target"),
    # Userinfo names one host and goes to another (RFC 9110 §4.2.4: treat it as an error), on every entry.
    ("absolute-form with userinfo", b"GET http://serpapi.com@127.0.0.1:1/search HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_target"),
    ("absolute-form with user:password", b"GET http://u:p@serpapi.com/search?q=x HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_target"),
    # RFC 9112 §3.2: an HTTP/1.1 request without Host, or with one that is not host[:port], is a 400.
    ("no Host", b"GET /serpapi/search?q=x HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "malformed_request"),
    ("Host with a space", b"GET /serpapi/search?q=x HTTP/1.1\r\nHost: serpapi.com evil.test\r\n\r\n", 400, "malformed_request"),
    ("Host with userinfo", b"GET http://serpapi.com/search?q=x HTTP/1.1\r\nHost: a@evil.test\r\n\r\n", 400, "malformed_request"),
    ("fetch url with userinfo", b"GET /fetch?url=http%3A%2F%2Fexample.com%40127.0.0.1%3A1%2F HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_target"),
    # Once trapped the process (Int64 of infinity) or left the call without a deadline (NaN).
    ("X-Request-Timeout infinite", b"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\nX-Request-Timeout: inf\r\n\r\n", 400, "invalid_parameter"),
    ("X-Request-Timeout NaN", b"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\nX-Request-Timeout: NaN\r\n\r\n", 400, "invalid_parameter"),
    ("X-Request-Timeout overflowing", b"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\nX-Request-Timeout: 999999999999d\r\n\r\n", 400, "invalid_parameter"),
    ("X-Request-Timeout not a duration", b"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\nX-Request-Timeout: soon\r\n\r\n", 400, "invalid_parameter"),
    ("compat with GET", b"GET /api/proxy-request HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    ("CONNECT to a port not allowed", b"CONNECT api.openai.com:8443 HTTP/1.1\r\nHost: api.openai.com:8443\r\n\r\n", 403, "connect_port_denied"),
    ("CONNECT without a port", b"CONNECT api.openai.com HTTP/1.1\r\nHost: api.openai.com\r\n\r\n", 400, "invalid_target"),
]


@pytest.mark.parametrize("name,data,status,code", CASES, ids=[c[0] for c in CASES])
def test_client_mistakes(sidecar, name, data, status, code):
    before = len(sidecar.upstream.requests)
    got_status, headers, body = parse_response(raw_request(sidecar.proxy_port, data))
    assert got_status == status
    assert len(sidecar.upstream.requests) == before  # nothing reached the upstream
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body[: int(headers["content-length"])])
    assert problem["status"] == status and problem["title"] and problem["detail"] and problem["request_id"]
    if code:
        assert problem["code"] == code
    assert headers["x-request-id"] == problem["request_id"]
    # Still alive and serving.
    assert requests.get(f"{sidecar.admin_url}/healthz", timeout=5).status_code == 200


def test_http_1_0_may_leave_host_out(sidecar):
    status, _, body = parse_response(raw_request(sidecar.proxy_port, b"GET /serpapi/search?q=x HTTP/1.0\r\n\r\n"))
    assert status == 200, body


def test_upstream_unreachable_is_502(sidecar):
    r = requests.get(f"{sidecar.proxy_url}/gmail/v1/users/me/profile", timeout=10)
    assert r.status_code == 502
    assert r.json()["code"] == "upstream_unreachable"


@pytest.mark.parametrize("http2", [True, False], ids=["ahc", "h1pool"])
def test_an_upstream_certificate_the_sidecar_does_not_trust_is_named(pki, https_upstream, sidecar_factory, http2):
    """Without upstream.ca_bundle the fake upstream's certificate chains to no trusted root: the problem
    says so in words (it said "NIOSSLError"), and nothing was sent."""
    cfg = live_config(pki, https_upstream, http2=http2).replace(f"  ca_bundle: {pki.ca_pem}\n", "")
    s = sidecar_factory(cfg, env=LIVE_ENV)
    r = requests.get(f"{s.proxy_url}/serpapi/search?q=x", headers={"X-Agent-Token": s.new_token()}, timeout=10)
    assert r.status_code == 502 and r.json()["code"] == "upstream_unreachable"
    assert r.json()["detail"] == "could not connect to the upstream (TLS: CERTIFICATE_VERIFY_FAILED)"
    assert not https_upstream.requests


def test_upstream_deadline_is_504(sidecar):
    started = time.time()
    r = requests.post(f"{sidecar.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, timeout=10)
    assert r.status_code == 504
    assert r.json()["code"] == "upstream_timeout"
    assert time.time() - started < 2.5


def test_keep_alive_connection_survives_a_refusal(sidecar):
    with requests.Session() as session:
        assert session.get(f"{sidecar.proxy_url}/nothing", timeout=5).status_code == 404
        assert session.get(f"{sidecar.proxy_url}/serpapi/search?q=x", timeout=5).status_code == 200
        assert session.get(f"{sidecar.proxy_url}/openai/v1/files", timeout=5).status_code == 400


def test_no_5xx_for_any_mistake_in_the_access_log(sidecar):
    for _, data, _, _ in CASES:
        raw_request(sidecar.proxy_port, data)
    time.sleep(0.3)
    lines = sidecar.logs("access")
    assert lines
    for line in lines:
        if line["outcome"] not in ("upstream_unreachable", "upstream_timeout"):
            assert line["status"] < 500, line
        # RFC 3339 with milliseconds (a cached prefix once doubled the '.': "12:00:01..873Z")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]), line["ts"]
        assert abs(datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).timestamp() - time.time()) < 60


def test_pipelined_requests_are_all_answered_in_order(sidecar):
    """Two requests in one write: NIO hands the second over as soon as the first response ends, so
    the handler must already be idle by then (a regression once dropped it)."""
    import socket as so
    s = so.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    s.sendall(b"GET /serpapi/search?q=a HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-1\r\n\r\n"
              b"GET /nothing HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-2\r\n\r\n")
    data = b""
    deadline = time.time() + 5
    while data.count(b"HTTP/1.1 ") < 2 and time.time() < deadline:
        data += s.recv(65536)
    s.close()
    first, second = data.index(b"pipe-1"), data.index(b"pipe-2")
    assert data.startswith(b"HTTP/1.1 200") and first < second
    assert b"HTTP/1.1 404" in data


@pytest.mark.parametrize("status", [999, 101], ids=["999", "101-unasked"])
@pytest.mark.parametrize("http2", [True, False], ids=["async-http-client", "own-pool"])
def test_an_upstream_status_outside_100_599_is_a_502(pki, https_upstream, sidecar_factory, http2, status):
    """RFC 9110 §15: a `999` from the upstream is not relayed (no client can interpret it) but answered
    502 upstream_protocol_error, on both TLS transports. So is a `101 Switching Protocols` the sidecar
    never asked for: it must neither leave the agent waiting for a final answer nor put the connection
    (on which HTTP is no longer spoken) back in the pool — the next call answers at once."""
    https_upstream.routes["/search"] = lambda h, rec: https_upstream.send_json(h, status, {"weird": True})
    s = sidecar_factory(live_config(pki, https_upstream, auth=False, http2=http2), env=LIVE_ENV)
    r = requests.get(f"{s.proxy_url}/serpapi/search?q=x", timeout=2.5)
    assert r.status_code == 502 and r.json()["code"] == "upstream_protocol_error", r.text
    https_upstream.routes["/search"] = lambda h, rec: https_upstream.send_json(h, 200, {"fine": True})
    assert requests.get(f"{s.proxy_url}/serpapi/search?q=y", timeout=2.5).json() == {"fine": True}
