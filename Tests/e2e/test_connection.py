"""The agent connection's own duties (ProxyHTTPHandler): pipelining, idle timeouts, graceful shutdown of
idle keep-alive connections, parse errors behind a pending response, and the bytes of the answers."""

import json
import os
import subprocess
import socket
import time

import pytest
import requests

from conftest import LIVE_ENV, live_config, parse_response


@pytest.fixture
def sidecar(pki, http_upstream, sidecar_factory):
    def slow(h, rec):
        time.sleep(2.0)
        http_upstream.send_json(h, 200, {"slow": True})
    http_upstream.routes["/search?q=slow"] = slow
    cfg = live_config(pki, http_upstream, auth=False)
    cfg = cfg.replace("limits:\n  drain_timeout: 10s\n", "limits:\n  drain_timeout: 10s\n  idle_timeout: 1s\n")
    s = sidecar_factory(cfg, env=LIVE_ENV)
    s.upstream = http_upstream
    return s


def read_responses(sock, count, timeout=5.0):
    """Reads until `count` complete Content-Length-framed responses have arrived (or the peer closes)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        complete, rest = 0, data
        while True:
            head, sep, body = rest.partition(b"\r\n\r\n")
            if not sep:
                break
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            if len(body) < length:
                break
            complete += 1
            rest = body[length:]
        if complete >= count:
            return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def closed_within(sock, seconds):
    """True when the peer closes the connection within `seconds` (recv returns EOF or a reset)."""
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_many_pipelined_requests_are_answered_in_order(sidecar):
    s = socket.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    burst = b"".join(
        f"GET /serpapi/search?q=p{i} HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-{i}\r\n\r\n".encode() for i in range(20))
    s.sendall(burst)
    data = read_responses(s, 20)
    s.close()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 20
    positions = [data.index(f"x-request-id: pipe-{i}\r\n".encode(), 0) if f"x-request-id: pipe-{i}\r\n".encode() in data
                 else data.index(f"X-Request-Id: pipe-{i}\r\n".encode()) for i in range(20)]
    assert positions == sorted(positions)


def test_a_parse_error_behind_a_pending_request_is_answered_after_it(sidecar):
    s = socket.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    s.sendall(b"GET /serpapi/search?q=first HTTP/1.1\r\nHost: x\r\nX-Request-Id: good-1\r\n\r\nGARBAGE\r\n\r\n")
    data = read_responses(s, 2)
    s.close()
    first_end = data.index(b"good-1")
    second = data.index(b"HTTP/1.1 400", first_end)
    status, headers, body = parse_response(data[second:])
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body[: int(headers["content-length"])])["code"] == "malformed_request"


def test_a_stalled_request_head_is_cut_after_the_idle_timeout(sidecar):
    s = socket.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    s.sendall(b"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\n")  # never finished (slowloris)
    started = time.time()
    assert closed_within(s, 4.0)
    assert 0.8 < time.time() - started < 3.5
    s.close()


def test_an_idle_keep_alive_connection_is_closed_but_a_slow_answer_is_not(sidecar):
    s = socket.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    # The upstream takes 2 s, twice the idle timeout: waiting for an answer is not idleness.
    s.sendall(b"GET /serpapi/search?q=slow HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_responses(s, 1, timeout=6)
    assert data.startswith(b"HTTP/1.1 200") and b'"slow": true' in data
    started = time.time()
    assert closed_within(s, 4.0)
    assert time.time() - started < 3.5
    s.close()


def test_sigterm_closes_idle_keep_alive_connections_at_once(sidecar):
    s = socket.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    s.sendall(b"GET /serpapi/search?q=x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_responses(s, 1).startswith(b"HTTP/1.1 200")
    started = time.time()
    sidecar.signal()
    assert closed_within(s, 3.0)
    assert sidecar.proc.wait(timeout=5) == 0
    # Far sooner than the 10 s drain deadline: nothing was in flight.
    assert time.time() - started < 3.0
    s.close()


def test_tls_sent_to_the_plain_proxy_port_is_named_in_the_log_once(sidecar):
    """`HTTPS_PROXY=https://…` (a careless setting) makes a client speak TLS to the plain-HTTP port: its
    handshake fails, and the sidecar's log says why and what to set — once per 10 s, however many try."""
    import ssl
    host, port = sidecar.proxy.split(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=5) as c:
            with pytest.raises(ssl.SSLError):
                ctx.wrap_socket(c, server_hostname="api.openai.com")
    line = sidecar.wait_for_log(lambda r: "spoke TLS to the plain-HTTP proxy port" in r.get("msg", ""))
    assert line["level"] in ("warning", "warn") and "HTTPS_PROXY" in line["msg"]
    time.sleep(0.3)
    assert len([r for r in sidecar.logs() if "spoke TLS" in r.get("msg", "")]) == 1
    # The proxy port serves on.
    assert requests.get(f"{sidecar.proxy_url}/serpapi/search?q=x", timeout=5).status_code == 200


def test_http_1_0_answers_close_and_head_answers_carry_no_body(sidecar):
    s = socket.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    s.sendall(b"GET /serpapi/search?q=x HTTP/1.0\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    status, headers, body = parse_response(data)
    assert data.startswith(b"HTTP/1.0 200") and headers["connection"] == "close"
    assert len(body) == int(headers["content-length"])

    # HEAD: a length but no body, and the connection stays usable for the next request.
    url = f"http://127.0.0.1:{sidecar.upstream.port}/page"
    s = socket.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    s.sendall(f"HEAD /fetch?url={url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(65536)
    status, headers, rest = parse_response(head)
    assert status == 200 and int(headers["content-length"]) > 0 and rest == b""
    s.sendall(b"GET /serpapi/search?q=after-head HTTP/1.1\r\nHost: x\r\nX-Request-Id: after-head\r\n\r\n")
    data = read_responses(s, 1)
    s.close()
    assert data.startswith(b"HTTP/1.1 200") and b"after-head" in data


@pytest.mark.parametrize("hang_up", ["close", "half-close"])
def test_an_agent_that_hangs_up_mid_call_is_logged_client_closed_and_its_call_cancelled(sidecar, hang_up):
    """The agent goes away while its call waits on a slow upstream (2 s). End of input counts as going
    away — a half-close too, as nginx (499) and Envoy treat it: the call is cancelled at once, not
    answered into a dead socket 2 s later, and its access line and metric say `client_closed`."""
    import requests
    s = socket.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    s.sendall(b"GET /serpapi/search?q=slow HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-" + hang_up.encode() + b"\r\n\r\n")
    time.sleep(0.3)
    started = time.time()
    if hang_up == "close":
        s.close()
    else:
        s.shutdown(socket.SHUT_WR)
        assert closed_within(s, 1.5)  # the sidecar closes its side too, without an answer
        s.close()
    line = sidecar.access(f"gone-{hang_up}")
    assert time.time() - started < 1.5
    assert line["outcome"] == "client_closed" and line["status"] == 0 and line["bytes_out"] == 0
    metrics = requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text
    assert 'gateway_outcomes_total{tool="serpapi",outcome="client_closed"} 1' in metrics
    assert 'gateway_requests_total{tool="serpapi",action="search",code="none"} 1' in metrics  # no status was sent


def test_an_agent_that_hangs_up_mid_body_is_logged_client_closed_not_400(sidecar):
    """The decoder reports the cut-off body as a parse error while the connection closes: nobody is
    left to answer, so it is `client_closed` (it was logged as a 400 that was never delivered)."""
    s = socket.create_connection(("127.0.0.1", sidecar.proxy_port), timeout=5)
    s.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: cut-body\r\nContent-Length: 50\r\n\r\n{\"mo")
    time.sleep(0.2)
    s.close()
    line = sidecar.access("cut-body")
    assert line["outcome"] == "client_closed" and line["status"] == 0 and line["bytes_out"] == 0, line


@pytest.mark.parametrize("route", ["fetch", "serpapi", "serpapi-tls"], ids=["safe-fetch transport", "own pool", "async-http-client"])
def test_a_slow_agent_holds_back_the_upstream_and_memory_stays_bounded(pki, http_upstream, https_upstream, sidecar_factory, route):
    """Backpressure end to end: a 256 MiB upstream answer to an agent that stops reading after 1 MiB. The
    sidecar stops reading the upstream (which then cannot write more than the socket buffers and the
    sidecar's high-water mark hold), its RSS does not grow with the body, and once the agent reads again
    every byte arrives, in order. Mutation-checked: reads never paused, the upstream wrote all 256 MiB."""
    total, chunk = 256 * 1024 * 1024, b"0123456789abcdef" * 16384  # 256 KiB chunks
    sent = {"bytes": 0}

    def big(h, rec):
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        try:
            while sent["bytes"] < total:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent["bytes"] += len(chunk)
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
    upstream = https_upstream if route == "serpapi-tls" else http_upstream
    upstream.routes["/big"] = upstream.routes["/search"] = big
    s = sidecar_factory(f"""
version: 1
auth: {{required: false}}
upstream: {{ca_bundle: "{pki.ca_pem}", http2: true}}
limits: {{max_response_body_bytes: 1073741824}}
egress: {{allow_cidrs: ["127.0.0.0/8"]}}
tools:
  http_fetch: {{mode: live, timeout: 60s, cache_ttl: 0s}}
  serpapi: {{mode: live, base_url: "{upstream.base_url}", timeout: 60s, cache_ttl: 0s}}
""", env={"SERPAPI_API_KEY": "k"})
    rss = lambda: int(next(l for l in open(f"/proc/{s.proc.pid}/status") if l.startswith("VmRSS")).split()[1]) * 1024
    sock = socket.create_connection(("127.0.0.1", s.proxy_port), timeout=10)
    target = f"/fetch?url=http%3A%2F%2F127.0.0.1%3A{http_upstream.port}%2Fbig" if route == "fetch" else "/serpapi/search?q=big"
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = b""
    while len(got) < 1024 * 1024:
        got += sock.recv(65536)
    before = rss()
    time.sleep(2.0)  # the agent reads nothing; the upstream could send ~GBs over loopback meanwhile
    held_back = sent["bytes"]
    grown = rss() - before
    assert held_back < 64 * 1024 * 1024, f"the upstream wrote {held_back >> 20} MiB to a stalled agent"
    assert grown < 32 * 1024 * 1024, f"RSS grew {grown >> 20} MiB while the agent was stalled"
    # Read the rest: the whole body arrives (chunked framing to the agent), nothing lost or duplicated.
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    payload, rest, deadline = 0, body, time.time() + 60
    while time.time() < deadline:
        while True:
            size_line, sep, after = rest.partition(b"\r\n")
            if not sep:
                break
            n = int(size_line, 16)
            if len(after) < n + 2:
                break
            payload += n
            rest = after[n + 2:]
            if n == 0:
                break
        if rest.startswith(b"0\r\n\r\n") or (payload >= total and rest == b""):
            break
        data = sock.recv(1 << 20)
        if not data:
            break
        rest += data
    sock.close()
    assert payload == total, f"{payload} of {total} bytes"


def _flood(port, count):
    socks = []
    for _ in range(count):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return socks


def test_each_listener_holds_at_most_max_connections_and_a_flood_of_one_leaves_the_other(sidecar_factory):
    """A client opening connections and sending nothing took a descriptor each until none were left:
    every listener then failed to accept, and /healthz (what the orchestrator restarts the pod by)
    timed out with the agents' calls. Each listener now closes a connection past its cap at once."""
    import requests
    from conftest import metric
    s = sidecar_factory("version: 1\nauth: {required: false}\nlimits: {max_connections: 8}\nadmin: {max_connections: 4}\n")
    idle = _flood(s.proxy_port, 8)
    time.sleep(0.3)
    over = socket.create_connection(("127.0.0.1", s.proxy_port), timeout=5)
    assert closed_within(over, 2), "the ninth connection was kept"
    m = requests.get(f"{s.admin_url}/metrics", timeout=5).text
    assert metric(m, "gateway_connections_open", listener="proxy") == 8
    assert metric(m, "gateway_connections_refused_total", listener="proxy") >= 1
    assert requests.get(f"{s.admin_url}/healthz", timeout=5).status_code == 200
    s.wait_for_log(lambda r: r.get("msg") == "connection cap reached; new connections are closed" and r.get("listener") == "proxy")
    for x in idle:
        x.close()
    deadline = time.time() + 5
    while metric(requests.get(f"{s.admin_url}/metrics", timeout=5).text, "gateway_connections_open", listener="proxy") != 0:
        assert time.time() < deadline
        time.sleep(0.05)
    assert requests.get(f"{s.proxy_url}/serpapi/search?q=after", timeout=5).status_code == 200
    # The admin port's own cap: a flood of it leaves the proxy serving.
    admin_port = int(s.admin.rsplit(":", 1)[1])
    idle = _flood(admin_port, 4)
    time.sleep(0.3)
    over = socket.create_connection(("127.0.0.1", admin_port), timeout=5)
    assert closed_within(over, 2)
    assert requests.get(f"{s.proxy_url}/serpapi/search?q=during", timeout=5).status_code == 200
    for x in idle:
        x.close()


def test_few_descriptors_a_flood_of_the_proxy_leaves_the_probes_answering(tmp_path):
    """Sized from `ulimit -n` when not configured: with 256 descriptors, 400 idle connections to the
    proxy port leave /healthz answering (it timed out before), and the sidecar serves again after."""
    import requests
    from conftest import BIN, free_port
    proxy, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(SIDECAR_STATE_DIR=str(tmp_path / "state"), SIDECAR_PROXY_LISTEN=f"127.0.0.1:{proxy}", SIDECAR_ADMIN_LISTEN=f"127.0.0.1:{admin}")
    proc = subprocess.Popen(["bash", "-c", f"ulimit -n 256 && exec {BIN} run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{admin}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
        idle = _flood(proxy, 400)
        time.sleep(0.5)
        assert requests.get(f"http://127.0.0.1:{admin}/healthz", timeout=3).status_code == 200
        for x in idle:
            x.close()
        time.sleep(0.5)
        r = requests.get(f"http://127.0.0.1:{proxy}/serpapi/search?q=x", timeout=5)
        assert r.status_code == 401 and r.json()["code"] == "token_missing"
    finally:
        proc.terminate()
        proc.wait(10)
