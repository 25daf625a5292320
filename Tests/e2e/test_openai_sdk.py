"""The official `openai` package through the sidecar: base_url, HTTP_PROXY, and true streaming."""

import json
import os
import threading
import time

import httpx
import openai
import pytest

from conftest import LIVE_ENV, live_config, sse_chunk, start_chunked

COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from upstream"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}


def completion_route(up):
    def handler(h, rec):
        up.send_json(h, 200, COMPLETION)
    return handler


@pytest.mark.parametrize("http2", [True, False], ids=["ahc", "h1pool"])
def test_sdk_with_base_url(pki, https_upstream, sidecar_factory, http2):
    https_upstream.routes["/v1/chat/completions"] = completion_route(https_upstream)
    s = sidecar_factory(live_config(pki, https_upstream, http2=http2), env=LIVE_ENV)
    # The agent's "API key" is its sidecar token; the real key never leaves the sidecar.
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(), max_retries=0)
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=16)
    assert resp.choices[0].message.content == "hello from upstream"
    rec = https_upstream.requests[-1]
    assert rec.header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    assert json.loads(rec.body)["max_tokens"] == 16


def test_openais_request_id_reaches_the_agent_and_the_log_and_upstream_text_does_not(pki, https_upstream, sidecar_factory):
    key = "sk-REAL-0123456789abcdef"
    ids = iter(["req_7f3a9c0b1d2e4f56", key])

    def handler(h, rec):
        # OpenAI's own id; then a hostile upstream echoing the key in the id and in the chaos mark.
        up_id = next(ids)
        https_upstream.send_json(h, 200, COMPLETION, extra_headers=[("x-request-id", up_id), ("X-Chaos-Injected", key)])

    https_upstream.routes["/v1/chat/completions"] = handler
    s = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    ours = raw.headers["x-request-id"]
    assert raw.headers["x-upstream-request-id"] == "req_7f3a9c0b1d2e4f56" and ours != "req_7f3a9c0b1d2e4f56"
    line = s.access(ours)
    assert line["upstream_request_id"] == "req_7f3a9c0b1d2e4f56" and "chaos" not in line
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-upstream-request-id"] == "[REDACTED]"
    line = s.access(raw.headers["x-request-id"])
    assert "upstream_request_id" not in line and "chaos" not in line
    assert not any(key in l for l in s.lines)


def test_sdk_with_http_proxy(pki, https_upstream, sidecar_factory, monkeypatch):
    https_upstream.routes["/v1/chat/completions"] = completion_route(https_upstream)
    s = sidecar_factory(live_config(pki, https_upstream), env=LIVE_ENV)
    monkeypatch.setenv("HTTP_PROXY", s.proxy_url_with(s.new_token()))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    # The agent speaks plain http to api.openai.com through the proxy; the sidecar originates TLS.
    client = openai.OpenAI(base_url="http://api.openai.com/v1", api_key="agent-does-not-have-a-key", max_retries=0)
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert resp.usage.total_tokens == 6
    rec = https_upstream.requests[-1]
    assert rec.header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    assert rec.header("Proxy-Authorization") is None
    line = s.wait_for_log(lambda r: r.get("msg") == "access" and r.get("tool") == "openai")
    assert line["entry"] == "forward"


@pytest.mark.parametrize("http2", [True, False], ids=["ahc", "h1pool"])
def test_streaming_chunks_reach_the_agent_before_the_upstream_finishes(pki, https_upstream, sidecar_factory, http2):
    first_chunk_seen = threading.Event()
    upstream_finished = threading.Event()

    def stream(h, rec):
        send, end = start_chunked(h)
        send(sse_chunk("Hel"))
        # Do not finish until the agent has seen the first chunk: a buffering proxy deadlocks here
        # (and the test fails on the timeout below).
        first_chunk_seen.wait(timeout=10)
        for part in ["lo", " wor", "ld"]:
            send(sse_chunk(part))
        send(sse_chunk(finish="stop"))
        send("data: [DONE]\n\n")
        end()
        upstream_finished.set()

    https_upstream.routes["/v1/chat/completions"] = stream
    s = sidecar_factory(live_config(pki, https_upstream, http2=http2), env=LIVE_ENV)
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(), max_retries=0, timeout=15)
    started = time.time()
    pieces = []
    for ev in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True):
        if ev.choices and ev.choices[0].delta.content:
            if not pieces:
                assert not upstream_finished.is_set(), "first chunk arrived only after the upstream finished"
                first_chunk_seen.set()
            pieces.append(ev.choices[0].delta.content)
    assert "".join(pieces) == "Hello world"
    assert time.time() - started < 8


def test_sdk_against_mocks_streaming_and_embeddings(sidecar_factory):
    s = sidecar_factory(None, env={})
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(), max_retries=0)
    text = "".join(ev.choices[0].delta.content or "" for ev in
                   client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}], stream=True)
                   if ev.choices)
    assert text.startswith("This is a mock reply")
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    resp = client.responses.create(model="gpt-4.1-mini", input="hi")
    assert resp.output_text.startswith("Mock response")
    # The Responses API streamed: the SDK's typed events, and its helper that needs `response.completed`.
    events = list(client.responses.create(model="gpt-4.1-mini", input="hi", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == events[-1].response.output_text and streamed.startswith("Mock response")
    assert events[-1].response.usage.total_tokens > 0
    with client.responses.stream(model="gpt-4.1-mini", input="hi") as stream:
        assert stream.get_final_response().output_text.startswith("Mock response")
    # The legacy completions endpoint (client.completions.create; LangChain's OpenAI LLM class): text cut to
    # max_tokens words, streamed as text_completion chunks, with the usage chunk when asked.
    comp = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=3)
    assert comp.object == "text_completion" and comp.choices[0].text == "Mock completion of: " and comp.choices[0].finish_reason == "length"
    assert comp.usage.completion_tokens == 3
    chunks = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Mock completion of: Say hi"
    assert chunks[-1].usage.total_tokens > 0 and [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # Moderations: the mock flags "kill" for violence, one result per input string.
    mod = client.moderations.create(model="omni-moderation-latest", input=["hello", "kill it"])
    assert [r.flagged for r in mod.results] == [False, True] and mod.results[1].categories.violence
    # An image tool and a voice tool (they were 400 unknown_action): typed answers from the mock.
    import base64
    img = client.images.generate(model="gpt-image-1", prompt="a red fox", n=2)
    assert len(img.data) == 2 and base64.b64decode(img.data[0].b64_json).startswith(b"\x89PNG") and img.usage.total_tokens > 0
    assert client.images.generate(model="dall-e-3", prompt="a red fox").data[0].url.startswith("https://")
    wav = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="hello", response_format="wav")
    assert wav.content[:4] == b"RIFF" and wav.content[8:12] == b"WAVE"
    assert client.audio.speech.create(model="tts-1", voice="alloy", input="hello").content[:2] == b"\xff\xfb"
    # File uploads (multipart/form-data; they were 400 unknown_action): transcription as JSON, as text and
    # streamed, translation, an image edit and a variation.
    import io
    audio = ("memo.wav", io.BytesIO(b"RIFF" + bytes(2000)), "audio/wav")
    assert client.audio.transcriptions.create(model="whisper-1", file=audio).text.startswith("Mock transcription of ")
    audio[1].seek(0)
    assert client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="text").startswith("Mock transcription")
    audio[1].seek(0)
    events = list(client.audio.transcriptions.create(model="gpt-4o-transcribe", file=audio, stream=True))
    assert events[-1].type == "transcript.text.done" and "".join(e.delta for e in events[:-1]) == events[-1].text
    audio[1].seek(0)
    assert client.audio.translations.create(model="whisper-1", file=audio).text.startswith("Mock translation of ")
    png = ("cat.png", io.BytesIO(base64.b64decode("iVBORw0KGgo=")), "image/png")
    assert client.images.edit(model="gpt-image-1", image=png, prompt="add a hat").data[0].b64_json
    png[1].seek(0)
    assert len(client.images.create_variation(image=png, n=2).data) == 2


WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "days", "unit"],
           "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 3}, "unit": {"type": "string", "enum": ["f", "c"]}}}
NOTE = {"type": "object", "properties": {"text": {"type": "string", "minLength": 12}}}


def test_a_tool_loop_and_typed_outputs_run_against_the_mock(sidecar_factory):
    """The embedded default's mocked model honours tools and output formats as a model would: it calls a
    function (the one the user names, else the first, or the one tool_choice names) with arguments that
    satisfy its schema, answers the tool's result in text, and gives a typed answer a value of its
    schema — plain and streamed, chat completions and the Responses API."""
    from pydantic import BaseModel

    class Day(BaseModel):
        date: str
        high: float

    class Forecast(BaseModel):
        city: str
        days: list[Day]
        windy: bool
        note: str | None

    s = sidecar_factory(None, env={})
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(), max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "strict": True}},
             {"type": "function", "function": {"name": "send_note", "parameters": NOTE}}]
    ask = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=ask, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and args["days"] >= 3 and args["unit"] == "f"
    named = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "please send_note that"}], tools=tools)
    note = named.choices[0].message.tool_calls[0]
    assert note.function.name == "send_note" and len(json.loads(note.function.arguments)["text"]) >= 12
    forced = client.chat.completions.create(model="gpt-4o-mini", messages=ask, tools=tools,
                                            tool_choice={"type": "function", "function": {"name": "send_note"}})
    assert forced.choices[0].message.tool_calls[0].function.name == "send_note"
    none = client.chat.completions.create(model="gpt-4o-mini", messages=ask, tools=tools, tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"
    # Streamed: the SDK's helper assembles the call from its pieces.
    with client.chat.completions.stream(model="gpt-4o-mini", messages=ask, tools=tools) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    # The tool's result goes back: the answer is text that uses it.
    answered = ask + [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    done = client.chat.completions.create(model="gpt-4o-mini", messages=answered, tools=tools)
    assert done.choices[0].finish_reason == "stop" and "sunny, 21 C" in done.choices[0].message.content
    # Typed outputs (pydantic through the SDK's parse helpers), chat and responses, plain and streamed.
    parsed = client.chat.completions.parse(model="gpt-4o-mini", messages=ask, response_format=Forecast).choices[0].message.parsed
    assert isinstance(parsed, Forecast) and len(parsed.days) == 1 and isinstance(parsed.days[0].high, float)
    with client.chat.completions.stream(model="gpt-4o-mini", messages=ask, response_format=Forecast) as stream:
        assert isinstance(stream.get_final_completion().choices[0].message.parsed, Forecast)
    assert isinstance(client.responses.parse(model="gpt-4.1-mini", input="Lisbon?", text_format=Forecast).output_parsed, Forecast)
    obj = client.chat.completions.create(model="gpt-4o-mini", messages=ask, response_format={"type": "json_object"})
    assert json.loads(obj.choices[0].message.content)["reply"].startswith("This is a mock reply")
    # The Responses API: a function_call item, then text after its output; streamed with argument deltas.
    rtools = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}]
    resp = client.responses.create(model="gpt-4.1-mini", input="Weather in Lisbon?", tools=rtools)
    fc = resp.output[0]
    assert fc.type == "function_call" and fc.name == "get_weather" and json.loads(fc.arguments)["days"] >= 3
    follow = client.responses.create(model="gpt-4.1-mini", tools=rtools, input=[
        {"role": "user", "content": "Weather in Lisbon?"}, fc.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": fc.call_id, "output": "rain, 14 C"}])
    assert "rain, 14 C" in follow.output_text
    with client.responses.stream(model="gpt-4.1-mini", input="Weather in Lisbon?", tools=rtools) as stream:
        events = list(stream)
        streamed = stream.get_final_response()
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == fc.arguments
    assert streamed.output[0].type == "function_call" and streamed.output[0].arguments == fc.arguments


def test_mock_streams_reach_the_agent_chunk_by_chunk(sidecar_factory, tmp_path):
    """A mocked `stream: true` answer is paced like a live one (mock.stream_delay between chunks), not
    written in one piece at the end."""
    cfg = "version: 1\nauth:\n  required: false\nmock:\n  stream_delay: 150ms\ntools:\n  openai: {mode: mock}\n"
    s = sidecar_factory(cfg, env={"SIDECAR_STATE_DIR": str(tmp_path / "state")})
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key="unused", max_retries=0, timeout=30)
    arrivals = []
    for ev in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}], stream=True):
        if ev.choices and ev.choices[0].delta.content:
            arrivals.append(time.time())
    assert len(arrivals) >= 4
    # Chunks arrive spread over the stream, not together once it is over.
    assert arrivals[-1] - arrivals[0] > 0.3



MODELS_POLICY = """version: 1
roles:
  worker:
    allow: ["openai:*"]
    rules:
      - scope: "openai:*"
        guards: {models: [gpt-4o-mini, text-embedding-3-small], max_tokens: 100}
        budget: {tokens: 50, window: day}
  chatter:
    allow: ["openai:chat"]
"""


def test_sdk_model_list_and_retrieve_pass_guards_and_spend_no_budget(pki, https_upstream, sidecar_factory, tmp_path):
    """`client.models.list()` and `.retrieve(id)` — what SDKs and frameworks call to check a key — reach
    the upstream with the real key under a policy whose guards (model allowlist, required max_tokens) and
    token budget would refuse any completion without them; a role allowed only `openai:chat` is refused."""
    up = https_upstream
    up.routes["/v1/models"] = lambda h, rec: up.send_json(h, 200, {"object": "list", "data": [
        {"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "system"}]})
    up.routes["/v1/models/gpt-4o"] = lambda h, rec: up.send_json(h, 200, {"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "system"})
    policy = tmp_path / "policy.yaml"
    policy.write_text(MODELS_POLICY)
    s = sidecar_factory(live_config(pki, up, extra=f"policy: {{file: \"{policy}\"}}\n"), env=LIVE_ENV)
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(role="worker"), max_retries=0)
    for _ in range(3):  # more than the 50-token budget would allow if a read reserved any
        assert [m.id for m in client.models.list()] == ["gpt-4o"]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    rec = up.requests[-1]
    assert rec.path == "/v1/models/gpt-4o" and rec.header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    line = s.wait_for_log(lambda r: r.get("msg") == "access" and r.get("action") == "models")
    assert line["tool"] == "openai" and line["status"] == 200
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(role="chatter"), max_retries=0).models.list()
    # A write to the list is no action.
    r = httpx.post(f"{s.proxy_url}/openai/v1/models", headers={"Authorization": f"Bearer {s.new_token(role='worker')}"}, json={})
    assert r.status_code == 400 and r.json()["code"] == "unknown_action"
    # Moderations (a guardrail's call): free like the list — neither the model guard nor the budget reads them.
    up.routes["/v1/moderations"] = lambda h, rec: up.send_json(h, 200, {"id": "modr-1", "model": "omni-moderation-latest", "results": [
        {"flagged": True, "categories": {"violence": True}, "category_scores": {"violence": 0.9}}]})
    for _ in range(3):
        m = client.moderations.create(model="omni-moderation-latest", input="I will kill the process")
        assert m.results[0].flagged and m.results[0].categories.violence
    rec = up.requests[-1]
    assert rec.path == "/v1/moderations" and rec.header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(role="chatter"), max_retries=0).moderations.create(input="x")
    # Embeddings produce no output tokens: the max_tokens guard has nothing to require (it refused every
    # embedding as "max_tokens is required"), and the budget reserves only the input.
    up.routes["/v1/embeddings"] = lambda h, rec: up.send_json(h, 200, {"object": "list", "model": "text-embedding-3-small", "data": [
        {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}})
    for _ in range(3):
        assert client.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="float").data[0].embedding == [0.5, 0.25]
    with pytest.raises(openai.PermissionDeniedError):  # the model guard still reads them
        client.embeddings.create(model="text-embedding-ada-002", input="hello")
    # Images: no token cap to require either; the budget reserves the prompt and settles to the usage.
    up.routes["/v1/images/generations"] = lambda h, rec: up.send_json(h, 200, {"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}],
        "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}})
    for _ in range(3):
        assert client.images.generate(model="gpt-4o-mini", prompt="fox").data[0].b64_json == "iVBORw0KGgo="
    assert up.requests[-1].path == "/v1/images/generations" and up.requests[-1].header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    with pytest.raises(openai.PermissionDeniedError):  # the model guard reads an image's model too
        client.images.generate(model="dall-e-3", prompt="fox")


RETRY_POLICY = """version: 1
roles:
  worker:
    allow: ["openai:*"]
    rules:
      - scope: "openai:chat"
        quota: {limit: 1, window: day, timezone: UTC}
"""


def test_sdk_does_not_resend_a_refusal_that_waiting_cannot_lift(pki, https_upstream, sidecar_factory, tmp_path):
    """The openai package retries every 409/429/5xx twice on its own unless told `x-should-retry: false`:
    a daily quota spent for the day, a cancelled run — each is refused once, not three times."""
    up = https_upstream
    up.routes["/v1/chat/completions"] = lambda h, rec: up.send_json(h, 200, {
        "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    policy = tmp_path / "policy.yaml"
    policy.write_text(RETRY_POLICY)
    s = sidecar_factory(live_config(pki, up, extra=f"policy: {{file: \"{policy}\"}}\n"), env=LIVE_ENV)
    token = s.new_token(role="worker")
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=token)  # the SDK's default: 2 retries
    ask = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert client.chat.completions.create(**ask).choices[0].message.content == "ok"
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**ask)
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert int(refused.value.response.headers["retry-after"]) > 60
    time.sleep(0.5)  # access lines are batched
    outcomes = [r.get("outcome") for r in s.logs("access") if r.get("action") == "chat"]
    assert outcomes == ["ok", "quota_exceeded"], outcomes
    # A cancelled run's call: 409, also once.
    created = s.admin_request("POST", "/api/runs", {"name": "r"}, token=token)
    assert created.status_code == 201, created.text
    run = created.json()["run"]["id"]
    assert s.admin_request("POST", f"/api/runs/{run}/start", token=token).status_code == 200
    assert s.admin_request("POST", f"/api/runs/{run}/cancel", token=token).status_code == 202
    with pytest.raises(openai.ConflictError) as cancelled:
        client.chat.completions.create(**ask, extra_headers={"X-Run-Id": run})
    assert cancelled.value.response.headers["x-should-retry"] == "false"
    time.sleep(0.5)
    assert [r.get("outcome") for r in s.logs("access") if r.get("action") == "chat"][2:] == ["run_cancelled"]


UPLOAD_POLICY = """version: 1
roles:
  worker:
    allow: ["openai:*"]
    rules:
      - scope: "openai:*"
        guards: {models: [whisper-1, gpt-4o-mini], max_tokens: 100}
        budget: {tokens: 50, window: day}
"""


def test_sdk_uploads_reach_openai_unchanged_under_the_model_guard(pki, https_upstream, sidecar_factory, tmp_path):
    """A transcription is a multipart upload: the form reaches OpenAI byte for byte with the real key, the
    model guard reads its `model` field, the token budget does not count the audio's bytes as prompt, and
    a form another parser could read differently (`model` twice) is refused before anything is sent."""
    up = https_upstream
    up.routes["/v1/audio/transcriptions"] = lambda h, rec: up.send_json(h, 200, {"text": "hello", "usage": {"type": "duration", "seconds": 2}})
    policy = tmp_path / "policy.yaml"
    policy.write_text(UPLOAD_POLICY)
    s = sidecar_factory(live_config(pki, up, extra=f"policy: {{file: \"{policy}\"}}\n"), env=LIVE_ENV)
    token = s.new_token(role="worker")
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=token, max_retries=0)
    audio = b"RIFF" + os.urandom(40_000)  # 10 000 "tokens" at four bytes each: far past the 50-token budget
    for _ in range(3):
        assert client.audio.transcriptions.create(model="whisper-1", file=("memo.wav", audio, "audio/wav"), language="en").text == "hello"
    rec = up.requests[-1]
    assert rec.path == "/v1/audio/transcriptions" and rec.header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    assert rec.header("Content-Type").startswith("multipart/form-data; boundary=") and audio in rec.body
    with pytest.raises(openai.PermissionDeniedError):  # the model guard reads the form's model
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("memo.wav", audio, "audio/wav"))
    sent = len(up.requests)
    boundary = "xYzBoundary42"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--{boundary}--\r\n")
    r = httpx.post(f"{s.proxy_url}/openai/v1/audio/transcriptions", content=form.encode(),
                   headers={"Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 400 and r.json()["code"] == "ambiguous_parameter", r.text
    r = httpx.post(f"{s.proxy_url}/openai/v1/audio/transcriptions", json={"model": "whisper-1"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type", r.text
    assert len(up.requests) == sent


def test_an_approved_upload_passes_when_the_sdk_repeats_it_under_a_new_boundary(pki, https_upstream, sidecar_factory, tmp_path):
    """The SDK draws a new multipart boundary for every request: an approval binds the form's parts, not
    its boundary, so the repeated upload is the approved call (and a different file is not)."""
    up = https_upstream
    up.routes["/v1/audio/transcriptions"] = lambda h, rec: up.send_json(h, 200, {"text": "hello"})
    policy = tmp_path / "policy.yaml"
    policy.write_text("""version: 1
roles:
  worker:
    allow: ["openai:*"]
    rules:
      - scope: "openai:transcriptions"
        approval: {required: true, hold: 0s}
""")
    s = sidecar_factory(live_config(pki, up, extra=f"policy: {{file: \"{policy}\"}}\n"), env=LIVE_ENV)
    client = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(role="worker"), max_retries=0)
    audio = ("memo.wav", b"RIFF" + bytes(500), "audio/wav")
    with pytest.raises(openai.PermissionDeniedError) as held:
        client.audio.transcriptions.create(model="whisper-1", file=audio)
    approval = held.value.body["approval_id"] if isinstance(held.value.body, dict) else held.value.response.json()["approval_id"]
    assert s.admin_request("POST", f"/api/approvals/{approval}/approve", {}).status_code == 200
    assert client.audio.transcriptions.create(model="whisper-1", file=audio).text == "hello"
    with pytest.raises(openai.PermissionDeniedError):  # another file is another call
        client.audio.transcriptions.create(model="whisper-1", file=("memo.wav", b"RIFF" + bytes(501), "audio/wav"))
    assert len([r for r in up.requests if r.path == "/v1/audio/transcriptions"]) == 1
