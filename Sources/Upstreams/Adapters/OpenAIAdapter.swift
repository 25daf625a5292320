import NIOCore
import NIOHTTP1

/// OpenAI: chat completions, embeddings and responses; image generation and speech (`images`,
/// `speech`: no token cap, mocked in `OpenAIAdapter+MediaMock`); moderations (`POST /v1/moderations`, free, what
/// guardrails call before or after a completion); traces (`POST /v1/traces/ingest`, where the Agents
/// SDK uploads its runs' traces by default); and the model list (`GET /v1/models`, `GET /v1/models/{id}`),
/// which SDKs call to check a key or pick a model — a read that spends nothing.
///
/// Stored responses (`stored_responses`: `GET`/`DELETE /v1/responses/{id}`, `POST …/{id}/cancel`, `GET
/// …/{id}/input_items` — how an agent polls a `background: true` response) and a new response's
/// `previous_response_id` name a response by its id. Every agent behind the sidecar shares one key, so
/// OpenAI cannot tell whose a response is: the call carries the id (`OpenAIParameters.storedResponse`)
/// and the sidecar lets an agent name only the responses it handed that agent.
///
/// Not brokered: the other objects stored under the key by id (files, batches, fine-tuning,
/// conversations), for the same reason.
///
/// The body is parsed once to read `model`, the token cap and `stream`; the original bytes go upstream
/// unchanged. The agent's own `Authorization` is removed by the header rules; the real key is injected.
public struct OpenAIAdapter: ToolAdapter {
    public let tool = Tool.openai
    /// Pause between mock SSE chunks, so mock streaming is observable as streaming.
    public let mockStreamDelay: Duration
    /// The organization and project the sidecar's key acts for, sent with it (none: the key's default).
    public let account: Account

    public init(mockStreamDelay: Duration = .milliseconds(5), account: Account = Account()) {
        self.mockStreamDelay = mockStreamDelay
        self.account = account
    }

    /// `OpenAI-Organization` and `OpenAI-Project`, as the operator configured them for the key. The
    /// agent's own never reach OpenAI (`HeaderName`: they select what the sidecar's key is billed to,
    /// and a placeholder an SDK picked up from its environment would make OpenAI refuse the key).
    public struct Account: Sendable, Hashable {
        public var organization: String?
        public var project: String?

        public init(organization: String? = nil, project: String? = nil) {
            self.organization = organization
            self.project = project
        }

        /// An organization or project id as OpenAI issues them (`org-…`, `proj_…`): a header value that
        /// needs no quoting and cannot split a field.
        public static func isID(_ value: String) -> Bool {
            !value.isEmpty && value.utf8.count <= 128
                && value.utf8.allSatisfy { b in
                    (b >= 0x30 && b <= 0x39) || (b | 0x20 >= 0x61 && b | 0x20 <= 0x7A) || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
                }
        }
    }

    static let actionByPath: [String: String] = [
        "/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings", "/v1/responses": "responses",
        "/v1/moderations": "moderations", "/v1/traces/ingest": "traces", "/v1/images/generations": "images", "/v1/audio/speech": "speech",
        "/v1/audio/transcriptions": "transcriptions", "/v1/audio/translations": "translations", "/v1/images/edits": "image_edits",
        "/v1/images/variations": "image_variations",
    ]
    /// Actions whose body is a file upload (`multipart/form-data`), read by `MultipartForm`.
    static let uploadActions: Set<String> = ["transcriptions", "translations", "image_edits", "image_variations"]
    /// The form fields an upload's policy reads (the mock reads the others it answers from).
    static let uploadFields: Set<String> = ["model", "stream"]
    static let pathByAction: [String: String] = Dictionary(uniqueKeysWithValues: actionByPath.map { ($1, $0) })

    /// Actions OpenAI bills no tokens for and whose answers carry no usage: no guard, token budget or
    /// run reservation reads them (`Pipeline.policyParameters`), and they are never cached.
    public static func spendsNoTokens(_ action: String) -> Bool {
        switch action {
        case "models", "moderations", "traces", "stored_responses": return true
        default: return false
        }
    }

    /// `/v1/models` (nil inside: the list) or `/v1/models/{id}` (the id); nil for any other path.
    static func modelsPath(_ path: String) -> String?? {
        let prefix = "/v1/models"
        guard path.hasPrefix(prefix) else { return nil }
        let rest = path.utf8.dropFirst(prefix.utf8.count)
        if rest.isEmpty || rest.elementsEqual("/".utf8) { return .some(nil) }
        guard rest.first == UInt8(ascii: "/") else { return nil }
        let id = Substring(rest.dropFirst())
        return Self.isModelID(id) ? .some(String(id)) : nil
    }

    /// `/v1/responses/{id}` and what follows the id (`""`, `"/cancel"`, `"/input_items"`); nil for any other
    /// path, and for an id that is not one (`/v1/responses/..%2Ffiles` never reaches OpenAI).
    static func storedResponsePath(_ path: String) -> (id: String, rest: Substring)? {
        let prefix = "/v1/responses/"
        guard path.hasPrefix(prefix) else { return nil }
        let tail = path.dropFirst(prefix.count)
        let id = tail.prefix { $0 != "/" }
        let rest = tail.dropFirst(id.count)
        guard Self.isResponseID(id), ["", "/cancel", "/input_items"].contains(rest) else { return nil }
        return (String(id), rest)
    }

    /// A response id as OpenAI issues them (`resp_` and letters, digits, `_` or `-`).
    static func isResponseID(_ id: Substring) -> Bool {
        id.hasPrefix("resp_") && id.utf8.count > 5 && PathSegment.isID(id, extra: responseIDExtra, maxBytes: 128)
    }
    private static let responseIDExtra = Array("_-".utf8)

    /// A call on a stored response: it spends nothing and is guarded by nothing but its owner (the
    /// pipeline's check) — a retrieval streams (`?stream=true`) as the answer says, not as a guard reads.
    private func interpretStoredResponse(_ request: ToolRequest, id: String, rest: Substring) throws(ToolRequestError) -> ToolCall {
        let allowed: [HTTPMethod] =
            switch rest {
            case "/cancel": [.POST]
            case "/input_items": [.GET]
            default: [.GET, .DELETE]
            }
        guard allowed.contains(request.method) else {
            throw .unknownAction("openai stored responses: GET or DELETE /v1/responses/{id}, POST /v1/responses/{id}/cancel, GET /v1/responses/{id}/input_items")
        }
        var params = OpenAIParameters(model: nil, maxTokens: nil, stream: false, temperature: nil, estimatedInputTokens: 0)
        params.storedResponse = id
        return ToolCall(tool: tool, action: "stored_responses", request: request, parameters: .openai(params))
    }

    /// A model id as a path segment (`PathSegment`; fine-tuned ids hold ':', '_' and '.').
    static func isModelID(_ id: Substring) -> Bool { PathSegment.isID(id, extra: modelIDExtra, maxBytes: 256) }
    private static let modelIDExtra = Array("._:-".utf8)

    /// The members of a request body that `interpret` reads.
    static let guardedMembers = ["model"] + tokenCaps + choiceCounts + ["stream", "temperature", "previous_response_id", "conversation"]
    /// How many outputs one request asks for, each with the full token cap: chat's `n` choices, the legacy
    /// endpoint's `best_of` candidates (of which `n` are returned).
    static let choiceCounts = ["n", "best_of"]
    static let tokenCaps = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
    /// Actions whose output is not tokens under a cap — a vector, an image, audio: a `max_tokens` guard
    /// has nothing to judge (it would refuse every call as "max_tokens is required" under `openai:*`) and
    /// the budget reserves their input only, settled to the answer's `usage` when it has one.
    static let withoutTokenCap = Set(["embeddings", "images", "speech"]).union(uploadActions)

    public func interpret(_ request: ToolRequest) throws(ToolRequestError) -> ToolCall {
        var request = request
        // SDKs configured with base_url ".../openai" (no /v1) still reach the same endpoints.
        if !request.path.hasPrefix("/v1/") { request.path = "/v1" + request.path }
        if let model = Self.modelsPath(request.path) {
            guard request.method == .GET || request.method == .HEAD else { throw .unknownAction("openai models must be GET") }
            // Nothing is reserved or guarded: no tokens, no model used (the policy reads no parameters).
            let params = OpenAIParameters(model: model, maxTokens: nil, stream: false, temperature: nil, estimatedInputTokens: 0)
            return ToolCall(tool: tool, action: "models", request: request, parameters: .openai(params))
        }
        if let (id, rest) = Self.storedResponsePath(request.path) {
            return try interpretStoredResponse(request, id: id, rest: rest)
        }
        guard let action = Self.actionByPath[request.path] else {
            throw .unknownAction(
                "openai supports POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/moderations, /v1/images/generations, /v1/images/edits, /v1/images/variations, /v1/audio/speech, /v1/audio/transcriptions, /v1/audio/translations, /v1/traces/ingest, GET /v1/models and the stored responses /v1/responses/{id}")
        }
        guard request.method == .POST else { throw .unknownAction("openai \(action) must be POST") }
        if Self.uploadActions.contains(action) { return try interpretUpload(request, action: action) }
        let expected = "openai \(action) needs a JSON object body"
        guard let body = request.body else { throw .invalidBody(expected) }
        // Only the members a guard or the budget reads are built; the rest (the messages) is checked as
        // strictly, duplicate names at any depth included, but not materialised.
        let found: [String: JSONValue]?
        do { found = try JSONValue.parseMembers(body.readableBytesView, Self.guardedMembers) } catch { throw .body(error, expected: expected) }
        guard let json = found else { throw .invalidBody(expected) }
        let model = json["model"]
        if let model, model.stringValue == nil { throw .invalidParameter("model must be a string") }
        // Several caps may be named (`max_tokens` beside `max_completion_tokens`): the guard and the budget
        // take the largest, so no reading of them by the upstream can exceed what was allowed.
        var maxTokens: Int?
        for key in Self.tokenCaps {
            guard let v = json[key], v != .null else { continue }
            guard let n = v.intValue, n >= 0 else { throw .invalidParameter("\(key) must be a non-negative integer") }
            maxTokens = max(maxTokens ?? 0, n)
        }
        // The cap holds per choice upstream: with `n: 10` a `max_tokens: 100` call may generate 1 000 tokens.
        // The guard and the budget read what the whole call may generate, as the upstream will spend it.
        var choices = 1
        for key in Self.choiceCounts {
            guard let v = json[key], v != .null else { continue }
            guard let c = v.intValue, c >= 1 else { throw .invalidParameter("\(key) must be a positive integer") }
            choices = max(choices, c)
        }
        // Pinned at the bound any one count has: Int.max here went on into the budget's cost (+ input),
        // and one request with `max_tokens: 8e15, n: 2000` trapped the process.
        if let cap = maxTokens, choices > 1 {
            let (total, overflow) = cap.multipliedReportingOverflow(by: choices)
            maxTokens = overflow ? JSONValue.integerBound : min(total, JSONValue.integerBound)
        }
        // An embedding produces no output tokens: nothing for a max_tokens guard to cap (it would refuse
        // every embedding as "max_tokens is required" under `openai:*`) and nothing to reserve but the input.
        // An image or speech is not generated tokens under a cap either (`n` there counts images).
        let uncapped = Self.withoutTokenCap.contains(action)
        if uncapped { maxTokens = 0 }
        let stream = json["stream"]?.boolValue ?? false
        if let s = json["stream"], s != .null, s.boolValue == nil { throw .invalidParameter("stream must be a boolean") }
        let temperature = json["temperature"]?.doubleValue
        var params = OpenAIParameters(
            model: model?.stringValue, maxTokens: maxTokens, stream: stream, temperature: temperature,
            estimatedInputTokens: max(1, body.readableBytes / 4))
        params.choices = uncapped ? 1 : choices
        if action == "responses", let previous = json["previous_response_id"], previous != .null {
            guard let id = previous.stringValue, Self.isResponseID(Substring(id)) else {
                throw .invalidParameter("previous_response_id must be a response id (resp_…)")
            }
            params.storedResponse = id
        }
        // A conversation is an object stored under the shared key that no answer through the sidecar hands
        // out (the Conversations API is not brokered): naming one would read whatever it holds.
        if action == "responses", let conversation = json["conversation"], conversation != .null {
            throw .invalidParameter("conversation: conversations are not brokered (stored under the key every agent shares); continue with previous_response_id or send the input")
        }
        return ToolCall(tool: tool, action: action, request: request, parameters: .openai(params))
    }

    /// A file upload (a transcription, an image edit): its `model` and `stream` read from the form as a
    /// guard needs them; no token cap (the output is text or images of the file), the input estimated
    /// from the text fields only — an audio file's bytes are not prompt tokens.
    private func interpretUpload(_ request: ToolRequest, action: String) throws(ToolRequestError) -> ToolCall {
        let form = try Self.uploadForm(request, names: Self.uploadFields)
        var stream = false
        if let s = form.fields["stream"] {
            guard let b = ["true": true, "false": false][s] else { throw .invalidParameter("stream must be true or false") }
            stream = b
        }
        var params = OpenAIParameters(
            model: form.fields["model"], maxTokens: 0, stream: stream, temperature: nil, estimatedInputTokens: max(1, form.textBytes / 4))
        params.choices = 1
        return ToolCall(tool: tool, action: action, request: request, parameters: .openai(params))
    }

    /// The upload's form, read strictly (`MultipartForm`): another content type is 415, a field given twice
    /// is ambiguous, anything else malformed is an invalid body.
    static func uploadForm(_ request: ToolRequest, names: Set<String>) throws(ToolRequestError) -> MultipartForm {
        let types = request.headers["content-type"]
        let expected = "send multipart/form-data (a file upload)"
        let boundary: String?
        do { boundary = types.count == 1 ? try MultipartForm.boundary(ofContentType: types[0]) : nil } catch { throw .invalidBody(error.reason) }
        guard let boundary else { throw .unsupportedMediaType(expected) }
        guard let body = request.body else { throw .invalidBody(expected) }
        do { return try MultipartForm.parse(body, boundary: boundary, names: names) } catch {
            throw error.duplicate ? .ambiguousParameter(error.reason) : .invalidBody("\(expected) (\(error.reason))")
        }
    }

    /// A streamed chat body that asks for usage in its last chunk (`stream_options.include_usage`), so a
    /// budget settles from the real count; nil when it asks already (or is not a JSON object). Every
    /// other byte is sent as the agent wrote it — `true` is spliced in where it belongs, at either
    /// level, and nothing is re-serialized: a re-serialization reads numbers as doubles, and `"seed":
    /// 12345678901234567` would have reached OpenAI as `1.2345678901234568e+16`.
    public static func includingUsage(_ body: ByteBuffer) -> ByteBuffer? {
        let view = body.readableBytesView
        guard let (options, at) = member("stream_options", of: view) else { return nil }
        var out = ByteBuffer()
        out.reserveCapacity(view.count + 40)
        guard let at else {
            inserting(#""stream_options":{"include_usage":true}"#, into: view, out: &out)
            return out
        }
        out.writeBytes(view[..<at.lowerBound])
        let value = view[at]
        if case .object? = options, let (usage, usageAt) = member("include_usage", of: value) {
            if usage == true { return nil }
            if let usageAt {
                out.writeBytes(value[..<usageAt.lowerBound])
                out.writeStaticString("true")
                out.writeBytes(value[usageAt.upperBound...])
            } else {
                inserting(#""include_usage":true"#, into: value, out: &out)
            }
        } else {
            out.writeStaticString(#"{"include_usage":true}"#)  // null or not an object: replaced
        }
        out.writeBytes(view[at.upperBound...])
        return out
    }

    /// The member `name` of the JSON object `view` (read strictly) and where its value's bytes are; nil
    /// when `view` is not a JSON object.
    private static func member(_ name: String, of view: ByteBufferView) -> (JSONValue?, Range<ByteBufferView.Index>?)? {
        let read = try? JSONValue.reading(view) { reader throws(JSONParseError) in
            reader.keepsRanges = true
            return (try reader.members([name]), reader.ranges[name])
        }
        guard let read, let found = read.0 else { return nil }
        return (found[name], read.1.map { (view.startIndex + $0.lowerBound)..<(view.startIndex + $0.upperBound) })
    }

    /// `object` with `member` written first after its `{` (a comma after it unless the object is empty).
    private static func inserting(_ member: StaticString, into object: ByteBufferView, out: inout ByteBuffer) {
        guard let open = object.firstIndex(of: UInt8(ascii: "{")) else {
            out.writeBytes(object)
            return
        }
        let empty = object[(open + 1)...].first { !JSONReader.isWhitespace($0) } == UInt8(ascii: "}")
        out.writeBytes(object[...open])
        out.writeStaticString(member)
        if !empty { out.writeStaticString(",") }
        out.writeBytes(object[(open + 1)...])
    }

    public func compatRequest(action: String, params: JSONValue) throws(ToolRequestError) -> ToolRequest {
        if action == "models" {
            guard let model = params["model"] else { return ToolRequest(method: .GET, path: "/v1/models") }
            guard let id = model.stringValue, Self.isModelID(Substring(id)) else {
                throw .invalidParameter("params.model must be a model id")
            }
            return ToolRequest(method: .GET, path: "/v1/models/" + id)
        }
        guard let path = Self.pathByAction[action] else {
            throw .unknownAction("openai actions are chat, completions, embeddings, responses, moderations, images, speech, traces, models")
        }
        guard !Self.uploadActions.contains(action) else {
            throw .unknownAction("openai \(action) uploads a file: send it as multipart/form-data to \(path) through the proxy")
        }
        guard case .object(var object) = params else { throw .invalidBody("params must be an object") }
        if action == "chat", object["messages"] == nil, let prompt = object["prompt"]?.stringValue {
            object["messages"] = [["role": "user", "content": .string(prompt)]]
            object["prompt"] = nil
        }
        if action == "chat", object["model"] == nil { object["model"] = "gpt-4o-mini" }
        if action == "completions", object["model"] == nil { object["model"] = "gpt-3.5-turbo-instruct" }
        let text = JSONValue.object(object).serialized
        return ToolRequest(
            method: .POST, path: path, headers: ["Content-Type": "application/json"], body: ByteBuffer(string: text))
    }

    public func authorize(_ request: inout UpstreamRequest, with credential: Credential) {
        request.headers.replaceOrAdd(name: "Authorization", value: "Bearer \(credential.reveal())")
        if let organization = account.organization { request.headers.replaceOrAdd(name: "OpenAI-Organization", value: organization) }
        if let project = account.project { request.headers.replaceOrAdd(name: "OpenAI-Project", value: project) }
    }

    public func traits(of call: ToolCall) -> CallTraits {
        guard case .openai(let p) = call.parameters else { return .init(idempotent: false, cacheable: false, sideEffecting: false) }
        // A completion is not idempotent in content, but repeating a failed one has no side effect.
        // A trace batch sent twice is two batches: the SDK retries it itself.
        if Self.spendsNoTokens(call.action) { return CallTraits(idempotent: call.action != "traces", cacheable: false, sideEffecting: false) }
        return CallTraits(idempotent: true, cacheable: !p.stream && p.temperature == 0, sideEffecting: false)
    }

    // MARK: Mock

    /// The mock's models, as OpenAI lists them.
    static let mockModels = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini", "text-embedding-3-small"]

    static func mockModel(_ id: String) -> JSONValue {
        ["id": .string(id), "object": "model", "created": 1_700_000_000, "owned_by": "system"]
    }

    public func mockResponse(for call: ToolCall) -> UpstreamResponse {
        if call.action == "models", case .openai(let p) = call.parameters {
            guard let id = p.model else { return Mock.json(["object": "list", "data": .array(Self.mockModels.map(Self.mockModel))]) }
            guard Self.mockModels.contains(id) else {
                return Mock.json(
                    ["error": ["message": .string("The model '\(id.prefix(64))' does not exist"), "type": "invalid_request_error",
                               "param": "model", "code": "model_not_found"]], status: .notFound)
            }
            return Mock.json(Self.mockModel(id))
        }
        if call.action == "stored_responses" { return mockStoredResponse(call) }
        if Self.uploadActions.contains(call.action) { return mockUpload(call) }
        guard let json = Mock.bodyJSON(call), case .openai(let p) = call.parameters else {
            return Mock.openAIError("mock: body is not JSON")
        }
        let seed = Mock.hash(call.request.body?.readableBytesView ?? ByteBuffer().readableBytesView)
        let model = p.model ?? "gpt-4o-mini"
        let prompt = p.estimatedInputTokens
        switch call.action {
        case "chat":
            let id = "chatcmpl-mock-\(Mock.hex(seed))"
            let includeUsage = json["stream_options"]?["include_usage"]?.boolValue ?? false
            let last = json["messages"]?.arrayValue?.last
            let afterToolResult = last?["role"]?.stringValue == "tool"
            let call = Self.mockToolCall(
                Self.chatFunctions(json), choice: json["tool_choice"], afterToolResult: afterToolResult, userText: Self.lastUserText(json),
                seed: seed)
            let reply: String
            var message: [String: JSONValue] = ["role": "assistant", "refusal": nil, "annotations": []]
            if let call {
                reply = call.arguments
                message["content"] = .null
                message["tool_calls"] = [["id": .string(call.id), "type": "function", "function": ["name": .string(call.name), "arguments": .string(call.arguments)]]]
            } else {
                reply = Self.mockFormatted(
                    afterToolResult ? Self.mockAnswer(toToolResult: Self.contentText(last?["content"])) : Self.mockReply(to: json),
                    format: json["response_format"])
                message["content"] = .string(reply)
            }
            let completion = min(Self.tokenCount(reply), p.maxTokens ?? Int.max)
            if p.stream {
                return streamResponse(
                    id: id, model: model, reply: reply, toolCall: call, promptTokens: prompt, completionTokens: completion, includeUsage: includeUsage)
            }
            return Mock.json([
                "id": .string(id), "object": "chat.completion", "created": 1_700_000_000,
                "model": .string(model), "system_fingerprint": "fp_mock",
                "choices": [["index": 0, "message": .object(message), "logprobs": nil, "finish_reason": call == nil ? "stop" : "tool_calls"]],
                "usage": [
                    "prompt_tokens": .number(Double(prompt)), "completion_tokens": .number(Double(completion)),
                    "total_tokens": .number(Double(prompt + completion)),
                    "prompt_tokens_details": ["cached_tokens": 0, "audio_tokens": 0],
                    "completion_tokens_details": [
                        "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
                    ],
                ],
                "service_tier": "default",
            ])
        case "completions":
            return mockCompletion(json, seed: seed, model: model, promptTokens: prompt, maxTokens: p.maxTokens, stream: p.stream)
        case "embeddings":
            let inputs: [JSONValue]
            switch json["input"] {
            case .array(let a)?: inputs = a
            case let v?: inputs = [v]
            case nil: return Mock.openAIError("mock: input is required")
            }
            let base64 = json["encoding_format"]?.stringValue == "base64"
            var data: [JSONValue] = []
            for (i, input) in inputs.enumerated() {
                let vector = Self.mockEmbedding(seed: Mock.hash(input.serialized.utf8), dimensions: 8)
                let embedding: JSONValue = base64 ? .string(Self.float32Base64(vector)) : .array(vector.map { .number(Double($0)) })
                data.append(["object": "embedding", "index": .number(Double(i)), "embedding": embedding])
            }
            return Mock.json([
                "object": "list", "data": .array(data), "model": .string(model),
                "usage": ["prompt_tokens": .number(Double(prompt)), "total_tokens": .number(Double(prompt))],
            ])
        case "moderations":
            return Self.mockModeration(json, seed: seed, model: p.model)
        case "images":
            return Self.mockImages(json, seed: seed)
        case "speech":
            return Self.mockSpeech(json)
        case "traces":
            // Taken, as the real endpoint takes a batch: nothing to say.
            return UpstreamResponse(status: .noContent, headers: HTTPHeaders(), body: .empty)
        default:  // responses
            return mockResponses(json, seed: seed, model: model, promptTokens: prompt, stream: p.stream)
        }
    }

    /// The chat stream: the reply's words as content deltas, or — for a tool call — the call opened with
    /// its id and name, then its arguments in pieces, as OpenAI streams them (`delta.tool_calls[0]`).
    private func streamResponse(
        id: String, model: String, reply: String, toolCall: MockToolCall?, promptTokens: Int, completionTokens: Int, includeUsage: Bool
    ) -> UpstreamResponse {
        func chunk(_ delta: JSONValue, finish: JSONValue = nil, usage: JSONValue = nil, choices: Bool = true) -> ByteBuffer {
            var obj: [String: JSONValue] = [
                "id": .string(id), "object": "chat.completion.chunk", "created": 1_700_000_000, "model": .string(model),
                "system_fingerprint": "fp_mock",
                "choices": choices ? [["index": 0, "delta": delta, "logprobs": nil, "finish_reason": finish]] : [],
            ]
            if usage != .null { obj["usage"] = usage }
            return ByteBuffer(string: "data: \(JSONValue.object(obj).serialized)\n\n")
        }
        var chunks: [ByteBuffer]
        if let call = toolCall {
            chunks = [chunk([
                "role": "assistant", "content": nil,
                "tool_calls": [["index": 0, "id": .string(call.id), "type": "function", "function": ["name": .string(call.name), "arguments": ""]]],
            ])]
            for piece in Self.streamPieces(reply) {
                chunks.append(chunk(["tool_calls": [["index": 0, "function": ["arguments": .string(piece)]]]]))
            }
            chunks.append(chunk([:], finish: "tool_calls"))
        } else {
            chunks = [chunk(["role": "assistant", "content": ""])]
            for w in Self.streamPieces(reply) { chunks.append(chunk(["content": .string(w)])) }
            chunks.append(chunk([:], finish: "stop"))
        }
        if includeUsage {
            chunks.append(chunk([:], usage: [
                "prompt_tokens": .number(Double(promptTokens)), "completion_tokens": .number(Double(completionTokens)),
                "total_tokens": .number(Double(promptTokens + completionTokens)),
            ], choices: false))
        }
        chunks.append(ByteBuffer(string: "data: [DONE]\n\n"))
        return UpstreamResponse(status: .ok, headers: Mock.eventStreamHeaders, body: .chunks(chunks, delay: mockStreamDelay))
    }

    static func mockReply(to json: JSONValue) -> String {
        "This is a mock reply from the agent sidecar to: \(lastUserText(json).prefix(40))"
    }

    /// The text of the last user message of a chat request (its content string, or its text parts).
    static func lastUserText(_ json: JSONValue) -> String {
        let last = (json["messages"]?.arrayValue ?? []).last { $0["role"]?.stringValue == "user" }
        return contentText(last?["content"])
    }

    /// A message's content as text: the string, or its parts' texts joined.
    static func contentText(_ content: JSONValue?) -> String {
        if let s = content?.stringValue { return s }
        return (content?.arrayValue ?? []).compactMap { $0["text"]?.stringValue }.joined(separator: " ")
    }

    static func tokenCount(_ s: String) -> Int { max(1, s.split(separator: " ").count) }

    static func mockEmbedding(seed: UInt64, dimensions: Int) -> [Float] {
        var state = seed | 1
        return (0..<dimensions).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Float(Int(state % 2001) - 1000) / 1000
        }
    }

    static func float32Base64(_ v: [Float]) -> String {
        var bytes: [UInt8] = []
        for f in v { withUnsafeBytes(of: f.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
        return Base64.encode(bytes)
    }
}
