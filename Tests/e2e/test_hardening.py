"""Hardening, with the real binary: unbounded chunk extensions, drip-fed heads and bodies, scheme-relative
redirects, the compatibility API's problem answers, repeated single-valued fields, compressed answers that
would hide a credential, start-up failures, a Redis that loses its data, and guard/upstream parse
differentials against fake upstreams that parse the way the real APIs do."""

import gzip
import json
import os
import re
import socket
import subprocess
import time
import zlib

import pytest
import requests

from conftest import BIN, LIVE_ENV, FakeUpstream, Redis, Sidecar, free_port, live_config, metric, parse_response, raw_request


def config(pki, up, extra="", auth=False):
    """live_config, whose own `limits:` and `egress:` blocks give way to the test's."""
    base = live_config(pki, up, extra=extra, auth=auth)
    if "\nlimits:" in extra:
        base = base.replace("limits:\n  drain_timeout: 10s\n", "", 1)
    if "\negress:" in extra:
        base = base.replace('egress:\n  allow_cidrs: ["127.0.0.0/8"]   # the fake upstreams run on loopback, which http_fetch refuses by default\n', "", 1)
    return base


def open_sidecar(pki, up, sidecar_factory, extra="", auth=False, env=None):
    return sidecar_factory(config(pki, up, extra="\n" + extra, auth=auth), env={**LIVE_ENV, **(env or {})})


def read_all(sock, timeout=5.0):
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False


# ---------------------------------------------------------------- 1. chunk extensions


@pytest.mark.parametrize("extension", [b";" + b"a" * (1 << 20), b"".join(b";a=b" for _ in range(50_000))],
                         ids=["one-megabyte-extension", "fifty-thousand-parameters"])  # short ids: pytest exports them
def test_chunk_extensions_are_bounded(pki, https_upstream, sidecar_factory, extension):
    s = open_sidecar(pki, https_upstream, sidecar_factory)
    sock = socket.create_connection(("127.0.0.1", s.proxy_port))
    head = b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    try:
        sock.sendall(head + b"2" + extension + b"\r\n{}\r\n0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and closed while the flood was still being sent
    data, closed = read_all(sock)
    status, headers, body = parse_response(data)
    assert status == 400 and json.loads(body[: int(headers["content-length"])])["code"] == "invalid_framing"
    assert closed, "the connection must be closed after the refusal"
    assert not https_upstream.requests


# ---------------------------------------------------------------- 2. deadlines on request input


@pytest.fixture
def timed(pki, https_upstream, sidecar_factory):
    return open_sidecar(pki, https_upstream, sidecar_factory, extra="limits:\n  header_timeout: 1s\n  body_timeout: 1s\n  drain_timeout: 2s\n")


def test_a_drip_fed_head_is_cut_with_408(timed):
    sock = socket.create_connection(("127.0.0.1", timed.proxy_port))
    sock.sendall(b"GET /serpapi/search?q=x HTTP/1.1\r\n")
    start = time.monotonic()
    answer = b""
    sock.settimeout(0.3)
    while time.monotonic() - start < 5:
        try:
            sock.sendall(b"X")  # one byte every 0.3 s: each gap far below idle_timeout
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        except socket.timeout:
            continue
    elapsed = time.monotonic() - start
    status, headers, body = parse_response(answer)
    assert status == 408 and json.loads(body)["code"] == "request_timeout"
    assert elapsed < 3, f"cut after {elapsed:.1f} s (header_timeout 1s)"


def test_a_drip_fed_body_is_cut_with_408(timed):
    sock = socket.create_connection(("127.0.0.1", timed.proxy_port))
    sock.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"mo")
    data, closed = read_all(sock, timeout=5)
    status, _, body = parse_response(data)
    assert status == 408 and json.loads(body)["code"] == "request_timeout" and closed


def test_an_idle_keep_alive_connection_keeps_idle_timeout(timed):
    sock = socket.create_connection(("127.0.0.1", timed.proxy_port))
    for _ in range(2):
        sock.sendall(b"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        m = re.search(rb"(?i)content-length: (\d+)", data)
        head, _, body = data.partition(b"\r\n\r\n")
        while len(body) < int(m.group(1)):
            body += sock.recv(65536)
        time.sleep(1.6)  # longer than header_timeout: idle between requests is not a slow head


def test_the_admin_port_closes_stalled_and_idle_connections_but_not_a_stream(sidecar_factory):
    """The admin port (Hummingbird) kept every connection forever: a head that never ends, or a client
    that connects and says nothing, held a descriptor each — enough of them starve the probes. They now
    close after limits.idle_timeout; a run's event stream, an answer being written, is never cut."""
    s = sidecar_factory("version: 1\nlimits: {idle_timeout: 1s, drain_timeout: 2s}\n")
    port = int(s.admin.rsplit(":", 1)[1])

    def seconds_to_close(sock, limit):
        sock.settimeout(limit)
        start = time.monotonic()
        try:
            while sock.recv(4096):
                pass
            return time.monotonic() - start
        except (socket.timeout, ConnectionResetError):
            return None

    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    idle = socket.create_connection(("127.0.0.1", port))
    assert (seconds_to_close(stalled, 5) or 99) < 3
    assert (seconds_to_close(idle, 5) or 99) < 3
    run = s.admin_request("POST", "/api/runs", {"name": "watched"}).json()["run"]["id"]
    with requests.get(f"{s.admin_url}/api/runs/{run}/events", headers={"Authorization": f"Bearer {s.admin_token}"},
                      stream=True, timeout=10) as stream:
        time.sleep(2.5)  # idle on the wire, longer than idle_timeout
        assert s.admin_request("POST", f"/api/runs/{run}/start").status_code == 200
        seen = []
        for line in stream.iter_lines():
            seen.append(line)
            if b"run.running" in line:
                break
        assert any(b"run.running" in l for l in seen), seen
    assert requests.get(f"{s.admin_url}/healthz", timeout=5).status_code == 200


# ---------------------------------------------------------------- 3. redirects


def test_scheme_relative_redirects_go_to_the_named_host_and_pass_the_policy(pki, sidecar_factory, tmp_path):
    landing, other, origin = FakeUpstream(None), FakeUpstream(None), FakeUpstream(None)
    try:
        origin.routes["/hop"] = lambda h, rec: (h.send_response(302), h.send_header("Location", f"//127.0.0.1:{landing.port}/landed?x=1"),
                                                h.send_header("Content-Length", "0"), h.end_headers())
        origin.routes["/denied"] = lambda h, rec: (h.send_response(302), h.send_header("Location", f"//127.0.0.1:{other.port}/nope"),
                                                   h.send_header("Content-Length", "0"), h.end_headers())
        policy = tmp_path / "policy.yaml"
        policy.write_text(f"""version: 1
roles:
  fetcher:
    allow: ["http_fetch:*"]
    rules:
      - scope: "http_fetch:*"
        guards: {{ports: [{origin.port}, {landing.port}]}}
""")
        s = sidecar_factory(config(pki, origin, auth=True, extra=f"policy: {{file: \"{policy}\"}}\negress:\n  allow_cidrs: [\"127.0.0.0/8\"]\n  follow_redirects: 2\n"),
                            env=LIVE_ENV)
        token = s.new_token(role="fetcher")
        proxies = {"http": s.proxy_url_with(token)}
        r = requests.get(f"http://127.0.0.1:{origin.port}/hop", proxies=proxies, timeout=10, headers={"Authorization": "Bearer site"})
        assert r.status_code == 200 and r.json()["path"] == "/landed"
        assert landing.requests[-1].path == "/landed?x=1"
        assert not any(rec.path.startswith("//") for rec in origin.requests)
        assert landing.requests[-1].header("Authorization") is None  # another origin gets none of the agent's credentials
        r = requests.get(f"http://127.0.0.1:{origin.port}/denied", proxies=proxies, timeout=10)
        assert r.status_code == 403 and r.json()["code"] == "egress_denied"
        assert not other.requests
    finally:
        for up in (landing, other, origin):
            up.close()


# ---------------------------------------------------------------- 4. the compatibility API's problems


COMPAT_CASES = [
    ("too large", b"POST /api/proxy-request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n", 413, "body_too_large"),
    ("chunked too large", b"POST /api/proxy-request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
     + (b"8000\r\n" + b"a" * 0x8000 + b"\r\n") * 40 + b"0\r\n\r\n", 413, "body_too_large"),
    ("wrong type", b"POST /api/proxy-request HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}", 415, "unsupported_media_type"),
    ("a type that only starts like json", b"POST /api/proxy-request HTTP/1.1\r\nHost: x\r\nContent-Type: application/jsonl\r\nContent-Length: 2\r\n\r\n{}", 415, "unsupported_media_type"),
    ("not json", b"POST /api/proxy-request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n{{{", 400, "invalid_body"),
    ("duplicate key", b'POST /api/proxy-request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{"tool":"serpapi","tool":"openai","a":1}', 400, "ambiguous_parameter"),
    ("no tool", b"POST /api/proxy-request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", 401, "token_missing"),
    ("get", b"GET /api/proxy-request HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    ("bad framing", b"POST /api/proxy-request HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "invalid_framing"),
    ("two content types", b"POST /api/proxy-request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}", 400, "ambiguous_header"),
]


@pytest.mark.parametrize("name,data,status,code", COMPAT_CASES, ids=[c[0] for c in COMPAT_CASES])
def test_every_compat_problem_says_success_false(pki, https_upstream, sidecar_factory, name, data, status, code):
    s = open_sidecar(pki, https_upstream, sidecar_factory, auth=True)
    got, headers, body = parse_response(raw_request(s.proxy_port, data))
    problem = json.loads(body[: int(headers["content-length"])])
    assert (got, problem["code"]) == (status, code)
    assert problem["success"] is False


def test_compat_refusals_by_policy_and_upstream_say_success_false(pki, https_upstream, sidecar_factory):
    s = open_sidecar(pki, https_upstream, sidecar_factory, auth=True)
    token = s.new_token(scopes=["serpapi:search"])
    for envelope, status, code in [
        ({"agent_token": token, "tool": "openai", "action": "chat", "params": {"prompt": "hi"}}, 403, "scope_denied"),
        ({"agent_token": "garbage", "tool": "serpapi", "action": "search", "params": {"q": "x"}}, 401, "token_malformed"),
        ({"agent_token": token, "tool": "nope", "action": "x", "params": {}}, 400, "unknown_action"),
    ]:
        r = requests.post(f"{s.proxy_url}/api/proxy-request", json=envelope, timeout=10)
        assert (r.status_code, r.json()["code"], r.json()["success"]) == (status, code, False)


# ---------------------------------------------------------------- 5. single-valued fields


def test_repeated_x_agent_id_is_refused_in_either_order(pki, https_upstream, sidecar_factory):
    s = open_sidecar(pki, https_upstream, sidecar_factory, auth=True)
    agent = s.new_agent()
    token = s.new_token(agent)
    for first, second in [(agent, "agt_other"), ("agt_other", agent)]:
        data = (f"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\nX-Agent-Token: {token}\r\nX-Agent-Id: {first}\r\nX-Agent-Id: {second}\r\n\r\n").encode()
        status, headers, body = parse_response(raw_request(s.proxy_port, data))
        assert status == 400 and json.loads(body)["code"] == "ambiguous_header"
    data = f"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\nX-Agent-Token: {token}\r\nX-Agent-Id: {agent}, agt_other\r\n\r\n".encode()
    assert parse_response(raw_request(s.proxy_port, data))[0] == 400
    assert not https_upstream.requests


# ---------------------------------------------------------------- 6. compressed answers


def compressed_route(up, coding, payload):
    def route(h, rec):
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Encoding", coding)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
    return route


@pytest.mark.parametrize("coding,compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_a_compressed_echo_of_the_key_is_decoded_and_scrubbed(pki, https_upstream, sidecar_factory, coding, compress):
    echo = json.dumps({"echo": "your key is sk-REAL-0123456789abcdef", "n": 1}).encode()
    https_upstream.routes["/v1/embeddings"] = compressed_route(https_upstream, coding, compress(echo))
    s = open_sidecar(pki, https_upstream, sidecar_factory)
    r = requests.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, timeout=10)
    assert r.status_code == 200
    assert "sk-REAL" not in r.text and "[REDACTED]" in r.text
    assert "content-encoding" not in {k.lower() for k in r.headers}
    raw = raw_request(s.proxy_port, b'POST /openai/v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}')
    assert b"sk-REAL" not in raw


def test_an_encoding_that_cannot_be_decoded_is_refused(pki, https_upstream, sidecar_factory):
    https_upstream.routes["/v1/embeddings"] = compressed_route(https_upstream, "br", b"\x0b\x02\x80hello\x03")
    s = open_sidecar(pki, https_upstream, sidecar_factory)
    r = requests.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, timeout=10)
    assert r.status_code == 502 and r.json()["code"] == "upstream_protocol_error"


def call_through(s, up, tool):
    """One call of `tool` through the sidecar to `up`: an OpenAI embeddings call, or an http_fetch GET."""
    if tool == "openai":
        return requests.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, timeout=10)
    return requests.get(f"{up.base_url}/page", proxies={"http": s.proxy_url}, timeout=10)


@pytest.mark.parametrize("coding", ["gzip, chunked", "identity"])
@pytest.mark.parametrize("tool", ["openai", "http_fetch"])
def test_a_transfer_coding_besides_chunked_is_refused_on_every_tool(pki, http_upstream, sidecar_factory, coding, tool):
    """`Transfer-Encoding` is hop-by-hop: relayed without it, bytes gzip-framed by the upstream would reach
    the agent as if they were the body — past the scrubber unseen, or as garbage on a fetch. Every tool
    refuses such an answer (502), and nothing of it reaches the agent."""
    payload = gzip.compress(b'{"echo": "sk-REAL-0123456789abcdef"}')

    def route(h, rec):
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: {coding}\r\n\r\n".encode()
        body = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n" if "chunked" in coding else payload
        h.wfile.write(head + body)
        h.wfile.flush()
        h.close_connection = True
    http_upstream.routes["/"] = route
    s = sidecar_factory(live_config(pki, http_upstream, auth=False), env=LIVE_ENV)
    r = call_through(s, http_upstream, tool)
    assert r.status_code == 502 and r.json()["code"] == "upstream_protocol_error", r.text
    assert payload not in r.content


@pytest.mark.parametrize("tool", ["openai", "http_fetch"])
def test_an_upstream_407_is_not_passed_on_as_the_sidecars_own(pki, http_upstream, sidecar_factory, tool):
    """A 407 from beyond the sidecar would read, to the agent, as its proxy (the sidecar) refusing its
    token, and a client may answer it with its proxy credentials. It is the sidecar failing to reach the
    upstream: 502, without the upstream's Proxy-Authenticate."""
    http_upstream.routes["/"] = lambda h, rec: h.wfile.write(
        b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="corp"\r\nContent-Length: 4\r\n\r\nauth')
    s = sidecar_factory(live_config(pki, http_upstream, auth=False), env=LIVE_ENV)
    r = call_through(s, http_upstream, tool)
    assert r.status_code == 502 and r.json()["code"] == "upstream_protocol_error", r.text
    assert "407" in r.json()["detail"] and "proxy-authenticate" not in {k.lower() for k in r.headers}


def assert_502_then_connection_usable(s, up):
    """The agent gets 502 `upstream_protocol_error` (no echoed key in it), and its connection serves the next call."""
    with requests.Session() as session:
        r = session.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, timeout=10)
        assert r.status_code == 502 and r.json()["code"] == "upstream_protocol_error", r.text
        assert "sk-REAL" not in r.text
        up.routes["/v1/embeddings"] = lambda h, rec: up.send_json(h, 200, {"fine": True})
        assert session.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, timeout=10).json() == {"fine": True}


@pytest.mark.parametrize("payload", [b"hello", gzip.compress(b'{"echo": "sk-REAL-0123456789abcdef"}' * 20)[:-12]], ids=["corrupt", "cut-off"])
def test_a_whole_answer_its_gzip_cannot_undo_is_a_502_not_a_cut_connection(pki, https_upstream, sidecar_factory, payload):
    """An answer that says gzip but is not (or stops short) cannot be checked for the credential. When it
    has all arrived with its head, the agent gets the problem answer instead of a 200 head followed by a
    cut connection, and the connection to the agent stays usable. (Head and body are written in one
    piece, on the sidecar's own pool, so the whole answer is there at once.)"""
    def route(h, rec):
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        h.wfile.write(head + payload)
        h.wfile.flush()
        h.close_connection = True
    https_upstream.routes["/v1/embeddings"] = route
    s = sidecar_factory(live_config(pki, https_upstream, auth=False, http2=False), env=LIVE_ENV)
    assert_502_then_connection_usable(s, https_upstream)


def late_body_route(payload, delay, split=None):
    """An answer that says gzip: the head first, then (after `delay`) the body — in two writes at `split`."""
    def route(h, rec):
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.flush()
        time.sleep(delay)
        cut = split or len(payload)
        h.wfile.write(payload[:cut])
        h.wfile.flush()
        time.sleep(delay)
        h.wfile.write(payload[cut:])
    return route


@pytest.mark.parametrize("http2", [False, True], ids=["own-pool", "async-http-client"])
@pytest.mark.parametrize("payload", [b"hello-not-gzip", gzip.compress(b'{"echo": "sk-REAL-0123456789abcdef"}' * 20)[:-12]], ids=["corrupt", "cut-off"])
def test_a_gzip_body_that_comes_after_its_head_and_cannot_be_undone_is_a_502(pki, https_upstream, sidecar_factory, payload, http2):
    """The body arrives after the head (as most servers write them), so it is not all there when the head
    is: a body the sidecar decodes is read ahead before the head goes out, and a corrupt or cut-off one is
    the problem answer — not a 200 head and then a cut connection — on both upstream transports."""
    https_upstream.routes["/v1/embeddings"] = late_body_route(payload, 0.05)
    s = sidecar_factory(live_config(pki, https_upstream, auth=False, http2=http2), env=LIVE_ENV)
    assert_502_then_connection_usable(s, https_upstream)


def test_a_large_gzip_body_is_still_streamed_whole_and_scrubbed(pki, https_upstream, sidecar_factory):
    """Past the read-ahead (64 KiB decoded), a decoded body streams on as before: all of it arrives, the key
    echoed in its second half scrubbed."""
    text = json.dumps({"data": "x" * 200_000, "echo": "sk-REAL-0123456789abcdef"}).encode()
    payload = gzip.compress(text)
    https_upstream.routes["/v1/embeddings"] = late_body_route(payload, 0.05, split=len(payload) // 2)
    s = sidecar_factory(live_config(pki, https_upstream, auth=False, http2=False), env=LIVE_ENV)
    r = requests.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["data"] == "x" * 200_000 and "sk-REAL" not in r.text


def test_a_cacheable_answer_its_gzip_cannot_undo_is_not_cached(pki, https_upstream, sidecar_factory):
    """A search answer (cacheable for 10 minutes) that says gzip but is corrupt is a 502 — and is not
    kept: once the upstream answers properly, the same search gets the proper answer, not the cached 502."""
    def corrupt(h, rec):
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", "5")
        h.end_headers()
        h.wfile.write(b"hello")
    https_upstream.routes["/search"] = corrupt
    s = sidecar_factory(live_config(pki, https_upstream, auth=False, http2=False), env=LIVE_ENV)
    r = requests.get(f"{s.proxy_url}/serpapi/search?q=gz", timeout=10)
    assert r.status_code == 502 and r.json()["code"] == "upstream_protocol_error", r.text
    https_upstream.routes["/search"] = lambda h, rec: https_upstream.send_json(h, 200, {"organic_results": ["fine"]})
    r = requests.get(f"{s.proxy_url}/serpapi/search?q=gz", timeout=10)
    assert r.status_code == 200 and r.json() == {"organic_results": ["fine"]} and r.headers.get("X-Cache") == "MISS", r.text
    assert requests.get(f"{s.proxy_url}/serpapi/search?q=gz", timeout=10).headers.get("X-Cache") == "HIT"
    metrics = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert re.search(r'gateway_cache_undecodable_total\{tool="serpapi"\} 1', metrics), metrics


def test_a_decompression_bomb_hits_the_response_limit_not_memory(pki, https_upstream, sidecar_factory):
    bomb = gzip.compress(b"0" * (64 << 20))
    https_upstream.routes["/v1/embeddings"] = compressed_route(https_upstream, "gzip", bomb)
    s = open_sidecar(pki, https_upstream, sidecar_factory, extra="limits:\n  max_response_body_bytes: 1048576\n  drain_timeout: 2s\n")
    before = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{s.proc.pid}/status").read()).group(1))
    try:
        r = requests.post(f"{s.proxy_url}/openai/v1/embeddings", json={"model": "m", "input": "x"}, timeout=20, stream=True)
        received = b""
        for chunk in r.iter_content(65536):
            received += chunk
        # Answered before the head: the problem. Or, with the head gone, the connection is cut.
        assert r.status_code == 502 and json.loads(received)["code"] == "upstream_response_too_large"
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError):
        pass
    after = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{s.proc.pid}/status").read()).group(1))
    assert after - before < 32 * 1024, f"RSS grew {after - before} KiB on a {len(bomb)}-byte bomb"


# ---------------------------------------------------------------- 7. start-up failures


def run_to_exit(config_yaml: str, tmp_path, env=None, timeout=30):
    path = tmp_path / "sidecar.yaml"
    path.write_text(config_yaml)
    full = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    full.update({"SIDECAR_STATE_DIR": str(tmp_path / "state"), "SIDECAR_PROXY_LISTEN": "127.0.0.1:0", "SIDECAR_ADMIN_LISTEN": "127.0.0.1:0"})
    full.update(env or {})
    out = subprocess.run([str(BIN), "run", "--config", str(path)], capture_output=True, text=True, timeout=timeout, env=full, cwd=tmp_path)
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    return out.returncode, lines, out.stderr


def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


@pytest.mark.parametrize("case", ["proxy port busy", "admin port busy", "unreadable key", "bad ca bundle", "state dir unusable", "broken credential",
                                  "short admin token"])
def test_start_up_failures_end_in_one_line_and_exit_1(tmp_path, case):
    env, document, expect = {}, "version: 1\n", ""
    holder = None
    if case in ("proxy port busy", "admin port busy"):
        holder = busy_port()
        addr = f"127.0.0.1:{holder.getsockname()[1]}"
        env["SIDECAR_PROXY_LISTEN" if case == "proxy port busy" else "SIDECAR_ADMIN_LISTEN"] = addr
        expect = f"cannot listen on {addr} ({'proxy' if case == 'proxy port busy' else 'admin'})"
    elif case == "unreadable key":
        keys = tmp_path / "keys"
        keys.mkdir()
        (keys / "fleet-x.key.pem").write_text("not a key")
        document += f"auth: {{keys_dir: \"{keys}\"}}\n"
        expect = "fleet"
    elif case == "bad ca bundle":
        bundle = tmp_path / "bundle.pem"
        bundle.write_text("garbage")
        document += f"upstream: {{ca_bundle: \"{bundle}\"}}\n"
        expect = f"upstream.ca_bundle {bundle}"
    elif case == "short admin token":
        # Guessable at the admin port's 100 requests a second; the generated one is 256 bits.
        env["SIDECAR_ADMIN_TOKEN"] = "admin-pw\n"
        expect = "SIDECAR_ADMIN_TOKEN: the admin token must be at least 16 characters"
    elif case == "broken credential":
        # Two lines where one key belongs (a paste gone wrong): named, never shown, before anything listens.
        env["OPENAI_API_KEY"] = "sk-REAL-0123456789\nabcdef"
        document += "tools: {openai: {mode: live}}\n"
        expect = "OPENAI_API_KEY: the openai credential"
    else:
        (tmp_path / "file").write_text("x")
        env["SIDECAR_STATE_DIR"] = str(tmp_path / "file" / "state")
        expect = f"state.dir {tmp_path / 'file' / 'state'}"
    try:
        code, lines, stderr = run_to_exit(document, tmp_path, env)
    finally:
        if holder:
            holder.close()
    assert code == 1, f"exit {code} (a negative code is a signal: the process trapped)\n{stderr}"
    failed = [l for l in lines if l.get("msg") == "sidecar failed"]
    assert len(failed) == 1 and expect in failed[0]["error"], lines[-3:]
    assert "Client not shut down" not in stderr
    assert "sk-REAL" not in json.dumps(lines) + stderr
    # The one line says it: no other error or warning around it (a listener cancelled half-way, a drain
    # deadline that did not pass).
    noise = [l for l in lines if l.get("level") in ("error", "warning") and "no credential" not in l.get("msg", "")]
    assert noise == [], noise


def test_a_second_sidecar_on_a_state_dir_in_use_is_refused_and_the_first_serves_on(tmp_path, sidecar_factory):
    """Two sidecars on one state directory would each keep the embedded stores' state in memory and
    write it to the same SQLite files: the second's run events would overwrite the first's, limits would
    be counted twice over. The second exits 1 naming the first's pid; the first is unharmed; once it has
    stopped the directory is free, with no stale lock even after a kill -9."""
    state = tmp_path / "state"
    first = sidecar_factory(None, env={"SIDECAR_STATE_DIR": str(state)})
    code, lines, stderr = run_to_exit("version: 1\n", tmp_path)
    assert code == 1, f"exit {code}\n{stderr}"
    failed = [l for l in lines if l.get("msg") == "sidecar failed"]
    assert len(failed) == 1 and f"state.dir {state}: in use by another sidecar (pid {first.proc.pid})" in failed[0]["error"], lines[-3:]
    assert "Client not shut down" not in stderr
    assert requests.get(f"{first.admin_url}/readyz", timeout=5).status_code == 200
    first.proc.kill()
    first.proc.wait()
    again = sidecar_factory(None, env={"SIDECAR_STATE_DIR": str(state)})
    assert requests.get(f"{again.admin_url}/readyz", timeout=5).status_code == 200


def test_a_wrong_redis_password_is_named_at_start(tmp_path, sidecar_factory):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--requirepass", "right-password"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        s = sidecar_factory("version: 1\n", env={"REDIS_URL": f"redis://:wrong-password@127.0.0.1:{port}/0"})
        line = s.wait_for_log(lambda r: "redis" in r.get("msg", "") and "WRONGPASS" in r.get("error", ""), timeout=5)
        assert "wrong-password" not in json.dumps(line)
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- 8. a Redis that loses its data


def redis_cli(redis, *args):
    return subprocess.run(["redis-cli", "-p", str(redis.port), *args], capture_output=True, text=True, timeout=10).stdout


def test_revocations_survive_redis_losing_its_data(pki, https_upstream, sidecar_factory):
    redis = Redis()
    try:
        cfg = live_config(pki, https_upstream)
        s = sidecar_factory(cfg, env={**LIVE_ENV, "REDIS_URL": redis.url})
        agent = s.new_agent()
        revoked = s.new_token(agent)
        token_id = s.admin_request("GET", f"/api/agents/{agent}/tokens").json()["tokens"][0]["token_id"]
        kept = s.new_token(agent)
        assert s.admin_request("POST", f"/api/tokens/{token_id}/revoke").status_code == 200

        def call(token):
            return requests.get(f"{s.proxy_url}/serpapi/search?q=x", headers={"X-Agent-Token": token}, timeout=10)
        assert call(revoked).json()["code"] == "token_revoked" and call(kept).status_code == 200

        redis.kill()
        redis.start()  # no persistence: it comes back empty
        deadline = time.time() + 15
        while time.time() < deadline and token_id not in redis_cli(redis, "SMEMBERS", "{sidecar}:revoked"):
            time.sleep(0.1)
        assert token_id in redis_cli(redis, "SMEMBERS", "{sidecar}:revoked"), "the store was not restored"
        r = call(revoked)
        assert r.status_code == 401 and r.json()["code"] == "token_revoked", "a revoked token was accepted after Redis lost its data"
        r = call(kept)
        assert r.status_code == 200, f"a registered agent was locked out: {r.text} {s.lines[-15:]}"
        text = requests.get(f"{s.admin_url}/metrics", timeout=5).text
        assert metric(text, "gateway_identity_store_data_loss_total") >= 1
        assert "restored" in requests.get(f"{s.admin_url}/readyz", timeout=5).json()["identity_store"]
    finally:
        redis.kill()


# ---------------------------------------------------------------- 9. guards and upstreams read the same values


POLICY = """version: 1
roles:
  guarded:
    allow: ["openai:*", "serpapi:search", "gmail_send:*"]
    rules:
      - scope: "openai:*"
        guards: {models: [gpt-4o-mini], max_tokens: 100}
      - scope: "serpapi:search"
        guards: {engines: [google], max_num: 10}
      - scope: "gmail_send:send"
        guards: {allowed_domains: [ok.test]}
"""


@pytest.fixture
def guarded(pki, https_upstream, sidecar_factory, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    up = https_upstream
    # The fake APIs read as the real ones do: Python's json (the last duplicate wins), Rails' query
    # parsing (the last value wins), and they record what they would have acted on.
    up.acted = []

    def openai(h, rec):
        body = json.loads(rec.body)
        up.acted.append(("openai", body.get("model"), body.get("max_tokens")))
        up.send_json(h, 200, {"id": "x", "object": "chat.completion", "choices": [], "usage": {"total_tokens": 1}})

    def serp(h, rec):
        from urllib.parse import parse_qsl, urlsplit
        params = dict(parse_qsl(urlsplit(rec.path).query, separator="&"))
        up.acted.append(("serpapi", params.get("engine"), params.get("num")))
        up.send_json(h, 200, {"organic_results": []})
    up.routes["/v1/chat/completions"] = openai
    up.routes["/search"] = serp
    up.routes["/gmail/v1/users/me/messages/send"] = lambda h, rec: up.send_json(h, 200, {"id": "m"})
    s = sidecar_factory(live_config(pki, up, extra=f"policy: {{file: \"{policy}\"}}\n"), env=LIVE_ENV)
    s.token = s.new_token(role="guarded")
    s.up = up
    return s


@pytest.mark.parametrize("body", [
    b'{"model":"gpt-4o-mini","model":"gpt-4o","max_tokens":50,"messages":[]}',
    b'{"model":"gpt-4o-mini","mod\\u0065l":"gpt-4o","max_tokens":50,"messages":[]}',
    b'{"model":"gpt-4o-mini","max_tokens":50,"max_tokens":5000,"messages":[]}',
    b'{"model":"gpt-4o-mini","max_tokens":50,"messages":[],"stream":false,"stream":true}',
    b'\xef\xbb\xbf{"model":"gpt-4o-mini","max_tokens":50,"messages":[]}',
])
def test_openai_bodies_the_upstream_would_read_differently_are_refused(guarded, body):
    r = requests.post(f"{guarded.proxy_url}/openai/v1/chat/completions", data=body,
                      headers={"Authorization": f"Bearer {guarded.token}", "Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 400 and r.json()["code"] in ("ambiguous_parameter", "invalid_body")
    assert not guarded.up.acted


@pytest.mark.parametrize("body", [
    {"model": "gpt-4o-mini", "max_tokens": 60, "n": 2, "messages": []},
    {"model": "gpt-4o-mini", "max_tokens": 30, "n": 1, "best_of": 4, "prompt": "x"},
])
def test_a_cap_times_the_choices_the_upstream_makes_is_judged_whole(guarded, body):
    """max_tokens holds per choice upstream: 60 tokens × n 2 may generate 120, over the cap of 100."""
    path = "/openai/v1/completions" if "prompt" in body else "/openai/v1/chat/completions"
    r = requests.post(f"{guarded.proxy_url}{path}", json=body, headers={"Authorization": f"Bearer {guarded.token}"}, timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "param_denied" and r.json()["parameter"] == "max_tokens"
    assert not guarded.up.acted


@pytest.mark.parametrize("body", [
    {"model": "gpt-4o-mini", "max_tokens": 8_000_000_000_000_000, "n": 2000, "messages": []},
    {"model": "gpt-4o-mini", "max_tokens": 8_999_999_999_999_999, "n": 8_999_999_999_999_999, "messages": []},
    {"model": "gpt-4o-mini", "max_tokens": 8_999_999_999_999_999, "best_of": 3, "prompt": "x"},
    {"model": "gpt-4o-mini", "n": 8_999_999_999_999_999, "messages": []},
])
def test_extreme_caps_and_choices_are_refused_by_the_budget_not_a_crash(pki, https_upstream, sidecar_factory, tmp_path, body):
    """The cap times the choices was pinned at Int.max, and the budget added the input to it: one request
    trapped the process. Every count is now pinned below where sums can overflow."""
    policy = tmp_path / "policy.yaml"
    policy.write_text('version: 1\nroles:\n  b:\n    allow: ["openai:*"]\n    rules:\n'
                      '      - {scope: "openai:*", budget: {tokens: 100000, window: day, timezone: UTC}}\n'
                      '      - {scope: "openai:*", mode: report, budget: {tokens: 10, window: hour, timezone: UTC}}\n')
    up = https_upstream
    up.routes["/v1/chat/completions"] = lambda h, rec: up.send_json(
        h, 200, {"id": "x", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    s = sidecar_factory(live_config(pki, up, extra=f"policy: {{file: \"{policy}\"}}\n"), env=LIVE_ENV)
    token = s.new_token(role="b")
    path = "/openai/v1/completions" if "prompt" in body else "/openai/v1/chat/completions"
    for _ in range(3):
        r = requests.post(f"{s.proxy_url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 429 and r.json()["code"] == "budget_exhausted", r.text
    ok = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": []},
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert ok.status_code == 200 and s.proc.poll() is None


@pytest.mark.parametrize("query", ["q=a&num=5&num=100", "q=a&engine=google&engine=bing", "q=a&num=5&n%75m=100", "q=a;num=100", "q=a&num[]=100"])
def test_serpapi_queries_the_upstream_would_read_differently_are_refused(guarded, query):
    r = requests.get(f"{guarded.proxy_url}/serpapi/search?{query}", headers={"X-Agent-Token": guarded.token}, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "ambiguous_parameter"
    assert not guarded.up.acted


def test_a_clean_call_reaches_the_upstream_as_the_guard_read_it(guarded):
    r = requests.get(f"{guarded.proxy_url}/serpapi/search?q=a&num=5", headers={"X-Agent-Token": guarded.token}, timeout=10)
    assert r.status_code == 200 and guarded.up.acted == [("serpapi", None, "5")]


@pytest.mark.parametrize("message", [
    'To: "<a@ok.test>"@evil.test\r\nSubject: s\r\n\r\nhi',
    "To: a@ok.test\r\nBcc\t: x@evil.test\r\n\r\nhi",
    "To: a@ok.test\r\nResent-Bcc: x@evil.test\r\n\r\nhi",
    "To: =?utf-8?b?eEBldmlsLnRlc3Q=?=\r\n\r\nhi",
    "To: a@ok.test\r\nSubject: one\r\nSubject: two\r\n\r\nhi",
])
def test_gmail_recipient_tricks_are_refused(guarded, message):
    import base64
    raw = base64.urlsafe_b64encode(message.encode()).decode()
    r = requests.post(f"{guarded.proxy_url}/gmail/v1/users/me/messages/send", json={"raw": raw},
                      headers={"Authorization": f"Bearer {guarded.token}"}, timeout=10)
    assert r.status_code in (400, 403) and r.json()["code"] in ("param_denied", "ambiguous_parameter", "invalid_parameter")
    assert not any(rec.path.startswith("/gmail") for rec in guarded.up.requests)


# ---------------------------------------------------------------- request bodies: large ones pass, all of them at once are bounded


def test_a_screenshot_sent_inline_reaches_openai(pki, https_upstream, sidecar_factory):
    """A vision or computer-use agent sends its screenshot as a base64 data URL in the chat body: ~5 MB
    pass with the default limits, through the openai package, to the upstream byte for byte."""
    import base64
    import openai
    got = {}

    def handler(h, rec):
        got["size"] = len(rec.body)
        got["url"] = json.loads(rec.body)["messages"][0]["content"][1]["image_url"]["url"]
        https_upstream.send_json(h, 200, {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "a login form"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    https_upstream.routes["/v1/chat/completions"] = handler
    s = open_sidecar(pki, https_upstream, sidecar_factory, auth=True)
    image = "data:image/png;base64," + base64.b64encode(os.urandom(3_900_000)).decode()
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(), max_retries=0, timeout=30)
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is on the screen?"}, {"type": "image_url", "image_url": {"url": image}}]}])
    assert r.choices[0].message.content == "a login form"
    assert got["size"] > 5_000_000 and got["url"] == image


def test_bodies_held_across_connections_are_bounded_and_given_back(pki, https_upstream, sidecar_factory):
    """Two 2 MiB bodies at once do not fit a 3 MiB bound: the chunk that would pass it is refused with 503
    `sidecar_overloaded` and Retry-After; once the first request is answered its bytes are given back and
    the next 2 MiB body is read whole."""
    s = open_sidecar(pki, https_upstream, sidecar_factory, auth=True,
                     extra="limits:\n  max_request_body_bytes: 2097152\n  max_buffered_request_bytes: 3145728\n  drain_timeout: 2s\n")
    tok = s.new_token()
    size = 2 << 20

    def head():
        return (f"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n").encode()

    body = b"[" + b"0," * (size // 2 - 1) + b"]"
    assert len(body) == size
    first = socket.create_connection(("127.0.0.1", s.proxy_port))
    first.sendall(head() + body[: 1536 << 10])  # 1.5 MiB held
    time.sleep(0.3)
    second = socket.create_connection(("127.0.0.1", s.proxy_port))
    try:
        second.sendall(head() + body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and shut before all of it was read
    data, _ = read_all(second)
    status, headers, text = parse_response(data)
    problem = json.loads(text[: int(headers["content-length"])])
    assert (status, problem["code"], headers.get("retry-after")) == (503, "sidecar_overloaded", "1")
    first.sendall(body[1536 << 10:])
    data, _ = read_all(first, timeout=2)
    status, _, text = parse_response(data)
    assert status == 400, text  # the body is read whole and judged (a JSON array is no chat request)
    first.close()
    third = socket.create_connection(("127.0.0.1", s.proxy_port))
    third.sendall(head() + body)
    data, _ = read_all(third, timeout=2)
    assert parse_response(data)[0] == 400
    third.close()
    line = s.wait_for_log(lambda r: r.get("msg") == "access" and r.get("outcome") == "sidecar_overloaded")
    assert line["status"] == 503
    text = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(text, "gateway_outcomes_total", tool="none", outcome="sidecar_overloaded") == 1  # refused before it was read
    assert metric(text, "gateway_request_bodies_buffered_bytes") == 0  # every body given back


def test_a_large_body_is_read_off_the_loop_and_small_calls_do_not_wait_behind_it(sidecar_factory):
    """Reading a request body is linear, but it ran on the connection's event loop: two 30 MB chat
    bodies made every other call on the loops wait 10-18 s (debug build). Bodies past 256 KiB are read in
    a task; small calls meanwhile answer at their usual speed, and the large ones are answered as before."""
    import threading
    s = sidecar_factory("version: 1\nauth: {required: false}\n")
    members = ",".join(f'"k{i}":1' for i in range(400_000))
    big = ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"metadata_x":{' + members + "}}").encode()
    statuses = []

    def post():
        r = requests.post(f"{s.proxy_url}/openai/v1/chat/completions", data=big, headers={"Content-Type": "application/json"}, timeout=120)
        statuses.append((r.status_code, r.json().get("object")))
    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    slowest = 0.0
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        assert requests.get(f"{s.proxy_url}/serpapi/search?q=small", timeout=30).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert statuses == [(200, "chat.completion")] * 2
    assert slowest < 1.0, slowest
