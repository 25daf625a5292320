import NIOCore
import Synchronization

/// Reads the real token usage out of an OpenAI answer as it streams past, so a budget reserved from
/// `max_tokens` can be settled to what was actually used: `usage.total_tokens` of a JSON body, or of the
/// SSE chunk that carries it (`stream_options.include_usage`; the Responses API's `response.completed`).
public final class OpenAIUsageMeter: Sendable {
    private struct State {
        var pending: [UInt8] = []
        var body: [UInt8] = []
        var total: Int?
        var sse = false
        var decided = false
    }

    private let state = Mutex(State())
    /// JSON bodies larger than this are not parsed (their usage is then unknown).
    static let maxJSONBytes = 4 * 1024 * 1024

    public init() {}

    public var totalTokens: Int? { state.withLock { $0.total } }

    public func observe(_ chunk: ByteBuffer) {
        state.withLock { s in
            let bytes = Array(chunk.readableBytesView)
            if !s.decided {
                s.decided = true
                s.sse = bytes.starts(with: Array("data:".utf8)) || bytes.starts(with: Array("event:".utf8))
            }
            if s.sse {
                s.pending += bytes
                while let nl = s.pending.firstIndex(of: 10) {
                    let line = Array(s.pending[..<nl])
                    s.pending.removeFirst(nl + 1)
                    if line.starts(with: Array("data:".utf8)), let total = Self.usage(in: Array(line.dropFirst(5))) { s.total = total }
                }
            } else if s.body.count + bytes.count <= Self.maxJSONBytes {
                s.body += bytes
            }
        }
    }

    /// Call when the body has ended: parses a JSON (non-streaming) answer.
    public func finish() {
        state.withLock { s in
            if !s.sse, let total = Self.usage(in: s.body) { s.total = total }
        }
    }

    static func usage(in bytes: [UInt8]) -> Int? {
        guard bytes.contains(where: { $0 == UInt8(ascii: "{") }), let json = JSONValue.parse(bytes) else { return nil }
        if let t = json["usage"]?["total_tokens"]?.intValue { return t }
        if let t = json["response"]?["usage"]?["total_tokens"]?.intValue { return t }
        return nil
    }
}
