import NIOCore
import Synchronization

/// Reads the real token usage out of an OpenAI answer as it streams past, so a budget reserved from
/// `max_tokens` can be settled to what was actually used: `usage.total_tokens` of a JSON body, or of the
/// SSE chunk that carries it (`stream_options.include_usage`; the Responses API's `response.completed`).
public final class OpenAIUsageMeter: Sendable {
    /// Token counts of an answer: input (`prompt_tokens` / `input_tokens`), output (`completion_tokens` /
    /// `output_tokens`), and their total.
    public struct Usage: Sendable, Hashable {
        public var input: Int
        public var output: Int
        public var total: Int
    }

    private struct State {
        /// The stream's unfinished last line (bytes after its last newline).
        var pending: [UInt8] = []
        /// The unfinished line grew past `maxJSONBytes`: dropped until its newline.
        var skipping = false
        var body: [UInt8] = []
        var usage: Usage?
        var sse = false
        var decided = false
    }

    private let state = Mutex(State())
    /// JSON bodies larger than this are not parsed (their usage is then unknown).
    static let maxJSONBytes = 4 * 1024 * 1024

    public init() {}

    public var totalTokens: Int? { state.withLock { $0.usage?.total } }
    public var usage: Usage? { state.withLock { $0.usage } }

    public func observe(_ chunk: ByteBuffer) {
        state.withLock { s in
            let bytes = chunk.readableBytesView
            if !s.decided {
                s.decided = true
                s.sse = bytes.starts(with: Self.dataPrefix) || bytes.starts(with: Self.eventPrefix)
            }
            if s.sse {
                Self.lines(of: Array(bytes), into: &s)
            } else if s.body.count + bytes.count <= Self.maxJSONBytes {
                s.body.append(contentsOf: bytes)
            }
        }
    }

    /// Reads the stream's complete lines, searching only the new bytes for newlines: the unfinished line
    /// was searched again with every chunk and each line cut off the front of the buffer (a copy of the
    /// rest), so an upstream streaming a long line in small chunks, or many lines in one chunk, took time
    /// quadratic in its size, on the event loop. A line longer than `maxJSONBytes` is not kept (a usage
    /// line is small); the lines after it are read.
    private static func lines(of new: [UInt8], into s: inout State) {
        var from = 0
        while let nl = new[from...].firstIndex(of: 10) {
            if s.skipping {
                s.skipping = false
            } else if s.pending.isEmpty {
                consider(new[from..<nl], into: &s)
            } else {
                s.pending.append(contentsOf: new[from..<nl])
                consider(s.pending[...], into: &s)
            }
            s.pending.removeAll(keepingCapacity: true)
            from = nl + 1
        }
        guard !s.skipping, from < new.count else { return }
        if s.pending.count + (new.count - from) > maxJSONBytes {
            s.skipping = true
            s.pending = []
        } else {
            s.pending.append(contentsOf: new[from...])
        }
    }

    /// Only a line that names usage is read (most chunks carry one token of content).
    private static func consider(_ line: ArraySlice<UInt8>, into s: inout State) {
        guard line.starts(with: dataPrefix) else { return }
        let text = Array(line)
        if ByteSearch.lastIndex(of: usageKey, in: text) != nil, let usage = usage(in: Array(text.dropFirst(5))) { s.usage = usage }
    }

    /// Call when the body has ended: parses a JSON (non-streaming) answer.
    public func finish() {
        state.withLock { s in
            if !s.sse, let usage = Self.usage(in: s.body) { s.usage = usage }
        }
    }

    static let dataPrefix = Array("data:".utf8)
    static let eventPrefix = Array("event:".utf8)
    /// The members of a usage object the settlement reads (its nested details are checked, not built).
    static let countNames = ["prompt_tokens", "input_tokens", "completion_tokens", "output_tokens", "total_tokens"]
    static let usageKey = Array("\"usage\"".utf8)

    /// `usage.total_tokens` of an answer (chat completions, embeddings), or of `response.usage` (the
    /// Responses API). Only the `usage` object is read — where usage lives, not the whole answer: its
    /// last member named `"usage"` (a member name, not text: inside a JSON string a quote is escaped, and
    /// what stands before the name must be `{` or `,`).
    static func usage(in bytes: [UInt8]) -> Usage? {
        var end = bytes.count
        while let at = ByteSearch.lastIndex(of: usageKey, in: bytes, endingBy: end) {
            end = at
            var before = at - 1
            while before >= 0, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[before]) { before -= 1 }
            guard before >= 0, bytes[before] == UInt8(ascii: "{") || bytes[before] == UInt8(ascii: ",") else { continue }
            var colon = at + usageKey.count
            while colon < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[colon]) { colon += 1 }
            guard colon < bytes.count, bytes[colon] == UInt8(ascii: ":") else { continue }
            let members = bytes[(colon + 1)...].withUnsafeBufferPointer { buffer -> [String: JSONValue]?? in
                var reader = JSONReader(buffer)
                return try? reader.leadingMembers(countNames)
            }
            guard let found = members, let u = found else { continue }
            let input = u["prompt_tokens"]?.intValue ?? u["input_tokens"]?.intValue
            let output = u["completion_tokens"]?.intValue ?? u["output_tokens"]?.intValue
            // A negative count is no usage: settled as it stands it would hand back what earlier calls
            // spent (the ledger settles `usage - reserved`). The call keeps its reservation instead.
            guard (input ?? 0) >= 0, (output ?? 0) >= 0, (u["total_tokens"]?.intValue ?? 0) >= 0 else { return nil }
            if let total = u["total_tokens"]?.intValue ?? input.flatMap({ i in output.map { i + $0 } }) {
                return Usage(input: input ?? 0, output: output ?? max(0, total - (input ?? 0)), total: total)
            }
        }
        return nil
    }
}
