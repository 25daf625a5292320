import NIOCore
import NIOHTTP1

/// The mock of the Responses API (`POST /v1/responses`): the response object, or — with `stream: true`
/// — its semantic event stream, as the official SDKs read it (`client.responses.create(stream=True)`,
/// `client.responses.stream(...)`): `response.created`, `response.in_progress`, the message item and
/// its text part opened, one `response.output_text.delta` per word, each closed again, then
/// `response.completed` carrying the whole response with its usage. Every event names its type twice
/// (the SSE `event:` line and the payload's `type`) and carries a `sequence_number` from 0; there is no
/// `[DONE]` sentinel (that is the chat completions stream's).
///
/// With function tools the mocked model calls one (`OpenAIAdapter+ToolMock`): a `function_call` output
/// item, streamed as `response.function_call_arguments.delta` events; after a `function_call_output` it
/// answers in text. `text.format` of type `json_schema` is answered with a value of the schema.
extension OpenAIAdapter {
    func mockResponses(_ json: JSONValue, seed: UInt64, model: String, promptTokens: Int, stream: Bool) -> UpstreamResponse {
        let items = json["input"]?.arrayValue ?? []
        let last = items.last
        let afterToolResult = last?["type"]?.stringValue == "function_call_output"
        let userText = json["input"]?.stringValue ?? Self.contentText(items.last { $0["role"]?.stringValue == "user" }?["content"])
        let ids = MockResponseIDs(response: "resp_mock\(Mock.hex(seed))", message: "msg_mock\(Mock.hex(seed))")
        if let call = Self.mockToolCall(Self.responsesFunctions(json), choice: json["tool_choice"], afterToolResult: afterToolResult, userText: userText, seed: seed) {
            return mockResponsesToolCall(call, ids: ids, model: model, promptTokens: promptTokens, stream: stream)
        }
        let text = afterToolResult ? Self.mockAnswer(toToolResult: last?["output"]?.stringValue ?? "") : "Mock response \(Mock.hex(seed).prefix(8))."
        let reply = Self.mockFormatted(text, format: json["text"]?["format"])
        let usage = Self.mockResponsesUsage(input: promptTokens, output: Self.tokenCount(reply))
        let done = Self.mockResponseObject(ids, model: model, status: "completed", output: [ids.messageItem(reply, status: "completed")], usage: usage)
        // A background response is answered queued; retrieving it (`stored_responses`) finds it completed.
        if json["background"]?.boolValue == true, !stream {
            return Mock.json(Self.mockResponseObject(ids, model: model, status: "queued", output: [], usage: nil))
        }
        guard stream else { return Mock.json(done) }
        return textEventStream(ids, model: model, reply: reply, done: done)
    }

    /// A text reply's event stream, from `response.created` to `response.completed` (`done`), the events
    /// numbered past `after` left out (a stored response's stream resumed with `starting_after`).
    private func textEventStream(_ ids: MockResponseIDs, model: String, reply: String, done: JSONValue, after: Int = -1) -> UpstreamResponse {
        var events = ResponsesEventWriter()
        let started = Self.mockResponseObject(ids, model: model, status: "in_progress", output: [], usage: nil)
        events.append("response.created", ["response": started])
        events.append("response.in_progress", ["response": started])
        events.append("response.output_item.added", ["output_index": 0, "item": ids.messageItem(nil, status: "in_progress")])
        let part: [String: JSONValue] = ["item_id": .string(ids.message), "output_index": 0, "content_index": 0]
        events.append("response.content_part.added", part.merging(["part": MockResponseIDs.text("")]) { $1 })
        for word in Self.streamPieces(reply) {
            events.append("response.output_text.delta", part.merging(["delta": .string(word), "logprobs": []]) { $1 })
        }
        events.append("response.output_text.done", part.merging(["text": .string(reply), "logprobs": []]) { $1 })
        events.append("response.content_part.done", part.merging(["part": MockResponseIDs.text(reply)]) { $1 })
        events.append("response.output_item.done", ["output_index": 0, "item": ids.messageItem(reply, status: "completed")])
        events.append("response.completed", ["response": done])
        let chunks = Array(events.chunks.dropFirst(max(0, after + 1)))
        return UpstreamResponse(status: .ok, headers: Mock.eventStreamHeaders, body: .chunks(chunks, delay: mockStreamDelay))
    }

    /// A response whose one output is a function call, or its event stream.
    private func mockResponsesToolCall(_ call: MockToolCall, ids: MockResponseIDs, model: String, promptTokens: Int, stream: Bool) -> UpstreamResponse {
        let usage = Self.mockResponsesUsage(input: promptTokens, output: Self.tokenCount(call.arguments))
        let itemID = "fc_mock" + ids.response.dropFirst("resp_mock".count)
        func item(_ arguments: String, status: String) -> JSONValue {
            [
                "type": "function_call", "id": .string(itemID), "call_id": .string(call.id), "name": .string(call.name),
                "arguments": .string(arguments), "status": .string(status),
            ]
        }
        let done = Self.mockResponseObject(ids, model: model, status: "completed", output: [item(call.arguments, status: "completed")], usage: usage)
        guard stream else { return Mock.json(done) }
        var events = ResponsesEventWriter()
        let started = Self.mockResponseObject(ids, model: model, status: "in_progress", output: [], usage: nil)
        events.append("response.created", ["response": started])
        events.append("response.in_progress", ["response": started])
        events.append("response.output_item.added", ["output_index": 0, "item": item("", status: "in_progress")])
        for piece in Self.streamPieces(call.arguments) {
            events.append("response.function_call_arguments.delta", ["item_id": .string(itemID), "output_index": 0, "delta": .string(piece)])
        }
        events.append("response.function_call_arguments.done", ["item_id": .string(itemID), "output_index": 0, "arguments": .string(call.arguments)])
        events.append("response.output_item.done", ["output_index": 0, "item": item(call.arguments, status: "completed")])
        events.append("response.completed", ["response": done])
        return UpstreamResponse(status: .ok, headers: Mock.eventStreamHeaders, body: .chunks(events.chunks, delay: mockStreamDelay))
    }

    /// A stored response, by its id: retrieved (completed), deleted, cancelled, or its input items (none kept).
    func mockStoredResponse(_ call: ToolCall) -> UpstreamResponse {
        guard case .openai(let p) = call.parameters, let id = p.storedResponse else { return Mock.openAIError("mock: no response id") }
        let suffix = id.dropFirst("resp_".count)
        let ids = MockResponseIDs(response: id, message: "msg_" + suffix)
        if call.request.path.hasSuffix("/input_items") {
            return Mock.json(["object": "list", "data": [], "first_id": nil, "last_id": nil, "has_more": false])
        }
        if call.request.method == .DELETE { return Mock.json(["id": .string(id), "object": "response", "deleted": true]) }
        let cancelled = call.request.path.hasSuffix("/cancel")
        let reply = "Mock response \(suffix.prefix(8))."
        let output: [JSONValue] = cancelled ? [] : [ids.messageItem(reply, status: "completed")]
        let usage = cancelled ? JSONValue.null : Self.mockResponsesUsage(input: 1, output: Self.tokenCount(reply))
        let object = Self.mockResponseObject(ids, model: "gpt-4o-mini", status: cancelled ? "cancelled" : "completed", output: output, usage: usage)
        // `retrieve(id, stream=True, starting_after=n)`: the response's events again, after the n-th.
        if !cancelled, call.request.query.items.contains(where: { $0.name == "stream" && $0.value == "true" }) {
            let after = call.request.query.items.last { $0.name == "starting_after" }.flatMap { Int($0.value) } ?? -1
            return textEventStream(ids, model: "gpt-4o-mini", reply: reply, done: object, after: after)
        }
        return Mock.json(object)
    }

    /// A response's usage, as the Responses API reports it.
    static func mockResponsesUsage(input: Int, output: Int) -> JSONValue {
        [
            "input_tokens": .number(Double(input)), "output_tokens": .number(Double(output)), "total_tokens": .number(Double(input + output)),
            "input_tokens_details": ["cached_tokens": 0], "output_tokens_details": ["reasoning_tokens": 0],
        ]
    }

    /// The response object, as `POST /v1/responses` answers it and as the stream's lifecycle events carry it.
    static func mockResponseObject(_ ids: MockResponseIDs, model: String, status: String, output: [JSONValue], usage: JSONValue) -> JSONValue {
        let object: [String: JSONValue] = [
            "id": .string(ids.response), "object": "response", "created_at": 1_700_000_000, "status": .string(status),
            "model": .string(model), "error": nil, "incomplete_details": nil, "output": .array(output),
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "usage": usage,
        ]
        return .object(object)
    }

    /// A reply cut into the pieces a mock stream sends: its words, each but the last with its space.
    static func streamPieces(_ reply: String) -> [String] {
        var words = reply.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        for i in words.indices.dropLast() { words[i] += " " }
        return words
    }
}

/// The ids of one mocked response and the output items that name them.
struct MockResponseIDs {
    let response: String
    let message: String

    /// The assistant message item: its text part when the text is known, none while it is being opened.
    func messageItem(_ text: String?, status: String) -> JSONValue {
        [
            "type": "message", "id": .string(message), "status": .string(status), "role": "assistant",
            "content": .array(text.map { [Self.text($0)] } ?? []),
        ]
    }

    static func text(_ text: String) -> JSONValue { ["type": "output_text", "text": .string(text), "annotations": []] }
}

/// Server-sent events of the Responses API: `event: <type>` and its JSON payload, numbered in order.
private struct ResponsesEventWriter {
    private(set) var chunks: [ByteBuffer] = []

    mutating func append(_ type: String, _ members: [String: JSONValue]) {
        var payload = members
        payload["type"] = .string(type)
        payload["sequence_number"] = .number(Double(chunks.count))
        chunks.append(ByteBuffer(string: "event: \(type)\ndata: \(JSONValue.object(payload).serialized)\n\n"))
    }
}
