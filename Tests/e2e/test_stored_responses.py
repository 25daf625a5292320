"""Stored OpenAI responses through the official `openai` package: every agent behind the sidecar shares one
key, so the sidecar records which agent each response id was handed to, and lets an agent retrieve, cancel,
delete, list the input items of, or continue from (`previous_response_id`) only its own — with one
sidecar (embedded store, across a restart) and across a fleet on one Redis."""

import itertools
import json
import threading
import time

import openai
import pytest
import requests

from conftest import LIVE_ENV, live_config, metric, start_chunked


def response_object(rid, status):
    # `id` first, as OpenAI writes it.
    return {"id": rid, "object": "response", "created_at": 1700000000, "status": status, "model": "gpt-4.1-mini",
            "error": None, "incomplete_details": None, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "output": [] if status in ("queued", "in_progress", "cancelled") else [
                {"type": "message", "id": "msg_" + rid[5:], "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "stored answer", "annotations": []}]}],
            "usage": None}


def responses_upstream(up, hold: threading.Event):
    """`POST /v1/responses` answers a new id each time — its JSON sent in two pieces, the id in the first; a
    stream sends `response.created` and waits for `hold` before it completes. The by-id endpoints answer
    for any id (OpenAI would: the key owns them all)."""
    counter = itertools.count(1)

    def create(h, rec):
        body = json.loads(rec.body)
        rid = f"resp_{next(counter):04d}a1b2c3"
        if body.get("stream"):
            send, end = start_chunked(h)
            created = {"type": "response.created", "sequence_number": 0, "response": response_object(rid, "in_progress")}
            send(f"event: response.created\ndata: {json.dumps(created)}\n\n")
            hold.wait(10)
            done = {"type": "response.completed", "sequence_number": 1, "response": response_object(rid, "completed")}
            send(f"event: response.completed\ndata: {json.dumps(done)}\n\n")
            end()
            return
        text = json.dumps(response_object(rid, "queued" if body.get("background") else "completed"))
        send, end = start_chunked(h, "application/json")
        send(text[:24])
        time.sleep(0.05)
        send(text[24:])
        end()

    def by_id(h, rec):
        path = rec.path.split("?")[0]
        rid = path.split("/")[3]
        if path.endswith("/input_items"):
            up.send_json(h, 200, {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False})
        elif rec.method == "DELETE":
            up.send_json(h, 200, {"id": rid, "object": "response", "deleted": True})
        else:
            up.send_json(h, 200, response_object(rid, "cancelled" if path.endswith("/cancel") else "completed"))

    up.routes["/v1/responses"] = create
    up.routes["/v1/responses/"] = by_id


def upstream_calls_naming(up, rid):
    return [r for r in up.requests if rid in r.path or rid.encode() in r.body]


def assert_not_found(call):
    with pytest.raises(openai.NotFoundError) as e:
        call()
    assert e.value.body["code"] == "response_not_found"
    return e.value


def test_an_agent_uses_only_the_responses_it_was_handed_and_they_survive_a_restart(pki, https_upstream, sidecar_factory, tmp_path):
    hold = threading.Event()
    responses_upstream(https_upstream, hold)
    env = {**LIVE_ENV, "SIDECAR_STATE_DIR": str(tmp_path / "state")}
    s = sidecar_factory(live_config(pki, https_upstream), env=env)
    ta, tb = s.new_token(ttl="30m"), s.new_token(ttl="30m")
    a = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=ta, max_retries=0, timeout=15)
    b = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=tb, max_retries=0, timeout=15)

    # A background response, polled at once: the id was recorded before the agent could read it.
    first = a.responses.create(model="gpt-4.1-mini", input="research this", background=True)
    assert first.status == "queued"
    assert a.responses.retrieve(first.id).status == "completed"
    got = https_upstream.requests[-1]
    assert got.method == "GET" and got.path == f"/v1/responses/{first.id}"
    assert got.header("Authorization") == "Bearer sk-REAL-0123456789abcdef"
    assert a.responses.input_items.list(first.id).data == []
    assert a.responses.cancel(first.id).status == "cancelled"
    follow = a.responses.create(model="gpt-4.1-mini", input="and then?", previous_response_id=first.id)
    assert json.loads(https_upstream.requests[-1].body)["previous_response_id"] == first.id

    # Another agent of the same sidecar (same key upstream) cannot name it, in any way; nothing is sent.
    before = len(upstream_calls_naming(https_upstream, first.id))
    err = assert_not_found(lambda: b.responses.retrieve(first.id))
    assert err.body["response_id"] == first.id
    assert_not_found(lambda: b.responses.cancel(first.id))
    assert_not_found(lambda: b.responses.delete(first.id))
    assert_not_found(lambda: b.responses.input_items.list(first.id))
    assert_not_found(lambda: b.responses.create(model="gpt-4.1-mini", input="x", previous_response_id=first.id))
    # A stored response the agent did not get from the sidecar (made with the key elsewhere, or guessed).
    assert_not_found(lambda: a.responses.retrieve("resp_0999a1b2c3"))
    assert len(upstream_calls_naming(https_upstream, first.id)) == before
    assert not upstream_calls_naming(https_upstream, "resp_0999a1b2c3")
    line = s.wait_for_log(lambda r: r.get("msg") == "access" and r.get("outcome") == "response_not_found")
    assert line["action"] == "stored_responses" and line["status"] == 404
    # Nor does a conversation: no answer through the sidecar hands one out.
    with pytest.raises(openai.BadRequestError) as e:
        a.responses.create(model="gpt-4.1-mini", input="x", conversation="conv_0001")
    assert e.value.body["code"] == "invalid_parameter" and not upstream_calls_naming(https_upstream, "conv_0001")
    # A path that is not a response id never reaches OpenAI.
    r = requests.get(f"{s.proxy_url}/openai/v1/responses/resp_a%2F..%2Ffiles", headers={"Authorization": f"Bearer {ta}"}, timeout=5)
    assert r.status_code == 400 and r.json()["code"] == "unknown_action"

    # A streamed response: its id is the agent's from the first event, while the stream is still open.
    stream = a.responses.create(model="gpt-4.1-mini", input="stream it", stream=True)
    streamed = None
    for event in stream:
        if event.type == "response.created":
            streamed = event.response.id
            assert a.responses.retrieve(streamed).id == streamed
            assert_not_found(lambda: b.responses.retrieve(streamed))
            hold.set()
    assert streamed is not None

    assert metric(requests.get(f"{s.admin_url}/metrics", timeout=5).text, "gateway_security_events_total", kind="response_not_owned") >= 7

    # After a restart the records are still there.
    assert s.stop() == 0
    s2 = sidecar_factory(live_config(pki, https_upstream), env=env)
    a2 = openai.OpenAI(base_url=f"{s2.proxy_url}/openai/v1", api_key=ta, max_retries=0, timeout=15)
    b2 = openai.OpenAI(base_url=f"{s2.proxy_url}/openai/v1", api_key=tb, max_retries=0, timeout=15)
    assert a2.responses.retrieve(follow.id).status == "completed"
    assert a2.responses.retrieve(streamed).status == "completed"
    assert_not_found(lambda: b2.responses.retrieve(follow.id))
    a2.responses.delete(first.id)


def test_a_role_without_stored_responses_cannot_read_them(sidecar_factory, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nroles:\n  writer: {allow: [\"openai:responses\"]}\n  developer: {allow: [\"*\"]}\n")
    s = sidecar_factory(f"version: 1\npolicy: {{file: \"{policy}\"}}\n", env={})
    a = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(role="writer"), max_retries=0)
    made = a.responses.create(model="gpt-4o-mini", input="hi", background=True)
    assert made.status == "queued"
    # With the scope (the mock): a background response's events streamed again, and resumed after the 3rd.
    b = openai.OpenAI(base_url=f"{s.proxy_url}/openai/v1", api_key=s.new_token(role="developer"), max_retries=0)
    mine = b.responses.create(model="gpt-4o-mini", input="hi", background=True)
    events = list(b.responses.retrieve(mine.id, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed" and events[-1].response.id == mine.id
    resumed = list(b.responses.retrieve(mine.id, stream=True, starting_after=3))
    assert [e.sequence_number for e in resumed] == [e.sequence_number for e in events][4:]
    with pytest.raises(openai.PermissionDeniedError) as e:
        a.responses.retrieve(made.id)
    assert e.value.body["code"] == "scope_denied" and "openai:stored_responses" in e.value.body["detail"]
