import NIOCore
import Synchronization

/// Reads the id of the response a `POST /v1/responses` answer created, as the answer streams past, and
/// hands it to `found` once — before the bytes that carry it reach the agent (the body's observer sees
/// each chunk before it is written), so an agent that polls the id at once finds it recorded.
///
/// A JSON answer: OpenAI writes `"id"` first, so the first bytes (`{"id": "resp_…"`) say it; an answer
/// that names it later is read whole at its end (up to `maxJSONBytes`). An event stream: the first
/// events (`response.created`, `response.queued`) carry the response object; only the first
/// `maxEventBytes` of the stream are read. Nothing else of the answer is kept.
public final class ResponseIDReader: Sendable {
    private struct State {
        var bytes: [UInt8] = []
        var sse: Bool?
        /// Where the stream's next unread line starts (the lines before it had no id).
        var lineStart = 0
        /// The id was found, or cannot be (the stream's head had none; the JSON was too large).
        var done = false

        /// Nothing more to read: what was kept is let go.
        mutating func end() {
            done = true
            bytes = []
        }
    }

    static let maxJSONBytes = 1 << 20
    static let maxEventBytes = 64 * 1024

    private let state = Mutex(State())
    private let found: @Sendable (String) -> Void

    public init(found: @escaping @Sendable (String) -> Void) { self.found = found }

    public func observe(_ chunk: ByteBuffer) {
        let id: String? = state.withLock { s in
            guard !s.done else { return nil }
            s.bytes.append(contentsOf: chunk.readableBytesView)
            if s.sse == nil {
                guard let first = s.bytes.first(where: { !JSONReader.isWhitespace($0) }) else { return nil }
                s.sse = first != UInt8(ascii: "{")
            }
            if s.sse == true {
                let id = Self.eventStreamID(s.bytes, from: &s.lineStart)
                if id != nil || s.bytes.count >= Self.maxEventBytes { s.end() }
                return id
            }
            switch Self.leadingID(s.bytes) {
            case .found(let id):
                s.end()
                return id
            case .notFirst, .needMore:
                if s.bytes.count > Self.maxJSONBytes { s.end() }
                return nil
            }
        }
        if let id { found(id) }
    }

    /// The end of the answer: a JSON object that named its id after another member is read whole.
    public func finish() {
        let id: String? = state.withLock { s in
            guard !s.done, s.sse == false else { return nil }
            let bytes = s.bytes
            s.end()
            guard let members = try? JSONValue.parseMembers(bytes, ["id"]) else { return nil }
            return members["id"]?.stringValue.flatMap { OpenAIAdapter.isResponseID(Substring($0)) ? $0 : nil }
        }
        if let id { found(id) }
    }

    enum Leading: Equatable {
        case found(String)
        case notFirst
        case needMore
    }

    /// `{ "id" : "resp_…"` at the start of `bytes`: the id, or that the first member is another (or the
    /// value is not a response id), or that more bytes are needed to tell.
    static func leadingID(_ bytes: [UInt8]) -> Leading {
        var i = 0
        func skipSpace() { while i < bytes.count, JSONReader.isWhitespace(bytes[i]) { i += 1 } }
        /// One structural byte after optional white space.
        func expect(_ byte: UInt8) -> Leading? {
            skipSpace()
            guard i < bytes.count else { return .needMore }
            guard bytes[i] == byte else { return .notFirst }
            i += 1
            return nil
        }
        skipSpace()
        guard i < bytes.count else { return .needMore }
        guard bytes[i] == UInt8(ascii: "{") else { return .notFirst }
        i += 1
        skipSpace()
        let name = Array(#""id""#.utf8)
        guard bytes.count - i >= name.count else { return bytes[i...].elementsEqual(name.prefix(bytes.count - i)) ? .needMore : .notFirst }
        guard bytes[i..<(i + name.count)].elementsEqual(name) else { return .notFirst }
        i += name.count
        if let early = expect(UInt8(ascii: ":")) { return early }
        if let early = expect(UInt8(ascii: "\"")) { return early }
        let start = i
        while i < bytes.count, bytes[i] != UInt8(ascii: "\"") {
            // An escape in an id is not one OpenAI wrote: not read here (the whole body is, at its end).
            if bytes[i] == UInt8(ascii: "\\") || i - start > 128 { return .notFirst }
            i += 1
        }
        guard i < bytes.count else { return .needMore }
        let id = String(decoding: bytes[start..<i], as: UTF8.self)
        return OpenAIAdapter.isResponseID(Substring(id)) ? .found(id) : .notFirst
    }

    /// The response id of the first complete `data:` line of the stream that carries a response object,
    /// reading the lines from `from` on (moved past the complete lines read, so each is read once).
    static func eventStreamID(_ bytes: [UInt8], from: inout Int) -> String? {
        while let nl = bytes[from...].firstIndex(of: 10) {
            var line = bytes[from..<nl]
            from = nl + 1
            if line.last == 13 { line = line.dropLast() }
            guard line.starts(with: "data:".utf8) else { continue }
            let payload = Array(line.dropFirst(5))
            guard let json = JSONValue.parse(payload), let id = json["response"]?["id"]?.stringValue else { continue }
            return OpenAIAdapter.isResponseID(Substring(id)) ? id : nil
        }
        return nil
    }
}
