import NIOCore
import NIOHTTP1

/// A request addressed to a tool, before the adapter has decided what it means.
///
/// Every entry form (forward proxy, reverse route, 4Runr compatibility API) produces one of these, so
/// everything after classification is the same code path.
public struct ToolRequest: Sendable {
    public var method: HTTPMethod
    /// The upstream-relative path, e.g. `/v1/chat/completions`.
    public var path: String
    public var query: QueryString
    public var headers: HTTPHeaders
    public var body: ByteBuffer?
    /// For `http_fetch`: the destination the agent asked for.
    public var target: TargetURL?

    public init(
        method: HTTPMethod, path: String, query: QueryString = .init(), headers: HTTPHeaders = [:],
        body: ByteBuffer? = nil, target: TargetURL? = nil
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.target = target
    }
}

/// One classified tool call: the tool, its action, and the typed parameters policy decides on.
///
/// Kept in one `CopyOnWrite` box: after interpretation a call is copied into every stage (the prepared
/// call, the outbound request, the resilience call, the pool's exchange), and a copy of the bare fields
/// cost a retain and a release per string, header list and buffer in it — over a dozen — where the box
/// costs one.
@dynamicMemberLookup
public struct ToolCall: Sendable {
    public struct Fields: Sendable {
        public var tool: Tool
        public var action: String
        public var request: ToolRequest
        public var parameters: ToolParameters
    }

    private var fields: CopyOnWrite<Fields>

    public subscript<T>(dynamicMember key: KeyPath<Fields, T>) -> T { fields.value[keyPath: key] }

    public subscript<T>(dynamicMember key: WritableKeyPath<Fields, T>) -> T {
        get { fields.value[keyPath: key] }
        _modify { yield &fields.value[keyPath: key] }
    }

    public init(tool: Tool, action: String, request: ToolRequest, parameters: ToolParameters) {
        fields = CopyOnWrite(Fields(tool: tool, action: action, request: request, parameters: parameters))
    }

    /// `tool:action`, the key of scopes and policy rules.
    public var scope: String { "\(self.tool.rawValue):\(self.action)" }
}

/// The parameters of a call that a policy may guard, extracted once by the tool's adapter.
public enum ToolParameters: Sendable, Hashable {
    case serpapi(SerpAPIParameters)
    case openai(OpenAIParameters)
    case httpFetch(HTTPFetchParameters)
    case gmail(GmailParameters)
}

public struct SerpAPIParameters: Sendable, Hashable {
    public var query: String?
    public var engine: String
    public var num: Int?
    public init(query: String?, engine: String, num: Int?) {
        self.query = query
        self.engine = engine
        self.num = num
    }
}

public struct OpenAIParameters: Sendable, Hashable {
    public var model: String?
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, whichever the request used.
    public var maxTokens: Int?
    public var stream: Bool
    public var temperature: Double?
    /// Rough size of the input in tokens (bytes / 4), used to reserve a budget before the call.
    public var estimatedInputTokens: Int
    /// The sidecar, not the agent, asked for the streamed answer's usage chunk (to settle a budget):
    /// the agent is then not shown it (`OpenAIAddedUsageRemover`).
    public var usageAddedBySidecar = false
    /// Outputs the call asks for (`n`, `best_of`; 1 without them). `maxTokens` already counts them; a call
    /// without a cap reserves the default once per choice.
    public var choices = 1
    /// The stored response the call reads, changes or continues from (`/v1/responses/{id}…`, or a new
    /// response's `previous_response_id`): the sidecar lets an agent name only responses it was given.
    public var storedResponse: String?
    public init(model: String?, maxTokens: Int?, stream: Bool, temperature: Double?, estimatedInputTokens: Int) {
        self.model = model
        self.maxTokens = maxTokens
        self.stream = stream
        self.temperature = temperature
        self.estimatedInputTokens = estimatedInputTokens
    }
}

public struct HTTPFetchParameters: Sendable, Hashable {
    public var url: TargetURL
    public var method: String
    public init(url: TargetURL, method: String) {
        self.url = url
        self.method = method
    }
}

public struct GmailParameters: Sendable, Hashable {
    public var userId: String
    /// Lowercased addresses from To, Cc, Bcc and the Resent- fields.
    public var recipients: [String]
    /// Their domains, as the address parse found them (not "what follows the last @").
    public var recipientDomains: [String]
    public var subjectBytes: Int
    public var bodyBytes: Int
    /// A header value carried a bare CR or LF (header injection attempt).
    public var headerInjection: Bool
    public init(userId: String, recipients: [MailAddress], subjectBytes: Int, bodyBytes: Int, headerInjection: Bool) {
        self.userId = userId
        self.recipients = recipients.map(\.description)
        self.recipientDomains = recipients.map(\.domain)
        self.subjectBytes = subjectBytes
        self.bodyBytes = bodyBytes
        self.headerInjection = headerInjection
    }
}

/// Why an adapter could not make sense of a request. Always the agent's mistake (4xx).
public struct ToolRequestError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case unknownAction = "unknown_action"
        case invalidBody = "invalid_body"
        case invalidParameter = "invalid_parameter"
        case unsupportedMediaType = "unsupported_media_type"
        case ambiguousParameter = "ambiguous_parameter"
    }
    public let kind: Kind
    public let detail: String

    public static func unknownAction(_ detail: String) -> Self { .init(kind: .unknownAction, detail: detail) }
    public static func invalidBody(_ detail: String) -> Self { .init(kind: .invalidBody, detail: detail) }
    public static func invalidParameter(_ detail: String) -> Self { .init(kind: .invalidParameter, detail: detail) }
    public static func unsupportedMediaType(_ detail: String) -> Self { .init(kind: .unsupportedMediaType, detail: detail) }
    public static func ambiguousParameter(_ detail: String) -> Self { .init(kind: .ambiguousParameter, detail: detail) }

    /// A body that is not JSON the sidecar will act on: a duplicate member (which a guard and the upstream
    /// could read differently) is ambiguous; anything else is an invalid body (`expected` says what is).
    public static func body(_ error: JSONParseError, expected: String) -> Self {
        switch error {
        case .duplicateKey: return .ambiguousParameter(error.reason)
        case .invalid(let why): return .invalidBody("\(expected) (\(why))")
        }
    }

    public var description: String { "\(kind.rawValue): \(detail)" }
}
