"""HTTPS_PROXY interception: unmodified real clients (each in its default configuration, in a virtual
environment of its own, with nothing but the proxy and CA environment variables set) reach fake HTTPS
upstreams through CONNECT tunnels the sidecar terminates with leaves from its own CA; every request
inside is brokered, logged and metered. Plus the bad input a tunnel can meet, and pass-through."""

import base64
import json
import os
import re
import socket
import ssl
import subprocess
import textwrap
import threading
import time

import pytest
import requests

from conftest import LIVE_ENV, client_python, live_config, metric, parse_response, read_head, sse_chunk, start_chunked

COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello through the tunnel"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}
SEARCH = {"search_metadata": {"id": "s1", "status": "Success"}, "organic_results": [{"position": 1, "title": "Coffee"}]}


def upstream_routes(up):
    """What the real APIs answer, enough for their official clients."""
    def chat(h, rec):
        if json.loads(rec.body or b"{}").get("stream"):
            send, end = start_chunked(h)
            send(sse_chunk("Hel"))
            time.sleep(1.5)  # the agent must see "Hel" while the upstream is still working
            send(sse_chunk("lo"))
            send(sse_chunk(finish="stop"))
            send("data: [DONE]\n\n")
            end()
        else:
            up.send_json(h, 200, COMPLETION)

    up.routes["/v1/chat/completions"] = chat
    up.routes["/search"] = lambda h, rec: up.send_json(h, 200, SEARCH)
    up.routes["/gmail/v1/users/me/messages/send"] = lambda h, rec: up.send_json(h, 200, {"id": "m1", "threadId": "t1", "labelIds": ["SENT"]})
    up.routes["/page"] = lambda h, rec: up.send_json(h, 200, {"page": True, "path": rec.path})


def intercept_config(pki, up, intercept="", extra=""):
    return live_config(pki, up, extra=f"intercept:\n{textwrap.indent(intercept, '  ')}\n{extra}" if intercept else extra)


@pytest.fixture
def tunnel_sidecar(pki, https_upstream, sidecar_factory, tmp_path):
    upstream_routes(https_upstream)
    s = sidecar_factory(intercept_config(pki, https_upstream, intercept=f"allowed_ports: [443, {https_upstream.port}]\nhandshake_timeout: 1s\n"),
                        env=LIVE_ENV)
    s.ca_file = tmp_path / "sidecar-ca.pem"
    r = requests.get(f"{s.admin_url}/ca.pem", timeout=5)  # public: no admin token
    assert r.status_code == 200 and "BEGIN CERTIFICATE" in r.text
    s.ca_file.write_text(r.text)
    return s


def client_env(s, token, ca_file, tmp_path):
    """Only what a user adds for HTTPS_PROXY: the proxy variables and the CA variables."""
    proxy = s.proxy_url_with(token)
    ca = str(ca_file)
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy,
            "http_proxy": proxy, "SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca, "HTTPLIB2_CA_CERTS": ca, "NODE_EXTRA_CA_CERTS": ca}


def run_client(venv, script, env, timeout=60):
    out = subprocess.run([str(client_python(venv)), "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def brokered(up, path_prefix):
    matching = [r for r in up.requests if r.path.startswith(path_prefix)]
    assert matching, f"nothing reached the upstream at {path_prefix}"
    return matching[-1]


def access_lines(s, tool, at_least=1):
    """The tunnel's access lines for `tool`, once `at_least` of them were written (they are batched)."""
    deadline = time.time() + 5
    while True:
        lines = [r for r in s.logs("access") if r.get("tool") == tool and r.get("entry") == "tunnel"]
        if len(lines) >= at_least or time.time() > deadline:
            return lines
        time.sleep(0.05)


def metrics(s):
    return requests.get(f"{s.admin_url}/metrics", timeout=5).text


# ---------------------------------------------------------------- real clients, default configuration


def test_openai_package_plain_and_streaming(tunnel_sidecar, https_upstream, tmp_path):
    s = tunnel_sidecar
    result = run_client("main", """
        import json, time, openai
        client = openai.OpenAI(api_key="sk-placeholder-the-agent-was-given", max_retries=0)  # the default base URL
        plain = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=16)
        start = time.monotonic()
        arrivals = []
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append([chunk.choices[0].delta.content, time.monotonic() - start])
        print(json.dumps({"plain": plain.choices[0].message.content, "usage": plain.usage.total_tokens, "arrivals": arrivals}))
    """, client_env(s, s.new_token(), s.ca_file, tmp_path))
    assert result["plain"] == "hello through the tunnel" and result["usage"] == 7
    (first, t_first), (second, t_second) = result["arrivals"]
    assert (first, second) == ("Hel", "lo")
    assert t_second - t_first > 1.0, "the first chunk must reach the agent before the upstream finished"
    rec = brokered(https_upstream, "/v1/chat/completions")
    assert rec.header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    assert rec.header("Proxy-Authorization") is None
    lines = access_lines(s, "openai", at_least=2)
    assert len(lines) == 2 and all(l["action"] == "chat" and l["status"] == 200 for l in lines)
    assert metric(metrics(s), "gateway_requests_total", tool="openai", action="chat", code="2xx") == 2
    assert "sk-placeholder" not in "\n".join(s.lines) and "sk-REAL" not in "\n".join(s.lines)


def test_the_operators_openai_account_replaces_the_agents(pki, https_upstream, sidecar_factory, tmp_path):
    """An SDK that picked up an organization and project from its environment sends them; OpenAI sees
    the ones the operator configured for the key instead (or none)."""
    upstream_routes(https_upstream)
    config = intercept_config(pki, https_upstream, intercept=f"allowed_ports: [443, {https_upstream.port}]\n")
    assert config.count("timeout: 5s}") == 1  # the openai line
    s = sidecar_factory(config.replace("timeout: 5s}", "timeout: 5s, organization: org-operator}"), env=LIVE_ENV)
    ca = tmp_path / "ca.pem"
    ca.write_text(requests.get(f"{s.admin_url}/ca.pem", timeout=5).text)
    env = client_env(s, s.new_token(), ca, tmp_path) | {"OPENAI_ORG_ID": "org-placeholder", "OPENAI_PROJECT_ID": "proj_placeholder"}
    result = run_client("main", """
        import json, openai
        client = openai.OpenAI(api_key="sk-placeholder", max_retries=0)
        assert client.organization == "org-placeholder" and client.project == "proj_placeholder"
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=16)
        print(json.dumps({"content": r.choices[0].message.content}))
    """, env)
    assert result["content"] == "hello through the tunnel"
    rec = brokered(https_upstream, "/v1/chat/completions")
    assert rec.header("OpenAI-Organization") == "org-operator" and rec.header("OpenAI-Project") is None
    assert rec.header("Authorization") == "Bearer sk-REAL-0123456789abcdef"


def test_serpapi_official_package(tunnel_sidecar, https_upstream, tmp_path):
    s = tunnel_sidecar
    result = run_client("main", """
        import json, serpapi
        results = serpapi.Client(api_key="placeholder").search({"engine": "google", "q": "coffee"})
        print(json.dumps({"title": results["organic_results"][0]["title"]}))
    """, client_env(s, s.new_token(), s.ca_file, tmp_path))
    assert result["title"] == "Coffee"
    rec = brokered(https_upstream, "/search")
    assert "api_key=serp-REAL-0123456789" in rec.path and "placeholder" not in rec.path
    assert access_lines(s, "serpapi")[-1]["action"] == "search"


def test_google_search_results_package(tunnel_sidecar, https_upstream, tmp_path):
    s = tunnel_sidecar
    result = run_client("gsr", """
        import json
        from serpapi import GoogleSearch
        results = GoogleSearch({"q": "coffee", "api_key": "placeholder"}).get_dict()
        print(json.dumps({"title": results["organic_results"][0]["title"]}))
    """, client_env(s, s.new_token(), s.ca_file, tmp_path))
    assert result["title"] == "Coffee"
    rec = brokered(https_upstream, "/search")
    assert "api_key=serp-REAL-0123456789" in rec.path and "placeholder" not in rec.path
    assert access_lines(s, "serpapi")


def test_google_api_python_client_sends_gmail(tunnel_sidecar, https_upstream, tmp_path):
    s = tunnel_sidecar
    result = run_client("main", """
        import base64, json
        from email.message import EmailMessage
        from google.oauth2.credentials import Credentials
        from googleapiclient.discovery import build
        message = EmailMessage()
        message["To"] = "ops@example.com"
        message["Subject"] = "report"
        message.set_content("all good")
        raw = base64.urlsafe_b64encode(message.as_bytes()).decode()
        gmail = build("gmail", "v1", credentials=Credentials(token="placeholder-oauth-token"), cache_discovery=False)
        sent = gmail.users().messages().send(userId="me", body={"raw": raw}).execute()
        print(json.dumps(sent))
    """, client_env(s, s.new_token(), s.ca_file, tmp_path))
    assert result["id"] == "m1"
    rec = brokered(https_upstream, "/gmail/v1/users/me/messages/send")
    assert rec.header("Authorization") == "Bearer ya29.REAL-gmail-token"
    assert "placeholder" not in json.dumps(rec.headers)
    assert access_lines(s, "gmail_send")[-1]["action"] == "send"


# A message with a large attachment, and the Gmail client, as an agent would have them (`message`, `gmail`).
GMAIL_UPLOAD = """
        import io, json
        from email.message import EmailMessage
        from google.oauth2.credentials import Credentials
        from googleapiclient.discovery import build
        from googleapiclient.http import MediaIoBaseUpload
        message = EmailMessage()
        message["To"] = "ops@example.com"
        message["Subject"] = "{subject}"
        message.set_content("see attached")
        message.add_attachment(b"quarterly numbers, region by region\\n" * 30000, maintype="text", subtype="csv", filename="q3.csv")
        gmail = build("gmail", "v1", credentials=Credentials(token="placeholder-oauth-token"), cache_discovery=False)
"""


def test_google_api_python_client_sends_gmail_as_a_media_upload(tunnel_sidecar, https_upstream, tmp_path):
    """A message with an attachment past the JSON endpoint's size goes as a media upload
    (`send(media_body=…)`: /upload/gmail/v1/…?uploadType=media, the message as message/rfc822): brokered
    like the JSON send — recipients read for the guards, the real token injected, the bytes unchanged."""
    s = tunnel_sidecar
    https_upstream.routes["/upload/gmail/v1/users/me/messages/send"] = lambda h, rec: https_upstream.send_json(h, 200, {"id": "u1", "labelIds": ["SENT"]})
    result = run_client("main", GMAIL_UPLOAD.format(subject="report with attachment") + """
        media = MediaIoBaseUpload(io.BytesIO(message.as_bytes()), mimetype="message/rfc822")
        sent = gmail.users().messages().send(userId="me", media_body=media).execute()
        print(json.dumps(sent))
    """, client_env(s, s.new_token(), s.ca_file, tmp_path))
    assert result["id"] == "u1"
    rec = brokered(https_upstream, "/upload/gmail/v1/users/me/messages/send")
    assert "uploadType=media" in rec.path and rec.header("Content-Type") == "message/rfc822"
    assert rec.header("Authorization") == "Bearer ya29.REAL-gmail-token" and b"report with attachment" in rec.body
    line = access_lines(s, "gmail_send")[-1]
    assert line["action"] == "send" and line["status"] == 200


def test_google_api_python_client_sends_a_reply_in_a_thread_as_a_multipart_upload(tunnel_sidecar, https_upstream, tmp_path):
    """`send(body={"threadId": …}, media_body=…)`: metadata and message as multipart/related (uploadType=multipart,
    written by Python's email package with bare LF line ends). Brokered: the recipients of the message part
    guarded, the real token injected, the bytes unchanged; the same send repeated under a new boundary is
    the same call to the idempotency ledger (replayed, not sent twice)."""
    s = tunnel_sidecar
    sent = []

    def send(h, rec):
        sent.append(rec)
        https_upstream.send_json(h, 200, {"id": f"r{len(sent)}", "threadId": "t1", "labelIds": ["SENT"]})

    https_upstream.routes["/upload/gmail/v1/users/me/messages/send"] = send
    script = GMAIL_UPLOAD.format(subject="re: report") + """
        out = []
        for _ in range(2):
            media = MediaIoBaseUpload(io.BytesIO(message.as_bytes()), mimetype="message/rfc822")
            out.append(gmail.users().messages().send(userId="me", body={"threadId": "t1"}, media_body=media).execute())
        print(json.dumps(out))
    """
    result = run_client("main", script, client_env(s, s.new_token(), s.ca_file, tmp_path))
    assert [r["id"] for r in result] == ["r1", "r1"] and len(sent) == 1
    rec = sent[0]
    assert "uploadType=multipart" in rec.path and rec.header("Content-Type").startswith("multipart/related")
    assert rec.header("Authorization") == "Bearer ya29.REAL-gmail-token" and b"re: report" in rec.body and b'"threadId": "t1"' in rec.body
    replay = s.wait_for_log(lambda r: r.get("msg") == "access" and r.get("tool") == "gmail_send" and r.get("idempotency") == "replay")
    assert replay["action"] == "send" and replay["status"] == 200


def test_stdlib_aiohttp_and_the_async_openai_client(tunnel_sidecar, https_upstream, tmp_path):
    """Three more HTTP stacks an agent may be written on, each taking the proxy from the environment:
    the standard library's urllib (its own CONNECT code), aiohttp with `trust_env=True`, and the openai
    package's async client (httpx's async transport)."""
    s = tunnel_sidecar
    result = run_client("main", """
        import asyncio, json, urllib.request
        import aiohttp, openai

        stdlib = json.load(urllib.request.urlopen("https://serpapi.com/search.json?q=stdlib&api_key=placeholder", timeout=20))

        async def main():
            async with aiohttp.ClientSession(trust_env=True) as session:
                async with session.get("https://serpapi.com/search.json", params={"q": "aiohttp", "api_key": "placeholder"}) as r:
                    searched = await r.json()
                    status = r.status
            client = openai.AsyncOpenAI(api_key="sk-placeholder-async", max_retries=0)
            chat = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=16)
            await client.close()
            return status, searched, chat

        status, searched, chat = asyncio.run(main())
        print(json.dumps({"stdlib": stdlib["organic_results"][0]["title"], "aiohttp": [status, searched["organic_results"][0]["title"]],
                          "chat": chat.choices[0].message.content}))
    """, client_env(s, s.new_token(), s.ca_file, tmp_path))
    assert result == {"stdlib": "Coffee", "aiohttp": [200, "Coffee"], "chat": "hello through the tunnel"}
    searches = [r for r in https_upstream.requests if r.path.startswith("/search")]
    assert {q for r in searches for q in ("stdlib", "aiohttp") if f"q={q}" in r.path} == {"stdlib", "aiohttp"}
    assert all("api_key=serp-REAL-0123456789" in r.path and "placeholder" not in r.path for r in searches)
    assert brokered(https_upstream, "/v1/chat/completions").header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    assert len(access_lines(s, "serpapi", at_least=2)) == 2 and access_lines(s, "openai")[-1]["action"] == "chat"


def test_the_openai_agents_sdk_runs_and_uploads_its_traces(sidecar_factory, tmp_path):
    """The Agents SDK as written in its README, with a function tool, plain and streamed, against the
    mocks: the mocked model calls the tool, the SDK runs it and sends its result back, and the answer
    quotes it; a typed agent (output_type) gets its type. Its Responses API calls and its default trace
    upload (POST /v1/traces/ingest) all pass — no "[non-fatal] Tracing client error" in the output."""
    s = sidecar_factory(None, env={"SIDECAR_STATE_DIR": str(tmp_path / "state")})
    ca = tmp_path / "sidecar-ca.pem"
    ca.write_text(requests.get(f"{s.admin_url}/ca.pem", timeout=5).text)
    env = {**client_env(s, s.new_token(), ca, tmp_path), "OPENAI_API_KEY": "sk-placeholder"}
    script = """
        import asyncio, json
        from pydantic import BaseModel
        from agents import Agent, Runner, function_tool

        calls = []

        @function_tool
        def get_weather(city: str) -> str:
            calls.append(city)
            return f"sunny in {city}"

        class Weather(BaseModel):
            city: str
            celsius: int

        async def main():
            agent = Agent(name="helper", instructions="Be brief.", model="gpt-4.1-mini", tools=[get_weather])
            plain = await Runner.run(agent, "What is the weather in Lisbon?")
            streamed = Runner.run_streamed(agent, "And in Porto?")
            kinds = {event.type async for event in streamed.stream_events()}
            typed = await Runner.run(Agent(name="typed", model="gpt-4.1-mini", output_type=Weather), "Lisbon?")
            return plain.final_output, streamed.final_output, sorted(kinds), typed.final_output.model_dump()

        plain, streamed, kinds, typed = asyncio.run(main())
        print(json.dumps({"plain": plain, "streamed": streamed, "kinds": kinds, "typed": typed, "calls": calls}))
    """
    out = subprocess.run([str(client_python("agents")), "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["calls"] == ["mock city", "mock city"], result
    assert result["plain"] == result["streamed"] == "Mock answer from the tool result: sunny in mock city"
    assert {"raw_response_event", "run_item_stream_event"} <= set(result["kinds"])
    assert result["typed"] == {"city": "mock city", "celsius": 1}
    assert "Tracing client error" not in out.stdout + out.stderr
    deadline = time.time() + 5
    while time.time() < deadline and not [r for r in s.logs("access") if r.get("action") == "traces"]:
        time.sleep(0.05)
    traces = [r for r in s.logs("access") if r.get("action") == "traces"]
    assert traces and all(r["status"] == 204 and r["entry"] == "tunnel" for r in traces)
    assert len([r for r in s.logs("access") if r.get("action") == "responses"]) == 5  # two per tool run, one typed


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_requests_and_httpx_fetch_an_https_site(tunnel_sidecar, https_upstream, tmp_path, client):
    s = tunnel_sidecar
    # The fetch target is a local TLS server (granted by egress.allow_cidrs); httpx goes by address
    # (no SNI: the leaf carries the IP), requests by name.
    host = "127.0.0.1" if client == "httpx" else "localhost"
    url = f"https://{host}:{https_upstream.port}/page?from={client}"
    call = "httpx.get(url, timeout=20)" if client == "httpx" else "requests.get(url, timeout=20)"
    result = run_client("main", f"""
        import json, {client}
        url = {url!r}
        r = {call}
        print(json.dumps({{"status": r.status_code, "body": r.json(), "via": r.headers.get("via")}}))
    """, client_env(s, s.new_token(scopes=["http_fetch:*"]), s.ca_file, tmp_path))
    assert result["status"] == 200 and result["body"]["path"] == f"/page?from={client}"
    assert result["via"] == "1.1 agent-sidecar"
    rec = brokered(https_upstream, f"/page?from={client}")
    assert rec.header("Proxy-Authorization") is None and "agent-sidecar" in rec.header("Via")
    line = access_lines(s, "http_fetch")[-1]
    assert line["action"] == "get" and line["upstream_host"] == host


def test_curl_with_cacert(tunnel_sidecar, https_upstream):
    s = tunnel_sidecar
    token = s.new_token()
    out = subprocess.run(["curl", "-sS", "--proxy", s.proxy_url, "--proxy-user", f"agent:{token}", "--cacert", str(s.ca_file),
                          "-H", "X-Request-Id: curl-tunnel-1", "https://serpapi.com/search.json?q=tea&api_key=mine"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["organic_results"][0]["title"] == "Coffee"
    assert "api_key=serp-REAL-0123456789" in brokered(https_upstream, "/search").path
    line = s.access("curl-tunnel-1")
    assert line["entry"] == "tunnel" and line["tool"] == "serpapi" and line["method"] == "GET"


def test_a_tunnel_carries_many_requests_and_a_revocation_applies_to_the_next(tunnel_sidecar, https_upstream):
    s = tunnel_sidecar
    agent = s.new_agent()
    token = s.new_token(agent)
    tls, _ = open_tunnel(s, "serpapi.com:443", token)
    for i in range(5):
        status, _, _ = tunnel_request(tls, f"GET /search?q=n{i} HTTP/1.1\r\nHost: serpapi.com\r\n\r\n".encode())
        assert status == 200
    token_id = s.admin_request("GET", f"/api/agents/{agent}/tokens").json()["tokens"][-1]["token_id"]
    assert s.admin_request("POST", f"/api/tokens/{token_id}/revoke").status_code == 200
    status, _, body = tunnel_request(tls, b"GET /search?q=after HTTP/1.1\r\nHost: serpapi.com\r\n\r\n")
    assert status == 407 and json.loads(body)["code"] == "token_revoked"
    tls.close()


def test_sigterm_closes_idle_tunnels_at_once(tunnel_sidecar, https_upstream):
    """Pooled tunnels an SDK keeps open, idle, when the sidecar is stopped: closed at once like idle
    keep-alive connections. Each waited NIO's default 5 s for the agent's TLS close_notify (its client
    is not reading), holding the process that long."""
    s = tunnel_sidecar
    token = s.new_token()
    tunnels = [open_tunnel(s, "serpapi.com:443", token)[0] for _ in range(3)]
    status, _, _ = tunnel_request(tunnels[0], b"GET /search?q=warm HTTP/1.1\r\nHost: serpapi.com\r\n\r\n")
    assert status == 200
    started = time.monotonic()
    assert s.stop(timeout=15) == 0
    assert time.monotonic() - started < 2.5


# ---------------------------------------------------------------- raw tunnels and bad input


def proxy_auth(token):
    return "Proxy-Authorization: Basic " + base64.b64encode(f"agent:{token}".encode()).decode() + "\r\n"


def connect(s, target, token=None, extra="", timeout=5.0):
    """Sends a CONNECT; returns the socket and the proxy's answer head (and body, for a refusal)."""
    sock = socket.create_connection(("127.0.0.1", s.proxy_port), timeout=timeout)
    auth = proxy_auth(token) if token else ""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}{extra}\r\n".encode())
    head, rest = read_head(sock)
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while m and len(rest) < int(m.group(1)):
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    return sock, head.decode(errors="replace"), rest


def open_tunnel(s, target, token, server_name=None):
    sock, head, _ = connect(s, target, token)
    assert head.startswith("HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    host = target.rsplit(":", 1)[0].strip("[]")
    tls = ctx.wrap_socket(sock, server_hostname=server_name or host)
    return tls, sock


def tunnel_request(tls, data):
    tls.sendall(data)
    raw = b""
    while True:
        head, sep, body = raw.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
            if m and len(body) >= int(m.group(1)):
                break
        chunk = tls.recv(65536)
        if not chunk:
            break
        raw += chunk
    status, headers, body = parse_response(raw)
    return status, headers, body


def problem(head, body):
    status = int(head.split(" ")[1])
    return status, json.loads(body)["code"]


def test_connect_without_or_with_a_bad_token_is_407_before_any_tls(tunnel_sidecar):
    s = tunnel_sidecar
    sock, head, body = connect(s, "api.openai.com:443")
    assert problem(head, body) == (407, "token_missing")
    assert "proxy-authenticate: basic" in head.lower()
    sock, head, body = connect(s, "api.openai.com:443", token="not-a-token")
    assert problem(head, body) == (407, "token_malformed")
    forged = s.new_token()[:-8] + "AAAAAAAA"
    sock, head, body = connect(s, "api.openai.com:443", token=forged)
    assert problem(head, body)[0] == 407


@pytest.mark.parametrize("target,status,code", [
    ("serpapi.com:8443", 403, "connect_port_denied"),
    ("169.254.169.254:443", 403, "egress_denied"),
    ("[::1]:443", 403, "egress_denied"),
    ("2852039166:443", 403, "egress_denied"),  # 169.254.169.254 written as one number
    ("serpapi.com", 400, "invalid_target"),
    ("serpapi.com:", 400, "invalid_target"),
    ("[::1", 400, "invalid_target"),
    ("a:b:c", 400, "invalid_target"),
    ("agent@serpapi.com:443", 400, "invalid_target"),
    ("serpapi.com:443/path", 400, "invalid_target"),
    ("serpapi.com:99999", 400, "invalid_target"),
])
def test_connect_targets_refused_before_the_handshake(tunnel_sidecar, target, status, code):
    s = tunnel_sidecar
    sock, head, body = connect(s, target, s.new_token())
    assert problem(head, body) == (status, code)
    assert "connection: close" in head.lower()
    assert "BEGIN" not in body.decode(errors="replace")


def test_connect_to_the_sidecars_own_ports_is_refused(pki, https_upstream, sidecar_factory):
    upstream_routes(https_upstream)
    # Even with loopback granted and the port allowed, the sidecar never tunnels to itself.
    probe = sidecar_factory(intercept_config(pki, https_upstream))
    admin_port = int(probe.admin.rsplit(":", 1)[1])
    probe.stop()
    s = sidecar_factory(intercept_config(pki, https_upstream, intercept=f"allowed_ports: [443, {admin_port}]\n"),
                        env={**LIVE_ENV, "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin_port}"})
    sock, head, body = connect(s, f"127.0.0.1:{admin_port}", s.new_token())
    assert problem(head, body) == (403, "egress_denied")
    assert "own listener" in json.loads(body)["detail"]


def test_a_name_that_resolves_inside_is_refused_before_the_handshake(pki, https_upstream, sidecar_factory):
    upstream_routes(https_upstream)
    # No loopback grant here: localhost is an internal destination like any other.
    config = intercept_config(pki, https_upstream).replace('allow_cidrs: ["127.0.0.0/8"]', "allow_cidrs: []")
    s = sidecar_factory(config, env=LIVE_ENV)
    sock, head, body = connect(s, "localhost:443", s.new_token())
    assert problem(head, body) == (403, "egress_denied")


def test_policy_applies_to_the_connect_target(tunnel_sidecar):
    s = tunnel_sidecar
    only_search = s.new_token(scopes=["serpapi:search"])
    sock, head, body = connect(s, "api.openai.com:443", only_search)
    assert problem(head, body) == (403, "scope_denied")
    sock, head, body = connect(s, "example.com:443", only_search)
    assert problem(head, body) == (403, "scope_denied")
    sock, head, _ = connect(s, "serpapi.com:443", only_search)
    assert head.startswith("HTTP/1.1 200")


def test_sni_must_name_the_connect_host(tunnel_sidecar):
    s = tunnel_sidecar
    sock, head, _ = connect(s, "serpapi.com:443", s.new_token())
    assert head.startswith("HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        ctx.wrap_socket(sock, server_hostname="api.openai.com")
    assert metric(metrics(s), "gateway_tunnels_total", mode="intercept", result="sni_mismatch") == 1


def test_an_alpn_offer_without_http1_gets_the_no_application_protocol_alert(tunnel_sidecar, https_upstream):
    """An intercepted tunnel speaks HTTP/1.x: an h2-only client is told so in the handshake (RFC 7301),
    instead of finishing it and having its HTTP/2 preface answered 400; a client offering h2 and
    http/1.1 (httpx with http2=True, Go, curl) gets http/1.1 and is served."""
    s = tunnel_sidecar
    before = len(https_upstream.requests)
    sock, head, _ = connect(s, "serpapi.com:443", s.new_token())
    assert head.startswith("HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(s.ca_file))
    ctx.set_alpn_protocols(["h2"])
    with pytest.raises(ssl.SSLError, match="(?i)no.application.protocol"):
        ctx.wrap_socket(sock, server_hostname="serpapi.com")
    assert metric(metrics(s), "gateway_tunnels_total", mode="intercept", result="no_application_protocol") == 1
    assert len(https_upstream.requests) == before
    for offer in (["h2", "http/1.1"], ["http/1.0"]):
        sock, head, _ = connect(s, "serpapi.com:443", s.new_token())
        ctx = ssl.create_default_context(cafile=str(s.ca_file))
        ctx.set_alpn_protocols(offer)
        tls = ctx.wrap_socket(sock, server_hostname="serpapi.com")
        assert tls.selected_alpn_protocol() == ("http/1.1" if "http/1.1" in offer else None)
        tls.sendall(b"GET /search?q=alpn&engine=google HTTP/1.1\r\nHost: serpapi.com\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]


def test_a_client_that_does_not_trust_the_ca_gets_an_alert_never_a_plain_tunnel(tunnel_sidecar, https_upstream):
    s = tunnel_sidecar
    before = len(https_upstream.requests)
    sock, head, _ = connect(s, "serpapi.com:443", s.new_token())
    with pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context().wrap_socket(sock, server_hostname="serpapi.com")
    s.wait_for_log(lambda r: r.get("msg") == "tunnel handshake failed")
    assert len(https_upstream.requests) == before


def test_a_clienthello_that_never_comes_is_cut_after_the_handshake_timeout(tunnel_sidecar):
    s = tunnel_sidecar
    sock, head, _ = connect(s, "serpapi.com:443", s.new_token())
    assert head.startswith("HTTP/1.1 200")
    sock.settimeout(5)
    start = time.monotonic()
    assert sock.recv(100) == b""  # closed by the sidecar (handshake_timeout: 1s)
    assert time.monotonic() - start < 4
    assert metric(metrics(s), "gateway_tunnels_total", mode="intercept", result="handshake_timeout") == 1


def test_garbage_instead_of_tls_closes_the_tunnel(tunnel_sidecar, https_upstream):
    s = tunnel_sidecar
    before = len(https_upstream.requests)
    sock, head, _ = connect(s, "serpapi.com:443", s.new_token())
    sock.sendall(b"GET /search?q=plain HTTP/1.1\r\nHost: serpapi.com\r\n\r\n")
    sock.settimeout(5)
    data = b""
    while True:
        chunk = sock.recv(100)
        if not chunk:
            break
        data += chunk
    assert b"HTTP/1.1 200" not in data  # never answered as plain HTTP
    assert len(https_upstream.requests) == before
    assert metric(metrics(s), "gateway_tunnels_total", mode="intercept", result="handshake_failed") == 1


@pytest.mark.parametrize("request_bytes,status,code", [
    (b"GET https://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n", 421, "misdirected_request"),
    (b"GET http://serpapi.com/search?q=x HTTP/1.1\r\nHost: serpapi.com\r\n\r\n", 421, "misdirected_request"),
    (b"GET /search?q=x HTTP/1.1\r\nHost: api.openai.com\r\n\r\n", 421, "misdirected_request"),
    (b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com\r\n\r\n", 421, "misdirected_request"),
    (b"POST /search HTTP/1.1\r\nHost: serpapi.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, None),
])
def test_requests_inside_the_tunnel_for_other_hosts_or_with_smuggling_are_refused(tunnel_sidecar, https_upstream, request_bytes, status, code):
    s = tunnel_sidecar
    before = len(https_upstream.requests)
    tls, _ = open_tunnel(s, "serpapi.com:443", s.new_token())
    got, _, body = tunnel_request(tls, request_bytes)
    assert got == status
    if code:
        assert json.loads(body)["code"] == code
    assert len(https_upstream.requests) == before


def test_intercept_disabled_restores_the_refusal(pki, https_upstream, sidecar_factory):
    s = sidecar_factory(intercept_config(pki, https_upstream, intercept="enabled: false\n"), env=LIVE_ENV)
    sock, head, body = connect(s, "api.openai.com:443", s.new_token())
    assert problem(head, body) == (403, "connect_refused")
    assert requests.get(f"{s.admin_url}/ca.pem", timeout=5).status_code == 404


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def test_many_distinct_names_keep_the_leaf_cache_bounded(pki, https_upstream, sidecar_factory, tmp_path):
    names = int(os.environ.get("INTERCEPT_NAMES", "3000"))
    s = sidecar_factory("version: 1\nintercept:\n  leaf_cache_size: 64\n")  # embedded default: mocked tools
    ca = tmp_path / "ca.pem"
    ca.write_text(requests.get(f"{s.admin_url}/ca.pem", timeout=5).text)
    token = s.new_token()
    ctx = ssl.create_default_context(cafile=str(ca))

    def handshake(i):
        host = f"n{i}.names.example"
        sock, head, _ = connect(s, f"{host}:443", token)
        assert head.startswith("HTTP/1.1 200"), head
        ctx.wrap_socket(sock, server_hostname=host).close()

    for i in range(200):
        handshake(i)
    before = rss_kb(s.proc.pid)
    errors = []

    def worker(start):
        try:
            for i in range(start, names, 4):
                handshake(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(200 + k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    after = rss_kb(s.proc.pid)
    text = metrics(s)
    assert metric(text, "gateway_intercept_leaf_certificates") <= 64
    assert metric(text, "gateway_intercept_leaves_minted_total") >= names
    assert after - before < 10 * 1024, f"RSS grew {after - before} KiB over {names} names"


# ---------------------------------------------------------------- pass-through


def test_passthrough_host_is_relayed_unread_after_the_same_checks(pki, https_upstream, sidecar_factory, tmp_path):
    upstream_routes(https_upstream)
    s = sidecar_factory(intercept_config(pki, https_upstream, intercept=f"allowed_ports: [443, {https_upstream.port}]\npassthrough_hosts: [localhost]\n"),
                        env=LIVE_ENV)
    token = s.new_token(scopes=["http_fetch:*"])
    env = client_env(s, token, pki.ca_pem, tmp_path)  # the real server's certificate: nothing is intercepted
    result = run_client("main", f"""
        import json, requests
        r = requests.get("https://localhost:{https_upstream.port}/page?pass=1", timeout=20)
        print(json.dumps({{"status": r.status_code, "via": r.headers.get("via")}}))
    """, env)
    assert result == {"status": 200, "via": None}
    rec = brokered(https_upstream, "/page?pass=1")
    assert rec.header("Via") is None  # not read, not rewritten
    line = s.wait_for_log(lambda r: r.get("msg") == "access" and r.get("entry") == "passthrough")
    assert line["method"] == "CONNECT" and line["tool"] == "http_fetch" and line["upstream_host"] == "localhost"
    assert line["bytes_in"] > 0 and line["bytes_out"] > 0 and line["agent_id"].startswith("agt_")
    assert metric(metrics(s), "gateway_tunnels_total", mode="passthrough", result="opened") == 1
    # The same checks first: a token without http_fetch is refused before anything is relayed.
    sock, head, body = connect(s, f"localhost:{https_upstream.port}", s.new_token(scopes=["serpapi:search"]))
    assert problem(head, body) == (403, "scope_denied")
