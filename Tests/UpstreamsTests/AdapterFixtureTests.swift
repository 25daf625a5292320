import Foundation
import NIOCore
import NIOHTTP1
import Testing

@testable import Upstreams

/// Adapters against recorded request/response fixtures: the real APIs' requests are interpreted into the
/// right action and parameters, and mock answers have the recorded real answers' shape.
@Suite("Adapters against recorded fixtures")
struct AdapterFixtureTests {
    static func fixture(_ name: String) throws -> ByteBuffer {
        let url = try #require(Bundle.module.url(forResource: name, withExtension: nil, subdirectory: "Fixtures"))
        return ByteBuffer(bytes: try Data(contentsOf: url))
    }

    static func json(_ name: String) throws -> JSONValue {
        let bytes = try fixture(name)
        return try #require(JSONValue.parse(bytes.readableBytesView))
    }

    /// Paths where `mock` lacks a field of `recorded` or has it with another JSON type.
    static func shapeMismatches(_ mock: JSONValue, _ recorded: JSONValue, path: String = "$") -> [String] {
        switch (mock, recorded) {
        case (.object(let m), .object(let r)):
            return r.keys.sorted().flatMap { key -> [String] in
                guard let mv = m[key] else { return ["\(path).\(key) missing"] }
                return shapeMismatches(mv, r[key]!, path: "\(path).\(key)")
            }
        case (.array(let m), .array(let r)):
            guard let rf = r.first else { return [] }
            guard let mf = m.first else { return ["\(path)[] empty"] }
            return shapeMismatches(mf, rf, path: "\(path)[0]")
        case (.null, _), (_, .null): return []
        case (.string, .string), (.number, .number), (.bool, .bool): return []
        default: return ["\(path) type differs"]
        }
    }

    static func mockBody(_ response: UpstreamResponse) throws -> JSONValue {
        let bytes = try #require(response.body.bufferedBytes)
        return try #require(JSONValue.parse(bytes.readableBytesView))
    }

    @Test func openAIChatRequestAndMockShape() throws {
        let adapter = OpenAIAdapter()
        let call = try adapter.interpret(
            ToolRequest(method: .POST, path: "/v1/chat/completions", body: try Self.fixture("openai_chat_request.json")))
        #expect(call.action == "chat")
        guard case .openai(let p) = call.parameters else { Issue.record("wrong parameters"); return }
        #expect(p.model == "gpt-4o-mini" && p.maxTokens == 256 && !p.stream && p.temperature == 0.2)
        let mock = try Self.mockBody(adapter.mockResponse(for: call))
        #expect(Self.shapeMismatches(mock, try Self.json("openai_chat_response.json")) == [])
    }

    @Test func openAIStreamingMockMatchesRecordedChunks() async throws {
        let adapter = OpenAIAdapter(mockStreamDelay: .zero)
        let body = ByteBuffer(string: #"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#)
        let call = try adapter.interpret(ToolRequest(method: .POST, path: "/chat/completions", body: body))
        #expect(call.request.path == "/v1/chat/completions")
        let response = adapter.mockResponse(for: call)
        #expect(response.headers.first(name: "content-type")?.hasPrefix("text/event-stream") == true)
        var chunks: [String] = []
        for try await chunk in response.body { chunks.append(String(buffer: chunk)) }
        #expect(chunks.count > 3)
        #expect(chunks.last == "data: [DONE]\n\n")
        let recorded = String(buffer: try Self.fixture("openai_chat_stream.txt"))
            .components(separatedBy: "\n\n").filter { $0.hasPrefix("data: {") }
            .compactMap { JSONValue.parse(Array($0.dropFirst(6).utf8)) }
        let mocked = chunks.filter { $0.hasPrefix("data: {") }.compactMap { JSONValue.parse(Array($0.dropFirst(6).dropLast(2).utf8)) }
        #expect(Self.shapeMismatches(mocked[0], recorded[0]) == [])
        #expect(Self.shapeMismatches(mocked[1], recorded[1]) == [])
        #expect(Self.shapeMismatches(mocked.last!, recorded.last!) == [], "usage chunk")
    }

    /// The legacy completions endpoint is its own action, guarded like chat (model, max_tokens, stream).
    @Test func openAILegacyCompletions() throws {
        let body = ByteBuffer(string: #"{"model":"gpt-3.5-turbo-instruct","prompt":"Say hi","max_tokens":5,"stream":true}"#)
        let call = try OpenAIAdapter().interpret(ToolRequest(method: .POST, path: "/v1/completions", body: body))
        #expect(call.action == "completions")
        guard case .openai(let p) = call.parameters else { Issue.record("not openai parameters"); return }
        #expect(p.model == "gpt-3.5-turbo-instruct" && p.maxTokens == 5 && p.stream)
        #expect(throws: ToolRequestError.self) { try OpenAIAdapter().interpret(ToolRequest(method: .GET, path: "/v1/completions")) }
    }

    /// `n` choices (and legacy `best_of` candidates) each get the cap upstream: the call's cap is the product.
    @Test(arguments: [
        (#"{"model":"m","max_tokens":100,"n":3}"#, 300 as Int?),
        (#"{"model":"m","max_tokens":100,"n":1}"#, 100),
        (#"{"model":"m","max_tokens":10,"n":2,"best_of":5}"#, 50),
        (#"{"model":"m","max_completion_tokens":7,"n":null}"#, 7),
        (#"{"model":"m","n":4}"#, nil),
        (#"{"model":"m","max_tokens":8000000000000000,"n":2000}"#, JSONValue.integerBound),
    ])
    func openAIChoicesMultiplyTheCap(_ body: String, _ expected: Int?) throws {
        let call = try OpenAIAdapter().interpret(ToolRequest(method: .POST, path: "/v1/completions", body: ByteBuffer(string: body)))
        guard case .openai(let p) = call.parameters else { Issue.record("not openai parameters"); return }
        #expect(p.maxTokens == expected, "\(body)")
    }

    @Test(arguments: [#"{"model":"m","n":0}"#, #"{"model":"m","n":"2"}"#, #"{"model":"m","best_of":1.5}"#, #"{"model":"m","n":-1}"#])
    func openAIChoiceCountsMustBePositiveIntegers(_ body: String) {
        #expect(throws: ToolRequestError.self) {
            try OpenAIAdapter().interpret(ToolRequest(method: .POST, path: "/v1/chat/completions", body: ByteBuffer(string: body)))
        }
    }

    @Test func openAIEmbeddingsHonourBase64Encoding() throws {
        let adapter = OpenAIAdapter()
        let call = try adapter.interpret(
            ToolRequest(method: .POST, path: "/v1/embeddings", body: try Self.fixture("openai_embeddings_request.json")))
        #expect(call.action == "embeddings")
        // No output tokens: a max_tokens guard has nothing to cap, a budget nothing to reserve but the input.
        if case .openai(let p) = call.parameters { #expect(p.maxTokens == 0) } else { Issue.record("not openai parameters") }
        let mock = try Self.mockBody(adapter.mockResponse(for: call))
        let data = try #require(mock["data"]?.arrayValue)
        #expect(data.count == 2)
        let encoded = try #require(data[0]["embedding"]?.stringValue)
        #expect(Base64.decode(encoded)?.count == 8 * 4)
        var floats = try Self.json("openai_embeddings_response.json")
        if case .object(var o) = floats { o["data"] = nil; floats = .object(o) }
        #expect(Self.shapeMismatches(mock, floats) == [])
    }

    @Test func openAIResponsesRequestAndMockShape() throws {
        let adapter = OpenAIAdapter()
        let call = try adapter.interpret(
            ToolRequest(method: .POST, path: "/v1/responses", body: try Self.fixture("openai_responses_request.json")))
        guard case .openai(let p) = call.parameters else { Issue.record("wrong parameters"); return }
        #expect(call.action == "responses" && p.maxTokens == 100 && p.model == "gpt-4.1-mini")
        let mock = try Self.mockBody(adapter.mockResponse(for: call))
        #expect(Self.shapeMismatches(mock, try Self.json("openai_responses_response.json")) == [])
    }

    /// `stream: true` on the Responses API: the semantic events the SDKs read, numbered from 0, the
    /// deltas adding up to the final text, ending with `response.completed` whose response has the
    /// recorded answer's shape — and the usage meter settles from it.
    @Test func openAIResponsesStreamMockIsTheEventStream() async throws {
        let adapter = OpenAIAdapter(mockStreamDelay: .zero)
        let body = ByteBuffer(string: #"{"model":"gpt-4.1-mini","input":"hi","stream":true,"max_output_tokens":100}"#)
        let call = try adapter.interpret(ToolRequest(method: .POST, path: "/v1/responses", body: body))
        let response = adapter.mockResponse(for: call)
        #expect(response.headers.first(name: "content-type")?.hasPrefix("text/event-stream") == true)
        let meter = OpenAIUsageMeter()
        var events: [(name: String, payload: JSONValue)] = []
        for try await chunk in response.body {
            meter.observe(chunk)
            let text = String(buffer: chunk)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            try #require(lines.count == 4 && lines[0].hasPrefix("event: ") && lines[1].hasPrefix("data: ") && text.hasSuffix("\n\n"), "\(text)")
            events.append((String(lines[0].dropFirst(7)), try #require(JSONValue.parse(Array(lines[1].dropFirst(6).utf8)))))
        }
        meter.finish()
        #expect(events.map(\.name) == [
            "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
            "response.output_text.delta", "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
            "response.content_part.done", "response.output_item.done", "response.completed",
        ])
        #expect(events.map { $0.payload["type"]?.stringValue } == events.map(\.name))
        #expect(events.map { $0.payload["sequence_number"]?.intValue } == Array(0..<events.count))
        let deltas = events.filter { $0.name == "response.output_text.delta" }.compactMap { $0.payload["delta"]?.stringValue }
        let final = try #require(events.last?.payload["response"])
        #expect(final["output"]?.arrayValue?.first?["content"]?.arrayValue?.first?["text"]?.stringValue == deltas.joined())
        #expect(events.first?.payload["response"]?["status"]?.stringValue == "in_progress")
        #expect(Self.shapeMismatches(final, try Self.json("openai_responses_response.json")) == [])
        #expect(meter.usage?.total == final["usage"]?["total_tokens"]?.intValue && meter.usage != nil)
        // Not streamed: the same response object whole (its text differs: the mock's seed is the body).
        let plain = try adapter.interpret(ToolRequest(method: .POST, path: "/v1/responses", body: ByteBuffer(string: #"{"model":"gpt-4.1-mini","input":"hi","max_output_tokens":100}"#)))
        #expect(Self.shapeMismatches(try Self.mockBody(adapter.mockResponse(for: plain)), final) == [])
    }

    /// The key is sent with the organization and project the operator configured for it, replacing any.
    @Test func openAIAuthorizeSendsTheConfiguredAccount() throws {
        let call = try OpenAIAdapter().interpret(ToolRequest(method: .GET, path: "/v1/models"))
        func authorized(_ adapter: OpenAIAdapter) -> HTTPHeaders {
            var request = UpstreamRequest(
                call: call, method: .GET, url: TargetURL(scheme: "https", host: "api.openai.com", path: "/v1/models"),
                headers: ["OpenAI-Project": "proj_stale"], body: nil, deadline: .distantFuture)
            adapter.authorize(&request, with: Credential("sk-REAL-0123456789abcdef"))
            return request.headers
        }
        let configured = authorized(OpenAIAdapter(account: .init(organization: "org-ops", project: "proj_agents")))
        #expect(configured["authorization"] == ["Bearer sk-REAL-0123456789abcdef"])
        #expect(configured["openai-organization"] == ["org-ops"] && configured["openai-project"] == ["proj_agents"])
        #expect(authorized(OpenAIAdapter())["openai-organization"].isEmpty)
        for (id, ok) in [("org-AbC_12", true), ("proj_x", true), ("", false), ("org 1", false), ("org\r\n", false), ("é", false),
                         (String(repeating: "a", count: 128), true), (String(repeating: "a", count: 129), false)] {
            #expect(OpenAIAdapter.Account.isID(id) == ok, "\(id)")
        }
    }

    /// The model list SDKs call (`client.models.list()` / `.retrieve(id)`): read, not spent.
    @Test func openAIModelsAreAReadOfTheList() throws {
        let adapter = OpenAIAdapter()
        let cases: [(String, String?)] = [
            ("/v1/models", nil), ("/v1/models/", nil), ("/models", nil), ("/v1/models/gpt-4o-mini", "gpt-4o-mini"),
            ("/v1/models/ft:gpt-4o-mini:org:x:abc1", "ft:gpt-4o-mini:org:x:abc1"),
        ]
        for (path, model) in cases {
            let call = try adapter.interpret(ToolRequest(method: .GET, path: path))
            guard case .openai(let p) = call.parameters else { Issue.record("wrong parameters"); continue }
            #expect(call.action == "models" && p.model == model && p.maxTokens == nil && p.estimatedInputTokens == 0, "\(path)")
            #expect(adapter.traits(of: call) == CallTraits(idempotent: true, cacheable: false, sideEffecting: false))
        }
        let list = try Self.mockBody(adapter.mockResponse(for: try adapter.interpret(ToolRequest(method: .GET, path: "/v1/models"))))
        #expect(list["object"]?.stringValue == "list" && (list["data"]?.arrayValue?.count ?? 0) > 0)
        let missing = adapter.mockResponse(for: try adapter.interpret(ToolRequest(method: .GET, path: "/v1/models/nope")))
        #expect(missing.status == .notFound)
        #expect(try adapter.compatRequest(action: "models", params: [:]).path == "/v1/models")
        #expect(try adapter.compatRequest(action: "models", params: ["model": "gpt-4o"]).path == "/v1/models/gpt-4o")
        #expect(throws: ToolRequestError.invalidParameter("params.model must be a model id")) {
            try adapter.compatRequest(action: "models", params: ["model": "a/../b"])
        }
    }

    /// Moderations (what guardrails call): a POST with a JSON body, free, safe to retry; the mock flags
    /// a text containing "kill" and answers one result per input string.
    @Test func openAIModerationsAreAnAction() throws {
        let adapter = OpenAIAdapter()
        let body = ByteBuffer(string: #"{"model":"omni-moderation-latest","input":["hello","I will kill the process"]}"#)
        let call = try adapter.interpret(ToolRequest(method: .POST, path: "/v1/moderations", body: body))
        guard case .openai(let p) = call.parameters else { Issue.record("wrong parameters"); return }
        #expect(call.action == "moderations" && p.model == "omni-moderation-latest" && !p.stream)
        #expect(adapter.traits(of: call) == CallTraits(idempotent: true, cacheable: false, sideEffecting: false))
        let answer = try Self.mockBody(adapter.mockResponse(for: call))
        let results = answer["results"]?.arrayValue ?? []
        #expect(results.count == 2 && answer["id"]?.stringValue?.hasPrefix("modr-") == true)
        #expect(results.first?["flagged"] == .bool(false) && results.last?["flagged"] == .bool(true))
        #expect(results.last?["categories"]?["violence"] == .bool(true) && results.last?["categories"]?["hate"] == .bool(false))
        #expect(results.first?["category_scores"]?.objectValue?.count == OpenAIAdapter.moderationCategories.count)
        let compat = try adapter.compatRequest(action: "moderations", params: ["input": "hi"])
        #expect(compat.path == "/v1/moderations" && compat.method == .POST)
        #expect(throws: ToolRequestError.unknownAction("openai moderations must be POST")) {
            try adapter.interpret(ToolRequest(method: .GET, path: "/v1/moderations"))
        }
        let bad = adapter.mockResponse(for: try adapter.interpret(ToolRequest(method: .POST, path: "/v1/moderations", body: ByteBuffer(string: "{}"))))
        #expect(bad.status == .badRequest)
    }

    /// Image generation and speech: actions with no token cap (a `max_tokens` guard has nothing to
    /// judge, `n` counts images), so the budget reserves their input; mocked as OpenAI answers them.
    @Test func openAIImagesAndSpeechAreActions() throws {
        let adapter = OpenAIAdapter()
        let image = try adapter.interpret(
            ToolRequest(method: .POST, path: "/v1/images/generations", body: ByteBuffer(string: #"{"model":"gpt-image-1","prompt":"a red fox","n":2}"#)))
        guard case .openai(let p) = image.parameters else { Issue.record("wrong parameters"); return }
        #expect(image.action == "images" && p.model == "gpt-image-1" && p.maxTokens == 0 && p.choices == 1)
        #expect(adapter.traits(of: image) == CallTraits(idempotent: true, cacheable: false, sideEffecting: false))
        let answer = try Self.mockBody(adapter.mockResponse(for: image))
        #expect(answer["data"]?.arrayValue?.count == 2 && answer["data"]?.arrayValue?.first?["b64_json"]?.stringValue == OpenAIAdapter.mockPNGBase64)
        #expect(answer["usage"]?["total_tokens"]?.intValue ?? 0 > 0)
        let dalle = try Self.mockBody(adapter.mockResponse(for: try adapter.interpret(
            ToolRequest(method: .POST, path: "/images/generations", body: ByteBuffer(string: #"{"model":"dall-e-3","prompt":"x"}"#)))))
        #expect(dalle["data"]?.arrayValue?.first?["url"]?.stringValue?.hasPrefix("https://") == true && dalle["usage"] == nil)
        for bad in [#"{"prompt":""}"#, #"{"prompt":"x","n":11}"#] {
            let call = try adapter.interpret(ToolRequest(method: .POST, path: "/v1/images/generations", body: ByteBuffer(string: bad)))
            #expect(adapter.mockResponse(for: call).status == .badRequest)
        }
        let speech = try adapter.interpret(
            ToolRequest(method: .POST, path: "/v1/audio/speech", body: ByteBuffer(string: #"{"model":"tts-1","input":"hello","voice":"alloy","response_format":"wav"}"#)))
        #expect(speech.action == "speech")
        let audio = adapter.mockResponse(for: speech)
        let bytes = audio.body.bufferedBytes.map { Array($0.readableBytesView) } ?? []
        #expect(audio.status == .ok && audio.headers.first(name: "content-type") == "audio/wav" && bytes.starts(with: Array("RIFF".utf8)))
        #expect(bytes.count == 44 + 4800 && Array(bytes[8..<16]) == Array("WAVEfmt ".utf8))
        let mp3 = adapter.mockResponse(for: try adapter.interpret(
            ToolRequest(method: .POST, path: "/v1/audio/speech", body: ByteBuffer(string: #"{"model":"tts-1","input":"hi","voice":"alloy"}"#))))
        #expect(mp3.headers.first(name: "content-type") == "audio/mpeg" && mp3.body.bufferedBytes?.readableBytesView.first == 0xFF)
        #expect(throws: ToolRequestError.unknownAction("openai speech must be POST")) {
            try adapter.interpret(ToolRequest(method: .GET, path: "/v1/audio/speech"))
        }
        #expect(try adapter.compatRequest(action: "images", params: ["prompt": "x"]).path == "/v1/images/generations")
    }

    /// The Agents SDK's trace upload (on by default): taken by the mock with 204, never retried here.
    @Test func openAITraceUploadsAreAnAction() throws {
        let adapter = OpenAIAdapter()
        let body = ByteBuffer(string: #"{"data":[{"object":"trace","id":"trace_1","workflow_name":"Agent workflow"}]}"#)
        let call = try adapter.interpret(ToolRequest(method: .POST, path: "/v1/traces/ingest", body: body))
        #expect(call.action == "traces")
        #expect(adapter.traits(of: call) == CallTraits(idempotent: false, cacheable: false, sideEffecting: false))
        let answer = adapter.mockResponse(for: call)
        #expect(answer.status == .noContent && answer.body.bufferedBytes?.readableBytes ?? 0 == 0)
        #expect(throws: ToolRequestError.invalidBody("openai traces needs a JSON object body")) {
            try adapter.interpret(ToolRequest(method: .POST, path: "/v1/traces/ingest"))
        }
    }

    @Test func openAIRejectsWhatIsNotAnAction() {
        let adapter = OpenAIAdapter()
        let unknown = ToolRequestError.unknownAction(
            "openai supports POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/moderations, /v1/images/generations, /v1/images/edits, /v1/images/variations, /v1/audio/speech, /v1/audio/transcriptions, /v1/audio/translations, /v1/traces/ingest, GET /v1/models and the stored responses /v1/responses/{id}")
        for path in [
            "/v1/files", "/v1/models/a/b", "/v1/modelsx", "/v1/models/" + String(repeating: "m", count: 257), "/v1/models/..",
            "/v1/models/.", "/v1/models/..%2Ffiles", "/v1/models/gpt%2D4o", "/v1/models/a b", "/v1/models/a;b",
            "/v1/responses/", "/v1/responses/abc", "/v1/responses/resp_", "/v1/responses/resp_a/b", "/v1/responses/resp_a/cancel/x",
            "/v1/responses/resp_a%2F..%2Ffiles", "/v1/responses/resp_..", "/v1/responses/resp_" + String(repeating: "a", count: 124),
            "/v1/responses/resp_a/input_itemsx", "/v1/responses/resp_a//cancel",
        ] {
            #expect(throws: unknown) { try adapter.interpret(ToolRequest(method: .GET, path: path)) }
        }
        #expect(throws: ToolRequestError.unknownAction("openai models must be GET")) {
            try adapter.interpret(ToolRequest(method: .POST, path: "/v1/models", body: ByteBuffer(string: "{}")))
        }
        #expect(throws: ToolRequestError.invalidBody("openai chat needs a JSON object body (unexpected literal)")) {
            try adapter.interpret(ToolRequest(method: .POST, path: "/v1/chat/completions", body: ByteBuffer(string: "not json")))
        }
        #expect(throws: ToolRequestError.invalidParameter("max_tokens must be a non-negative integer")) {
            try adapter.interpret(ToolRequest(method: .POST, path: "/v1/chat/completions", body: ByteBuffer(string: #"{"model":"m","max_tokens":"lots"}"#)))
        }
    }

    @Test func serpAPIRemovesTheAgentsKeyAndMocksTheRealShape() throws {
        let adapter = SerpAPIAdapter()
        let call = try adapter.interpret(
            ToolRequest(method: .GET, path: "/search", query: QueryString(parsing: "q=Coffee&engine=Google&num=3&api_key=agent-supplied")))
        #expect(call.request.query.first("api_key") == nil)
        guard case .serpapi(let p) = call.parameters else { Issue.record("wrong parameters"); return }
        #expect(p.query == "Coffee" && p.engine == "google" && p.num == 3)
        let mock = try Self.mockBody(adapter.mockResponse(for: call))
        #expect(Self.shapeMismatches(mock, try Self.json("serpapi_search_response.json")) == [])
        #expect(mock["organic_results"]?.arrayValue?.count == 3)
    }

    @Test func gmailSendReadsRecipientsFromTheRawMessage() throws {
        let adapter = GmailAdapter()
        let call = try adapter.interpret(
            ToolRequest(method: .POST, path: "/gmail/v1/users/me/messages/send", body: try Self.fixture("gmail_send_request.json")))
        #expect(call.action == "send")
        guard case .gmail(let p) = call.parameters else { Issue.record("wrong parameters"); return }
        #expect(p.recipients == ["jane@partner.example", "bob@example.org", "team@example.com"])
        #expect(p.recipientDomains == ["partner.example", "example.org", "example.com"])
        #expect(p.subjectBytes == "Quarterly numbers".utf8.count)
        #expect(!p.headerInjection)
        #expect(adapter.traits(of: call).sideEffecting && !adapter.traits(of: call).idempotent)
        let mock = try Self.mockBody(adapter.mockResponse(for: call))
        #expect(Self.shapeMismatches(mock, try Self.json("gmail_send_response.json")) == [])
    }

    @Test func gmailProfile() throws {
        let adapter = GmailAdapter()
        let call = try adapter.interpret(ToolRequest(method: .GET, path: "/gmail/v1/users/me/profile"))
        #expect(call.action == "profile")
        let mock = try Self.mockBody(adapter.mockResponse(for: call))
        #expect(Self.shapeMismatches(mock, try Self.json("gmail_profile_response.json")) == [])
    }

    /// A media upload (`/upload/gmail/v1/…/messages/send?uploadType=media`, the message as
    /// message/rfc822) is the same send, its recipients read from the message; any other upload type,
    /// content type or path is refused.
    @Test func gmailMediaUploadIsASend() throws {
        let adapter = GmailAdapter()
        let message = "To: a@example.com, b@partner.example\r\nBcc: c@example.org\r\nSubject: q3\r\n\r\nattached"
        func upload(_ query: String, type: String? = "message/rfc822", path: String = "/upload/gmail/v1/users/me/messages/send", body: String? = nil) -> ToolRequest {
            var headers = HTTPHeaders()
            if let type { headers.add(name: "Content-Type", value: type) }
            return ToolRequest(method: .POST, path: path, query: QueryString(parsing: query), headers: headers, body: ByteBuffer(string: body ?? message))
        }
        let call = try adapter.interpret(upload("uploadType=media&alt=json"))
        guard case .gmail(let p) = call.parameters else { Issue.record("wrong parameters"); return }
        #expect(call.action == "send" && p.recipients == ["a@example.com", "b@partner.example", "c@example.org"] && p.subjectBytes == 2)
        #expect(adapter.traits(of: call).sideEffecting)
        #expect(try adapter.interpret(upload("uploadType=media", type: "Message/RFC822; charset=utf-8")).action == "send")
        for query in ["", "uploadType=multipart", "uploadType=resumable", "uploadType=media&uploadType=media", "uploadType=multipart&uploadType=media"] {
            #expect(throws: ToolRequestError.self, "\(query)") { try adapter.interpret(upload(query)) }
        }
        #expect(throws: ToolRequestError.unsupportedMediaType("a Gmail media upload is the message itself: Content-Type: message/rfc822")) {
            try adapter.interpret(upload("uploadType=media", type: "application/json"))
        }
        #expect(throws: ToolRequestError.self) { try adapter.interpret(upload("uploadType=media", type: nil)) }
        #expect(throws: ToolRequestError.self) { try adapter.interpret(upload("uploadType=media", body: "not a message")) }
        #expect(throws: ToolRequestError.self) { try adapter.interpret(upload("uploadType=media", body: "To: a@example.com\r\nSubject: x\r\nBcc: x\rTo: evil@attacker.example\r\n\r\nhi")) }
        #expect(throws: ToolRequestError.self) {
            try adapter.interpret(ToolRequest(method: .GET, path: "/upload/gmail/v1/users/me/profile"))
        }
    }

    /// Only the two paths, exactly: any other shape is an unknown action, never read as one of them.
    @Test(arguments: [
        ("GET", "/gmail/v1/users/me/profile", "profile"), ("POST", "/gmail/v1/users/u1/messages/send", "send"),
        ("GET", "/gmail/v1/users/me/profile/", nil), ("POST", "/gmail/v1/users/me/messages/send/", nil),
        ("GET", "/gmail/v1/users/agent%40example.com/profile", "profile"), ("GET", "/gmail/v1/users/a.b+c@ex-1.com/profile", "profile"),
        ("GET", "/gmail/v1/users/../profile", nil), ("GET", "/gmail/v1/users/./profile", nil),
        ("GET", "/gmail/v1/users/..%2F..%2Fdrive/profile", nil), ("GET", "/gmail/v1/users/%2e%2e/profile", nil),
        ("GET", "/gmail/v1/users/me%20/profile", nil), ("GET", "/gmail/v1/users/a%4/profile", nil),
        ("POST", "/gmail/v1/users/me/messages//send", nil), ("POST", "/gmail/v1/users/me/messages", nil),
        ("POST", "/gmail/v1/users/me/send", nil), ("GET", "/gmail/v1/users/me/messages/send", nil),
        ("POST", "/gmail/v1/users/me/profile", nil), ("POST", "/gmail/v1/users/me/x/messages/send", nil),
        ("GET", "/gmail/v1/users//profile", nil), ("GET", "/gmail/v1/users/me", nil),
    ] as [(String, String, String?)])
    func gmailPathsAreMatchedWhole(method: String, path: String, action: String?) throws {
        let raw = #"{"raw":"VG86IGFAZXhhbXBsZS5jb20NClN1YmplY3Q6IGhpDQoNCmhp"}"#
        let request = ToolRequest(method: HTTPMethod(rawValue: method), path: path, body: method == "POST" ? ByteBuffer(string: raw) : nil)
        let call = try? GmailAdapter().interpret(request)
        #expect(call?.action == action)
        if action == nil {
            #expect(throws: ToolRequestError.self) { try GmailAdapter().interpret(request) }
        }
    }

    @Test func gmailCompatComposesAndRefusesHeaderInjection() throws {
        let adapter = GmailAdapter()
        let request = try adapter.compatRequest(
            action: "send", params: ["to": ["a@x.example", "b@y.example"], "subject": "Hi", "body": "line1\nline2"])
        let call = try adapter.interpret(request)
        guard case .gmail(let p) = call.parameters else { Issue.record("wrong parameters"); return }
        #expect(p.recipients == ["a@x.example", "b@y.example"])
        #expect(throws: ToolRequestError.invalidParameter("header values must not contain CR or LF")) {
            try adapter.compatRequest(action: "send", params: ["to": "a@x.example", "subject": "Hi\r\nBcc: evil@attacker.example"])
        }
    }

    @Test(arguments: [["X-A": "a\r\nInjected: 1"], ["X-A": "a\u{1}b"], ["Bad Name": "v"], ["X:A": "v"], ["": "v"], ["X-A": 1]] as [JSONValue])
    func fetchCompatRefusesFieldsThatCannotBeSent(_ headers: JSONValue) {
        #expect(throws: ToolRequestError.invalidParameter("params.headers: names must be tokens, values strings without control characters")) {
            try HTTPFetchAdapter().compatRequest(action: "get", params: ["url": "http://example.com/", "headers": headers])
        }
        #expect(throws: Never.self) {
            try HTTPFetchAdapter().compatRequest(action: "get", params: ["url": "http://example.com/", "headers": ["X-A": "tab\tand naïve"]])
        }
    }

    @Test func fetchActionsAndMock() throws {
        let adapter = HTTPFetchAdapter()
        let target = try TargetURL.parse("https://example.com/page")
        let get = try adapter.interpret(ToolRequest(method: .GET, path: "/page", target: target))
        #expect(get.action == "get")
        let head = try adapter.interpret(ToolRequest(method: .HEAD, path: "/page", target: target))
        #expect(head.action == "head")
        #expect(throws: ToolRequestError.self) { try adapter.interpret(ToolRequest(method: .POST, path: "/page", target: target)) }
        let page = try #require(adapter.mockResponse(for: get).body.bufferedBytes)
        #expect(String(buffer: page).contains("<html>"))
        #expect(adapter.mockResponse(for: head).body.bufferedBytes?.readableBytes == 0)
    }
}

@Suite("RFC 5322 addresses")
struct AddressTests {
    @Test(arguments: [
        ("a@b.c", ["a@b.c"]),
        ("Jane <JANE@Example.COM>", ["jane@example.com"]),
        ("\"Doe, J\" <j@d.e>, x@y.z", ["j@d.e", "x@y.z"]),
        ("undisclosed-recipients:;", []),
        ("Team: a@t.example, b@t.example;", ["a@t.example", "b@t.example"]),
        ("a@b.c (comment, with comma)", ["a@b.c"]),
    ])
    func extracts(_ value: String, _ expected: [String]) {
        #expect(RFC2822Message.addresses(in: value) == expected)
    }

    /// What is not clearly a list of addresses is refused whole, never read in part.
    @Test(arguments: [
        "a@.b.c", "a@b.c.", "a@b..c", "a@=?utf-8?q?x?=.c", "a@b.c, c@d..e", "a@@b.c", "a@b@c.d", "<a@b.c",
        "\"a@b.c", "a@b.c)", "=?utf-8?q?x?= <>", "Team: a@b.c", "a.b.c",
    ])
    func refuses(_ value: String) {
        #expect(RFC2822Message.addresses(in: value) == nil)
    }

    /// The specials, by byte, are RFC 5322 §3.2.3's list — no more, no fewer.
    @Test func specialsAreTheRFCsList() {
        let rfc = Set("()<>[]:;@\\,\"".utf8)
        for c in UInt8.min...UInt8.max { #expect(AddressList.isSpecial(c) == rfc.contains(c), "byte \(c)") }
    }

    @Test func flagsABareCRInHeaders() throws {
        let message = try #require(RFC2822Message.parse(Array("To: a@b.c\rBcc: x@y.z\r\nSubject: s\r\n\r\nbody".utf8)))
        #expect(message.headerInjection)
    }
}
