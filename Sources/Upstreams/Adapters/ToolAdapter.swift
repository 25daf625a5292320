import NIOCore
import NIOHTTP1

/// What the resilience layer may do with a call, decided by the tool's adapter.
public struct CallTraits: Sendable, Hashable {
    /// Repeating the call has no additional effect (safe to retry on 5xx/timeouts).
    public var idempotent: Bool
    /// The answer may be served from cache.
    public var cacheable: Bool
    /// The call changes the world (sends an email); never retried automatically.
    public var sideEffecting: Bool

    public init(idempotent: Bool, cacheable: Bool, sideEffecting: Bool) {
        self.idempotent = idempotent
        self.cacheable = cacheable
        self.sideEffecting = sideEffecting
    }
}

/// One per tool: knows the tool's API well enough to name the action, extract the parameters policy
/// guards, put the real credential in the right place, and answer like the real API in mock mode.
public protocol ToolAdapter: Sendable {
    var tool: Tool { get }

    /// Names the action and extracts parameters. Agent-supplied credentials are removed here.
    func interpret(_ request: ToolRequest) throws(ToolRequestError) -> ToolCall

    /// Builds the native request for a compatibility-API call `{tool, action, params}`.
    func compatRequest(action: String, params: JSONValue) throws(ToolRequestError) -> ToolRequest

    /// Writes the tool's real credential into the outgoing request.
    func authorize(_ request: inout UpstreamRequest, with credential: Credential)

    func traits(of call: ToolCall) -> CallTraits

    /// The deterministic answer of mock mode, shaped like the real API's.
    func mockResponse(for call: ToolCall) -> UpstreamResponse
}

/// The four adapters, looked up by tool.
public struct ToolAdapters: Sendable {
    public let serpapi: SerpAPIAdapter
    public let openai: OpenAIAdapter
    public let httpFetch: HTTPFetchAdapter
    public let gmail: GmailAdapter

    public init(mockStreamDelay: Duration = .milliseconds(5), openAIAccount: OpenAIAdapter.Account = .init()) {
        serpapi = SerpAPIAdapter()
        openai = OpenAIAdapter(mockStreamDelay: mockStreamDelay, account: openAIAccount)
        httpFetch = HTTPFetchAdapter()
        gmail = GmailAdapter()
    }

    public func adapter(for tool: Tool) -> any ToolAdapter {
        switch tool {
        case .serpapi: return serpapi
        case .openai: return openai
        case .httpFetch: return httpFetch
        case .gmailSend: return gmail
        }
    }
}

/// Helpers for deterministic mock answers.
enum Mock {
    /// The head of a mocked event stream, as OpenAI sends it.
    static var eventStreamHeaders: HTTPHeaders { HTTPHeaders([("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")]) }

    /// FNV-1a, so mock ids depend only on the request, never on time or randomness.
    static func hash<S: Sequence>(_ bytes: S) -> UInt64 where S.Element == UInt8 {
        // Over contiguous storage when there is one: a 30 MB body walked through `ByteBufferView`'s
        // indices took seconds unoptimised (the test build).
        if let h = bytes.withContiguousStorageIfAvailable({ hash(buffer: $0) }) { return h }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return h
    }

    private static func hash(buffer: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        guard let p = buffer.baseAddress else { return h }
        for i in 0..<buffer.count {
            h ^= UInt64(p[i])
            h = h &* 0x100_0000_01b3
        }
        return h
    }

    static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    static func json(_ value: JSONValue, status: HTTPResponseStatus = .ok, headers extra: [(String, String)] = []) -> UpstreamResponse {
        let text = value.serialized
        var headers = HTTPHeaders([("Content-Type", "application/json"), ("Content-Length", String(text.utf8.count))])
        for (n, v) in extra { headers.add(name: n, value: v) }
        return UpstreamResponse(status: status, headers: headers, body: .bytes(ByteBuffer(string: text)))
    }

    /// An OpenAI-style error body for mock-mode refusals of malformed calls.
    static func openAIError(_ message: String, status: HTTPResponseStatus = .badRequest) -> UpstreamResponse {
        json(["error": ["message": .string(message), "type": "invalid_request_error", "param": nil, "code": nil]], status: status)
    }

    static func bodyJSON(_ call: ToolCall) -> JSONValue? {
        guard let body = call.request.body else { return nil }
        return JSONValue.parse(body.readableBytesView)
    }
}
