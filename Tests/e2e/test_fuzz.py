"""Seeded fuzzing of the real binary: mutated HTTP requests on every entry (forward proxy, reverse routes,
compatibility API, CONNECT), mutated JSON bodies, garbled agent tokens, mutated control-API bodies, and a
hostile upstream (cleartext and TLS).

The oracle is the data plane's promise: a client mistake gets a 4xx problem+json answer (or, for bytes
that are not HTTP at all, a 400 or a closed connection), never a 5xx, never a hang, never a crash; with
the built-in mocks no 5xx is legitimate, and whatever a hostile upstream sends ends as a well-formed
answer to the agent. Bounded: FUZZ_CASES cases per test (default 600), FUZZ_SECONDS per test (default
60), FUZZ_SEED picks the sequence (default fixed, so CI is reproducible; a failure prints the seed and
the case to replay it)."""

import base64
import json
import os
import random
import re
import socket
import threading
import time

import pytest
import requests

from conftest import LoopbackServer, Sidecar


CASES = int(os.environ.get("FUZZ_CASES", "600"))
SEED = int(os.environ.get("FUZZ_SEED", "20261201"))
TIME_LIMIT = float(os.environ.get("FUZZ_SECONDS", "60"))

MOCK_CONFIG = """
version: 1
auth: {required: false}
limits: {max_header_bytes: 8192, max_request_body_bytes: 65536}
egress: {allow_cidrs: ["127.0.0.0/8"]}
policy: {file: "%s"}
"""

# Every limit on every call, so fuzzed numbers reach the limits' arithmetic (a cap times its choices once
# trapped there): report-mode limits count whatever comes and refuse nothing; the enforce budget is big.
FUZZ_RULES = """    allow: ["*"]
    rules:
      - scope: "*"
        mode: report
        rate: {limit: 5, per: 1s, burst: 5}
        quota: {limit: 10, window: hour, timezone: UTC, cost: 3}
      - scope: "openai:*"
        mode: report
        budget: {tokens: 10, window: day, timezone: UTC}
      - scope: "openai:*"
        budget: {tokens: 1000000000000, window: week, timezone: UTC}
"""
FUZZ_POLICY = "version: 1\nroles:\n  anonymous:\n" + FUZZ_RULES + "  developer:\n" + FUZZ_RULES

CHAT = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
RAW_MAIL = base64.urlsafe_b64encode(b"From: a@example.com\r\nTo: b@example.com\r\nSubject: s\r\n\r\nbody").decode().rstrip("=")

# (method, request-target, extra header lines, JSON body or None): one valid request per entry and action.
FORM = ("--fzB0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
        "--fzB0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF..WAVE\r\n"
        "--fzB0undary--\r\n").encode()
FORM_TYPE = "Content-Type: multipart/form-data; boundary=fzB0undary"

TEMPLATES = [
    ("GET", "http://serpapi.com/search?q=coffee&engine=google&num=3", [], None),
    ("GET", "http://example.com/page?x=1", [], None),
    ("HEAD", "http://example.com/", [], None),
    ("POST", "http://api.openai.com/v1/chat/completions", [], CHAT),
    ("GET", "/serpapi/search?q=coffee&api_key=agent-key", [], None),
    ("GET", "/serpapi/search.json?q=a%20b&location=Austin", [], None),
    ("POST", "/openai/v1/chat/completions", ["Authorization: Bearer sk-agent"], CHAT),
    ("POST", "/openai/v1/chat/completions", [], dict(CHAT, stream=True)),
    ("POST", "/openai/v1/embeddings", [], {"model": "text-embedding-3-small", "input": ["a", "b"]}),
    ("POST", "/openai/v1/responses", [], {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 8}),
    ("POST", "/openai/v1/chat/completions", [], dict(CHAT, n=3)),
    ("POST", "/openai/v1/completions", [], {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "max_tokens": 4, "best_of": 2}),
    ("POST", "/openai/v1/moderations", [], {"input": ["a", "b"]}),
    ("POST", "/openai/v1/images/generations", [], {"model": "gpt-image-1", "prompt": "fox", "n": 2}),
    ("POST", "/openai/v1/audio/speech", [], {"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "wav"}),
    ("POST", "/openai/v1/audio/transcriptions", [FORM_TYPE], FORM),
    ("POST", "http://api.openai.com/v1/images/edits", [FORM_TYPE], FORM.replace(b"whisper-1", b"gpt-image-1")),
    ("POST", "/upload/gmail/v1/users/me/messages/send?uploadType=media", ["Content-Type: message/rfc822"],
     b"To: b@example.com\r\nSubject: s\r\n\r\nhello"),
    ("POST", "/gmail/v1/users/me/messages/send", [], {"raw": RAW_MAIL}),
    ("GET", "/gmail/v1/users/me/profile", [], None),
    ("GET", "/fetch?url=http%3A%2F%2Fexample.com%2F", [], None),
    ("HEAD", "/fetch?url=http://example.com/a?b=c", [], None),
    ("POST", "/api/proxy-request", [], {"tool": "serpapi", "action": "search", "params": {"q": "x", "num": 2}}),
    ("POST", "/api/proxy-request", [], {"tool": "openai", "action": "chat", "params": CHAT}),
    ("POST", "/api/proxy-request", [], {"tool": "http_fetch", "action": "get", "params": {"url": "http://example.com/"}}),
    ("POST", "/api/proxy-request", [], {"tool": "gmail_send", "action": "send",
                                        "params": {"to": "b@example.com", "subject": "s", "body": "hello"}}),
    ("CONNECT", "api.openai.com:443", [], None),
]

NASTY_STRINGS = ["", " ", "\x00", "%", "%zz", "%00", "%ff%fe", "..%2f..%2f", "/../../etc/passwd", "\u202e", "é",
                 "\ud7ff", "a" * 3000, "-1", "0", "18446744073709551616", "1e309", "NaN", "null", "[]", "{}",
                 "http://", "http://[::1]/", "http://0x7f000001/", "http://user:pass@127.0.0.1:1/", "file:///etc/passwd",
                 "javascript:alert(1)", "\r\nX-Injected: 1", "\"", "\\", "'", "<script>", "*", "?", "#", "&", "="]
NASTY_VALUES = [None, True, False, 0, -1, 2 ** 31, 2 ** 52, 8_999_999_999_999_999, 2 ** 63, -(2 ** 63) - 1, 2 ** 64, 1.5, -0.0, 1e308, "", [], {}, [[[[]]]],
                {"a": {"b": {"c": {}}}}, "x" * 5000, ["x"] * 200]


def encode(method, target, headers, body: bytes | None, host="x", framing="length"):
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"] + headers
    if body is not None:
        if framing == "length":
            lines.append(f"Content-Length: {len(body)}")
        else:
            lines.append("Transfer-Encoding: chunked")
            chunks = b""
            rest = body
            while rest:
                n = min(len(rest), 7)
                chunks += f"{n:x}\r\n".encode() + rest[:n] + b"\r\n"
                rest = rest[n:]
            body = chunks + b"0\r\n\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + (body or b"")


BIG_COUNTS = [2 ** 52, 8_999_999_999_999_999, 2 ** 63]


def mutate_json(rng: random.Random, value, depth=0):
    """A structure-aware mutation: replace, drop or add one member somewhere in the document — or, now
    and then, every number at its top level at once (a cap times its choices overflowed only when both
    were huge, which one member at a time never reaches)."""
    if depth == 0 and isinstance(value, dict) and rng.random() < 0.25:
        return {k: rng.choice(BIG_COUNTS) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()}
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.7:
        key = rng.choice(list(value))
        out = dict(value)
        r = rng.random()
        if r < 0.5:
            out[key] = mutate_json(rng, value[key], depth + 1)
        elif r < 0.7:
            del out[key]
        else:
            out[rng.choice(NASTY_STRINGS[:30]) or "k"] = rng.choice(NASTY_VALUES)
        return out
    if isinstance(value, list) and value and depth < 4 and rng.random() < 0.7:
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = mutate_json(rng, out[i], depth + 1)
        return out
    return rng.choice(NASTY_VALUES + NASTY_STRINGS)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(data)) if data else 0
        if op < 0.3 and data:
            data[i] = rng.randrange(256)
        elif op < 0.45:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op < 0.6 and data:
            del data[i:i + rng.randint(1, 16)]
        elif op < 0.7:
            data[i:i] = rng.choice([b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b"\x00", b"%", b"?", b"#", b"\r\n\r\n"])
        elif op < 0.8:
            header = rng.choice([b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999999999999999999",
                                 b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked", b"Connection: close, te",
                                 b"Expect: 100-continue", b"Host: ", b"Host: a\r\nHost: b", b"X-Request-Id: " + b"r" * 300,
                                 b"traceparent: 00-zz-yy-01", b"X-Agent-Token: " + bytes(rng.randrange(33, 127) for _ in range(40)),
                                 b"Proxy-Authorization: Basic !!!", b"Upgrade: h2c", b"Content-Type: application/json; charset=\xff"])
            at = data.find(b"\r\n")
            if at > 0:
                data[at + 2:at + 2] = header + b"\r\n"
        else:
            cut = rng.randrange(len(data) + 1)
            data = data[:cut]
    return bytes(data)


def case(rng: random.Random) -> bytes:
    method, target, headers, body = rng.choice(TEMPLATES)
    headers = list(headers)
    r = rng.random()
    if r < 0.35 and isinstance(body, bytes):  # valid HTTP, a hostile form or message
        body = mutate_bytes(rng, body)
    elif r < 0.35 and body is not None:  # valid HTTP, hostile JSON
        body = mutate_json(rng, body)
    elif r < 0.55:  # valid HTTP, hostile target
        nasty = rng.choice(NASTY_STRINGS)
        if "?" in target and rng.random() < 0.6:
            target = target + "&" + rng.choice(["q", "url", "num", "api_key", "engine", nasty[:10]]) + "=" + nasty
        else:
            at = rng.randrange(len(target) + 1)
            target = target[:at] + nasty + target[at:]
        target = re.sub(r"[\s]", lambda m: "%20" if rng.random() < 0.5 else m.group(0), target)
    elif r < 0.65:  # valid HTTP, hostile method or header values
        if rng.random() < 0.5:
            method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PRI", "get", "G\x00T", "X" * 40])
        else:
            headers.append(rng.choice(["X-Request-Id", "traceparent", "X-Agent-Token", "Proxy-Authorization",
                                       "Authorization", "Connection", "Via", "X-Request-Timeout", "Accept-Encoding",
                                       "Content-Type"]) + ": " + rng.choice(NASTY_STRINGS).replace("\r", "").replace("\n", ""))
    if rng.random() < 0.7:
        headers.append("Connection: close")  # the sidecar closes after answering: the case ends at once
    raw_body = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    if raw_body is not None and rng.random() < 0.1:
        raw_body = raw_body[: rng.randrange(len(raw_body) + 1)]  # truncated JSON, honest framing
    data = encode(method, target, headers, raw_body, framing="chunked" if rng.random() < 0.2 else "length")
    if rng.random() < 0.35:  # broken HTTP
        data = mutate_bytes(rng, data)
    return data


def responses(raw: bytes, to_head: bool = False):
    """Splits an answer stream into (status, headers, body) triples — bodies framed by Content-Length or
    chunked (SSE), none for a HEAD request, a 1xx, 204 or 304 — and the bytes of an answer not complete yet."""
    out = []
    while raw.startswith(b"HTTP/1.1 "):
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status in (204, 304) or 100 <= status < 200 or (to_head and headers.get("connection") != "close"):
            body = b""  # never a body (RFC 9110 §6.4.1), whatever Content-Length says
        elif to_head:
            body, rest = rest, b""  # a request refused before its method was known gets a body, then the close
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if len(rest) < n:
                break
            body, rest = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body, complete = b"", False
            while b"\r\n" in rest:
                size_line, _, after = rest.partition(b"\r\n")
                n = int(size_line, 16)
                if len(after) < n + 2:
                    break
                body, rest = body + after[:n], after[n + 2:]
                if n == 0:
                    complete = True
                    break
            if not complete:
                break
        else:
            body, rest = rest, b""  # an answer that runs to the close
        out.append((status, headers, body))
        raw = rest
    return out, raw


def exchange(port: int, data: bytes, patience: float = 0.15) -> bytes:
    """Sends one case on a fresh connection and reads the answers until the sidecar closes. Once the
    answers read so far are complete, or nothing comes for a moment (the sidecar waits for the rest of a
    truncated request), the test half-closes: the sidecar treats end of input as the agent hanging up,
    as nginx and Envoy do, and must close its side within 5 s. `patience`: how long silence may last
    before the half-close (longer where the sidecar may legitimately wait on an upstream)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(patience)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # the sidecar may answer and close before it has read everything (431, 413)
        out, hung_up, started = b"", False, time.time()
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                chunk = None
            except ConnectionResetError:
                return out
            if chunk == b"":
                return out
            out += chunk or b""
            assert time.time() - started < 5 + patience, "no end of answer within 5 s: %r" % out[:200]
            answers, rest = responses(out, to_head=data.startswith(b"HEAD "))
            if not hung_up and (chunk is None or (answers and not rest)):
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                hung_up = True
    finally:
        s.close()


def check(sidecar, data: bytes, seed: int, index: int):
    where = f"(FUZZ_SEED={seed}, case {index}: {data[:300]!r})"
    try:
        raw = exchange(sidecar.proxy_port, data)
    except (OSError, AssertionError) as error:
        raise AssertionError(f"{error} {where}") from error
    assert sidecar.proc.poll() is None, "sidecar exited " + where + "\n" + "\n".join(sidecar.lines[-20:])
    if not raw:
        return None  # closed without an answer: only for bytes the decoder could not read as a request
    head = data.startswith(b"HEAD ")
    answers, rest = responses(raw, head)
    assert answers and not rest, "not a complete HTTP answer: %r %s" % (raw[:300], where)
    for status, headers, body in answers:
        assert status < 500, f"{status} {body[:300]!r} {where}"
        if status >= 400 and not head:
            if headers.get("content-type") == "application/json":
                # Not the sidecar's refusal but a mock upstream's own 4xx, relayed (in the compatibility
                # envelope, or as the real API shapes its errors).
                relayed = json.loads(body)
                assert relayed.get("metadata", {}).get("upstream_status") == status or "error" in relayed, where
                continue
            assert headers.get("content-type") == "application/problem+json", where
            problem = json.loads(body)
            assert problem["status"] == status and re.fullmatch(r"[a-z_]+", problem["code"]), where
            assert problem["request_id"] == headers.get("x-request-id"), where
    return answers[0][0]


def run_cases(sidecar, seed: int, make):
    rng = random.Random(seed)
    statuses: dict[int | None, int] = {}
    started = time.time()
    for i in range(CASES):
        if time.time() - started > TIME_LIMIT:
            break
        status = check(sidecar, make(rng), seed, i)
        statuses[status] = statuses.get(status, 0) + 1
    # Alive and still serving a valid call after all of it.
    assert requests.get(f"{sidecar.admin_url}/healthz", timeout=5).status_code == 200
    r = requests.get(f"{sidecar.proxy_url}/serpapi/search?q=after", timeout=5)
    assert r.status_code in (200, 401), r.text
    return statuses


def mock_config(tmp_path) -> str:
    policy = tmp_path / "fuzz-policy.yaml"
    policy.write_text(FUZZ_POLICY)
    return MOCK_CONFIG % policy


@pytest.fixture
def mock_sidecar(sidecar_factory, tmp_path):
    return sidecar_factory(mock_config(tmp_path))


def assert_log_lines_are_json(sidecar):
    """Every line is one JSON object, whatever ids, names and header values came in: no log injection
    (a quote, a backslash, CR/LF or a control character in a value is escaped)."""
    time.sleep(0.3)
    for line in sidecar.lines:
        assert isinstance(json.loads(line), dict), line


def metric_series(sidecar) -> set[str]:
    text = requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_fuzzed_requests_get_4xx_problems_never_5xx(mock_sidecar):
    before = metric_series(mock_sidecar)
    statuses = run_cases(mock_sidecar, SEED, case)
    # Labels come from closed sets: no input, however odd its tool, action or path, adds a series.
    assert metric_series(mock_sidecar) == before
    # The generator reaches both sides of the line: answered calls and refusals, not only one of them.
    assert statuses.get(200, 0) > CASES // 20 and sum(n for s, n in statuses.items() if s and 400 <= s < 500) > CASES // 10, statuses
    access = mock_sidecar.logs("access")
    assert access and all(line["status"] < 500 for line in access)
    assert_log_lines_are_json(mock_sidecar)


def test_fuzzed_agent_tokens_are_refused_with_401(sidecar_factory, tmp_path):
    """With authentication on, a token that is garbage, truncated, re-encoded or bit-flipped is a 401
    problem (or a 4xx for the request itself), never a 5xx."""
    s = sidecar_factory(mock_config(tmp_path).replace("auth: {required: false}\n", ""))
    good = s.new_token()

    head = good.split(".")[0]
    good_header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))

    def token_case(rng: random.Random) -> bytes:
        t = bytearray(good.encode())
        r = rng.random()
        if r < 0.4:
            for _ in range(rng.randint(1, 3)):
                t[rng.randrange(len(t))] = rng.choice(b"ABCxyz019-_.=+/~ ")
        elif r < 0.6:
            t = t[: rng.randrange(len(t))]
        elif r < 0.65:
            parts = bytes(t).split(b".")
            rng.shuffle(parts)
            t = bytearray(b".".join(parts))
        elif r < 0.85:
            # A well-formed JWE whose protected header says something hostile: the JOSE header parser
            # must refuse it (alg none, unknown enc, a zip, a kid of 5000 bytes, wrong types...).
            parts = bytes(t).split(b".")
            header = json.loads(base64.urlsafe_b64decode(parts[0] + b"=" * (-len(parts[0]) % 4)))
            header = mutate_json(rng, header)
            if rng.random() < 0.3:
                header = dict(good_header, **{rng.choice(["alg", "enc", "zip", "kid", "cty", "crit"]): rng.choice(NASTY_VALUES + NASTY_STRINGS)})
            parts[0] = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=")
            t = bytearray(b".".join(parts))
        else:
            t = bytearray(rng.choice(NASTY_STRINGS).encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b""))
        token = bytes(t).decode("latin-1")
        how = rng.choice(["X-Agent-Token: {}", "Authorization: Bearer {}", "Proxy-Authorization: Basic {}"])
        if how.startswith("Proxy"):
            token = base64.b64encode(b"agent:" + token.encode("latin-1")).decode() if rng.random() < 0.7 else token
        return encode("GET", "/serpapi/search?q=x", [how.format(token), "Connection: close"], None)

    statuses = run_cases(s, SEED + 1, token_case)
    assert statuses.get(401, 0) > CASES // 2, statuses
    assert_log_lines_are_json(s)
    # No token, nor a recognisable piece of one (the mutants share most of its bytes), is ever logged.
    pieces = [good[i:i + 24] for i in range(0, len(good) - 24, 24)]
    for line in s.lines:
        assert not any(p in line for p in pieces), line


def test_fuzzed_control_api_bodies_are_4xx(sidecar_factory, tmp_path):
    """The control API with the admin token and hostile JSON bodies: 4xx, never 5xx."""
    s = sidecar_factory(mock_config(tmp_path))
    agent = s.new_agent()
    templates = [("POST", "/api/agents", {"name": "n", "role": "developer", "created_by": "fuzz"}),
                 ("POST", "/api/create-agent", {"name": "n", "role": "scraper"}),
                 ("POST", f"/api/agents/{agent}/tokens", {"ttl": "10m", "scopes": ["serpapi:search"]}),
                 ("POST", "/api/generate-token", {"agent_id": agent, "ttl": "5m"}),
                 ("PUT", "/api/chaos", {"tools": {"serpapi": {"error_rate": 0.1}}}),
                 ("POST", "/api/tokens/zz/revoke", {}),
                 ("GET", "/api/agents/%00", None)]
    rng = random.Random(SEED + 2)
    started = time.time()
    for i in range(CASES // 2):
        if time.time() - started > TIME_LIMIT:
            break
        method, path, body = rng.choice(templates)
        data = json.dumps(mutate_json(rng, body)).encode() if body is not None else None
        if data is not None and rng.random() < 0.2:
            data = mutate_bytes(rng, data)
        where = f"(FUZZ_SEED={SEED + 2}, case {i}: {method} {path} {data[:300] if data else None!r})"
        try:
            r = requests.request(method, s.admin_url + path, data=data, timeout=5,
                                 headers={"Authorization": f"Bearer {s.admin_token}", "Content-Type": "application/json"})
        except requests.RequestException as error:
            raise AssertionError(f"{error} {where}; exit status {s.proc.poll()}\n" + "\n".join(s.lines[-10:])) from error
        assert r.status_code < 500, f"{r.status_code} {r.text[:300]} {where}"
        assert s.proc.poll() is None, where
    assert requests.get(f"{s.admin_url}/healthz", timeout=5).status_code == 200
    assert_log_lines_are_json(s)


# ---------------------------------------------------------------- a hostile upstream

class HostileUpstream(LoopbackServer):
    """An HTTP/1.1 server (cleartext, or TLS with `tls_context`) that answers every request with
    `self.answer` (the bytes of the case under test), then closes or keeps the connection as the case
    says."""

    def __init__(self, tls_context=None):
        self.answer, self.close_after, self.tls = b"", True, tls_context
        super().__init__()

    def _serve(self, conn):
        conn.settimeout(10)
        buf = b""
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                need = int(m.group(1)) if m else 0
                while len(buf) < need:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf[need:]
                conn.sendall(self.answer)
                if self.close_after:
                    return
        except OSError:
            return
        finally:
            conn.close()


HOSTILE_HEADERS = [b"Retry-After: 1e400", b"Retry-After: -5", b"Retry-After: NaN", b"retry-after-ms: inf",
                   b"x-ratelimit-reset-requests: 99999999999999999999h", b"x-ratelimit-reset-tokens: 1e308s",
                   b"Cache-Control: max-age=9223372036854775807", b"Cache-Control: max-age=-1, s-maxage=abc",
                   b"Expires: Thu, 01 Jan 999999999999999 00:01:40 GMT", b"Expires: Thu, 99 Foo 2026 99:99:99 GMT",
                   b"Content-Length: 99999999999999999999", b"Content-Length: -1", b"Content-Length: 3, 4",
                   b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Connection: close", b"Connection: x-secret",
                   b"Set-Cookie: a=b", b"Vary: *", b"Location: http://[::1", b"Content-Type: text/event-stream",
                   b"X-Bad: \x00\x01", b"Upgrade: h2c", b"Keep-Alive: timeout=-1", b"Proxy-Authenticate: Basic",
                   b"Content-Encoding: gzip", b"Date: tomorrow"]
USAGE_VALUES = [b"1e400", b"-1", b"9007199254740993", b"18446744073709551616", b'"12"', b"null", b"[]", b"1.5"]


def hostile_answer(rng: random.Random, throttle: bool) -> bytes:
    """One upstream answer: a valid shape (JSON with OpenAI usage, SSE with a usage chunk, a 429 with a
    wait hint, a 1xx before the answer, a body that runs to the close), then hostile headers, values
    and byte mutations. A 429 only when `throttle`: its wait hint pauses the tool (up to 60 s), which
    would leave the rest of the cases answered by the sidecar alone."""
    usage = rng.choice(USAGE_VALUES) if rng.random() < 0.5 else b"7"
    body = b'{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":' + usage + b"}}"
    shape = rng.random()
    status = rng.choice([b"200 OK", b"200 OK", b"201 Created", b"204 No Content", b"304 Not Modified", b"400 Bad Request",
                         b"401 Unauthorized", b"500 Internal Server Error", b"502 Bad Gateway",
                         b"503 Service Unavailable", b"302 Found", b"999 Weird", b"200", b"600 Beyond"]
                        + ([b"429 Too Many Requests"] * 5 if throttle else []))
    headers = [b"Content-Type: application/json"]
    if shape < 0.15:  # SSE stream, chunked
        events = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n" + b"data: {\"choices\":[],\"usage\":{\"total_tokens\":" + usage + b"}}\n\ndata: [DONE]\n\n"
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (events[:20], events[20:])) + b"0\r\n\r\n"
        headers = [b"Content-Type: text/event-stream", b"Transfer-Encoding: chunked"]
    elif shape < 0.25:  # read to the close (HTTP/1.0 style)
        headers.append(b"Connection: close")
    else:
        headers.append(b"Content-Length: %d" % len(body))
    for _ in range(rng.randint(0, 3)):
        headers.append(rng.choice(HOSTILE_HEADERS))
    prefix = b"HTTP/1.1 100 Continue\r\n\r\n" if rng.random() < 0.1 else b""
    prefix += b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" if rng.random() < 0.05 else b""
    data = prefix + b"HTTP/1.1 " + status + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body
    if rng.random() < 0.3:
        data = mutate_bytes(rng, data)
    return data


HOSTILE_CONFIG = """
version: 1
auth: {{required: false}}
upstream: {{ca_bundle: "{ca}", http2: true}}
egress: {{allow_cidrs: ["127.0.0.0/8"]}}
resilience: {{retry: {{max_attempts: 2}}, breaker: {{consecutive_failures: 10000, minimum_volume: 100000}}}}  # never open: every case reaches the decoder
tools:
  serpapi: {{mode: live, base_url: "{scheme}://127.0.0.1:{port}", timeout: 1s, cache_ttl: 0s}}
  openai: {{mode: live, base_url: "{scheme}://127.0.0.1:{port}", timeout: 1s}}
  http_fetch: {{mode: live, timeout: 1s}}
"""

HOSTILE_CALLS = [
    ("GET", "/serpapi/search?q=x", None),
    ("POST", "/openai/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/openai/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    ("GET", "/fetch?url={scheme}%3A%2F%2F127.0.0.1%3A{port}%2Fpage%3Fcase%3D{case}", None),  # a new URL each case: no cache hits
    ("POST", "/api/proxy-request", {"tool": "openai", "action": "chat", "params": {"model": "m", "messages": []}}),
]


UPSTREAM_PROBLEMS = ("upstream_protocol_error", "upstream_unreachable", "upstream_timeout", "upstream_response_too_large",
                     "breaker_open", "tool_saturated")


def hostile_sidecar(pki, upstream, scheme):
    return Sidecar(HOSTILE_CONFIG.format(port=upstream.port, scheme=scheme, ca=pki.ca_pem),
                   env={"SERPAPI_API_KEY": "k", "OPENAI_API_KEY": "k"})


def run_upstream_cases(s, label, next_case):
    """The hostile-upstream oracle over CASES // 2 cases (and at most FUZZ_SECONDS): `next_case(i)` sets
    what the upstream will answer and returns (the agent's request, a description of that answer). Each
    case ends in complete answers with a status in 200-599 — a 5xx problem only with an upstream-side
    code — or in one answer cut after its head (a body the sidecar was streaming when the upstream broke
    off or ran past the deadline can only end with the connection); the sidecar stays up, serves, and
    writes only JSON lines."""
    seen: dict[int, int] = {}
    started = time.time()
    for i in range(CASES // 2):
        if time.time() - started > TIME_LIMIT:
            break
        data, answer = next_case(i)
        where = f"({label}, FUZZ_SEED={SEED}, case {i}: upstream {answer} to {data[:120]!r})"
        try:
            raw = exchange(s.proxy_port, data, patience=2.0)  # the tools' deadline is 1 s
        except (OSError, AssertionError) as error:
            raise AssertionError(f"{error} {where}") from error
        assert s.proc.poll() is None, "sidecar exited " + where + "\n" + "\n".join(s.lines[-20:])
        answers, rest = responses(raw)
        assert answers or rest, f"no answer at all {where}"
        assert not rest or (rest.startswith(b"HTTP/1.1 ") and b"\r\n\r\n" in rest), f"{raw[:300]!r} {where}"
        for status, headers, body in answers:
            assert 200 <= status <= 599, where
            if status >= 500 and headers.get("content-type") == "application/problem+json":
                assert json.loads(body)["code"] in UPSTREAM_PROBLEMS, where
        status = answers[0][0] if answers else int(rest.split(b" ")[1])
        seen[status] = seen.get(status, 0) + 1
    print(f"{label} upstream: answers by status", dict(sorted(seen.items())), f"in {time.time() - started:.1f} s")
    assert requests.get(f"{s.admin_url}/healthz", timeout=5).status_code == 200
    assert seen.get(502, 0) > 0 and sum(n for k, n in seen.items() if k < 300) > 0, seen
    assert_log_lines_are_json(s)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_hostile_upstream_gets_the_agent_an_answer_never_a_crash(pki, scheme):
    """Every answer an upstream can send — malformed, truncated, with hostile wait hints, cache headers,
    framing or usage numbers — ends as a well-formed answer to the agent (relayed, or a 502/504 problem),
    or, once a streamed body has begun, a closed connection. The sidecar stays up. Cleartext reaches the
    sidecar's own pool and safe-fetch transport; TLS reaches async-http-client (HTTP/1.1: the fake
    upstream offers no ALPN) and the safe-fetch transport over TLS."""
    upstream = HostileUpstream(pki.server_context() if scheme == "https" else None)
    s = hostile_sidecar(pki, upstream, scheme)
    rng = random.Random(SEED + 3 + (scheme == "https"))
    count = CASES // 2

    def next_case(i):
        upstream.answer = hostile_answer(rng, throttle=i >= count * 0.95)
        upstream.close_after = rng.random() < 0.5
        method, target, body = rng.choice(HOSTILE_CALLS)
        raw_body = json.dumps(body).encode() if body is not None else None
        return encode(method, target.format(port=upstream.port, case=i, scheme=scheme), ["Connection: close"], raw_body), f"answered {upstream.answer[:400]!r}"
    try:
        run_upstream_cases(s, scheme, next_case)
    finally:
        s.stop()
        upstream.close()


# ---------------------------------------------------------------- a hostile HTTP/2 upstream

class HostileH2Upstream(LoopbackServer):
    """A TLS server offering only `h2` (ALPN), speaking HTTP/2 through the `h2` package with its own
    checks off, so it can send what a broken or hostile server would: a status that is no number, two or
    none, connection-specific or uppercase fields, a content-length the data contradicts, a stream reset
    or the connection closed mid-body, a GOAWAY. `self.plan` describes the answer to the next request."""

    def __init__(self, context):
        self.context = context
        self.context.set_alpn_protocols(["h2"])
        self.plan: dict = {}
        super().__init__()

    def _serve(self, raw):
        import h2.config
        import h2.connection
        import h2.events
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
            conn.settimeout(10)
            h2c = h2.connection.H2Connection(config=h2.config.H2Configuration(
                client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False,
                validate_inbound_headers=False))
            h2c.initiate_connection()
            conn.sendall(h2c.data_to_send())
            while True:
                data = conn.recv(65535)
                if not data:
                    return
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.StreamEnded):
                        if self._answer(h2c, event.stream_id, dict(self.plan)) == "close":
                            conn.sendall(h2c.data_to_send())
                            return
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        return
                conn.sendall(h2c.data_to_send())
        except Exception:
            return  # the h2 package refusing to send a violation, a reset socket: the connection just ends
        finally:
            raw.close()

    @staticmethod
    def _answer(h2c, stream, plan):
        body = plan["body"]
        h2c.send_headers(stream, plan["headers"], end_stream=not body and plan["end"])
        if body:
            h2c.send_data(stream, body, end_stream=plan["end"])
        if plan.get("reset"):
            h2c.reset_stream(stream, error_code=plan["reset"])
        if plan.get("goaway"):
            h2c.close_connection()
        return "close" if plan.get("close") else None


def hostile_h2_plan(rng: random.Random) -> dict:
    usage = rng.choice(USAGE_VALUES) if rng.random() < 0.5 else b"7"
    body = b'{"id":"x","object":"chat.completion","choices":[],"usage":{"total_tokens":' + usage + b"}}"
    # No status below 100: async-http-client traps on it (the strict xfail below pins that).
    status = rng.choice([b"200", b"200", b"201", b"204", b"304", b"400", b"500", b"503", b"999", b"abc", b"2000", b"1", b"100", b"103"])
    headers = [(b":status", status), (b"content-type", b"application/json")]
    r = rng.random()
    if r < 0.1:
        headers = headers[1:]  # no :status at all
    elif r < 0.2:
        headers.insert(1, (b":status", b"200"))  # two of them
    elif r < 0.3:
        headers.append((b":path", b"/"))  # a request pseudo-header in a response
    if rng.random() < 0.3:
        headers.append((b"content-length", rng.choice([b"%d" % len(body), b"%d" % (len(body) + 5), b"1", b"-1", b"abc", b"99999999999999999999"])))
    for _ in range(rng.randint(0, 2)):
        name, _, value = rng.choice(HOSTILE_HEADERS).partition(b": ")
        headers.append((name if rng.random() < 0.8 else name.upper(), value))
    if rng.random() < 0.1:
        headers.append((rng.choice([b"connection", b"transfer-encoding", b"keep-alive", b"upgrade"]), b"close"))
    if rng.random() < 0.05:
        headers.append((b"x-big", b"v" * 70000))
    return {"headers": headers, "body": body if rng.random() < 0.85 else b"", "end": rng.random() < 0.85,
            "reset": rng.choice([0, 0, 0, 1, 2, 8, 11]), "goaway": rng.random() < 0.1, "close": rng.random() < 0.1}


def test_a_hostile_http2_upstream_gets_the_agent_an_answer_never_a_crash(pki):
    """The same promise over HTTP/2 (async-http-client with swift-nio-http2): whatever frames and fields
    the upstream sends, the agent gets a well-formed answer (or a cut after the head), and the sidecar
    stays up."""
    upstream = HostileH2Upstream(pki.server_context())
    s = hostile_sidecar(pki, upstream, "https")
    rng = random.Random(SEED + 5)
    calls = [c for c in HOSTILE_CALLS if "fetch" not in c[1]]  # http_fetch speaks HTTP/1.1 only

    def next_case(i):
        upstream.plan = hostile_h2_plan(rng)
        method, target, body = rng.choice(calls)
        return encode(method, target, ["Connection: close"], json.dumps(body).encode() if body is not None else None), f"plan {upstream.plan!r:.400}"
    try:
        run_upstream_cases(s, "h2", next_case)
    finally:
        s.stop()
        upstream.close()


@pytest.mark.xfail(strict=True, reason="async-http-client 1.37.0: an HTTP/2 :status below 100 followed by DATA traps "
                   "(HTTPRequestStateMachine: 'How can we receive a response body, if we haven't received a head'); "
                   "the reason upstream.http2 is off by default. When this passes, the library is fixed.")
@pytest.mark.parametrize("status", [b"099", b"0", b"-1"])
def test_async_http_client_survives_an_http2_status_below_100(pki, status):
    upstream = HostileH2Upstream(pki.server_context())
    s = hostile_sidecar(pki, upstream, "https")
    try:
        upstream.plan = {"headers": [(b":status", status), (b"content-type", b"application/json")], "body": b'{"a":1}',
                         "end": True, "reset": 0, "goaway": False, "close": False}
        exchange(s.proxy_port, encode("GET", "/serpapi/search?q=x", ["Connection: close"], None), patience=2.0)
        time.sleep(0.5)
        assert s.proc.poll() is None, "the sidecar exited"
    finally:
        s.stop(timeout=30)
        upstream.close()
