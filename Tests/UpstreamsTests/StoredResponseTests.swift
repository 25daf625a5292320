import NIOCore
import NIOHTTP1
import Testing

@testable import Upstreams

/// Stored responses: which calls name one (and which id), and the reader that finds the id a new
/// response's answer carries — it must find exactly what a full parse of the answer finds, or nothing.
@Suite("OpenAI stored responses")
struct StoredResponseTests {
    static let adapter = OpenAIAdapter()

    static func named(_ method: HTTPMethod, _ path: String, body: String? = nil) throws -> (String, String?) {
        let call = try adapter.interpret(ToolRequest(method: method, path: path, body: body.map { ByteBuffer(string: $0) }))
        guard case .openai(let p) = call.parameters else { return (call.action, nil) }
        return (call.action, p.storedResponse)
    }

    @Test func theCallsThatNameAStoredResponse() throws {
        #expect(try Self.named(.GET, "/v1/responses/resp_abc123") == ("stored_responses", "resp_abc123"))
        #expect(try Self.named(.GET, "/responses/resp_abc123") == ("stored_responses", "resp_abc123"))
        #expect(try Self.named(.DELETE, "/v1/responses/resp_abc123") == ("stored_responses", "resp_abc123"))
        #expect(try Self.named(.POST, "/v1/responses/resp_a-b_c/cancel") == ("stored_responses", "resp_a-b_c"))
        #expect(try Self.named(.GET, "/v1/responses/resp_abc/input_items") == ("stored_responses", "resp_abc"))
        #expect(try Self.named(.POST, "/v1/responses", body: #"{"model":"m","input":"hi","previous_response_id":"resp_x1"}"#) == ("responses", "resp_x1"))
        #expect(try Self.named(.POST, "/v1/responses", body: #"{"model":"m","input":"hi","previous_response_id":null}"#) == ("responses", nil))
        #expect(try Self.named(.POST, "/v1/responses", body: #"{"model":"m","input":"hi"}"#) == ("responses", nil))
        // Only responses continue from a response: chat's body member of that name is not read as one.
        #expect(try Self.named(.POST, "/v1/chat/completions", body: #"{"model":"m","messages":[],"previous_response_id":"resp_x1"}"#) == ("chat", nil))
    }

    @Test func aWrongMethodOrIdIsRefused() throws {
        for (method, path) in [(HTTPMethod.POST, "/v1/responses/resp_a"), (.PUT, "/v1/responses/resp_a"), (.GET, "/v1/responses/resp_a/cancel"),
                               (.DELETE, "/v1/responses/resp_a/input_items")] {
            #expect(throws: ToolRequestError.self) { try Self.adapter.interpret(ToolRequest(method: method, path: path)) }
        }
        for value in [#""msg_1""#, "17", #""resp_a/b""#, #""resp_""#, #"["resp_a"]"#, #""resp_a\u002F..""#] {
            #expect(throws: ToolRequestError.invalidParameter("previous_response_id must be a response id (resp_…)")) {
                try Self.adapter.interpret(ToolRequest(method: .POST, path: "/v1/responses", body: ByteBuffer(string: #"{"model":"m","previous_response_id":"# + value + "}")))
            }
        }
        for value in [#""conv_1""#, #"{"id":"conv_1"}"#] {
            #expect(throws: ToolRequestError.self) {
                try Self.adapter.interpret(ToolRequest(method: .POST, path: "/v1/responses", body: ByteBuffer(string: #"{"model":"m","input":"hi","conversation":"# + value + "}")))
            }
        }
        #expect(try Self.named(.POST, "/v1/responses", body: #"{"model":"m","input":"hi","conversation":null}"#) == ("responses", nil))
        // Named twice, it is ambiguous (the upstream would read one of the two).
        #expect(throws: ToolRequestError.self) {
            try Self.adapter.interpret(ToolRequest(
                method: .POST, path: "/v1/responses", body: ByteBuffer(string: #"{"previous_response_id":"resp_a","previous_response_id":"resp_b"}"#)))
        }
    }

    static func read(_ chunks: [String]) -> [String] {
        let found = FoundIDs()
        let reader = ResponseIDReader { found.add($0) }
        for c in chunks { reader.observe(ByteBuffer(string: c)) }
        reader.finish()
        return found.ids
    }

    /// Every way of cutting `text` in two, and byte by byte.
    static func cuts(_ text: String) -> [[String]] {
        let bytes = Array(text.utf8)
        var out: [[String]] = [[text], bytes.map { String(decoding: [$0], as: UTF8.self) }]
        for i in 1..<bytes.count { out.append([String(decoding: bytes[..<i], as: UTF8.self), String(decoding: bytes[i...], as: UTF8.self)]) }
        return out
    }

    @Test(arguments: [
        (#"{"id":"resp_67cc","object":"response","status":"queued"}"#, ["resp_67cc"]),
        ("{\n  \"id\": \"resp_67cc\",\n  \"object\": \"response\"\n}", ["resp_67cc"]),
        // Not first: read whole at the end.
        (#"{"object":"response","id":"resp_late","output":[{"id":"msg_1"}]}"#, ["resp_late"]),
        // Not a response id, an id only nested, an error, an array, escapes.
        (#"{"id":"msg_1","object":"response"}"#, []),
        (#"{"object":"response","output":[{"id":"resp_nested"}]}"#, []),
        (#"{"error":{"message":"nope","id":"resp_x"}}"#, []),
        (#"[{"id":"resp_x"}]"#, []),
        (#"{"id":"resp_\u0061b"}"#, ["resp_ab"]),
        (#"{"id":"resp_a\"b"}"#, []),
        // Named twice: an ambiguous body gives no id, whichever the first member says.
        (#"{"object":"response","id":"resp_a","id":"resp_b"}"#, []),
    ])
    func jsonAnswers(_ text: String, _ expected: [String]) {
        for cut in Self.cuts(text) { #expect(Self.read(cut) == expected, "\(cut)") }
    }

    @Test func eventStreams() {
        let created = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"object\":\"response\",\"id\":\"resp_s1\",\"status\":\"in_progress\"}}\n\n"
        let delta = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n"
        for cut in Self.cuts(created + delta) { #expect(Self.read(cut) == ["resp_s1"]) }
        #expect(Self.read([created.replacingOccurrences(of: "\n", with: "\r\n")]) == ["resp_s1"])
        // A stream whose events carry no response object, or another id, gives none.
        #expect(Self.read([delta, delta]) == [])
        #expect(Self.read([created.replacingOccurrences(of: "resp_s1", with: "msg_1")]) == [])
        // Only the stream's head is read: an id after the first 64 KiB is not looked for.
        let filler = String(repeating: ": keep-alive\n", count: 6000)
        #expect(Self.read([filler, created]) == [])
    }
}

final class FoundIDs: @unchecked Sendable {
    private var list: [String] = []
    func add(_ id: String) { list.append(id) }
    var ids: [String] { list }
}
