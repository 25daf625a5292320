import NIOCore
import Synchronization

/// Takes out of a streamed chat completion the usage chunk the sidecar asked OpenAI for on the agent's
/// behalf, after the usage meter has read it.
///
/// To settle a token budget or a run's ledger from the real count, the sidecar adds
/// `stream_options.include_usage` to a streamed chat request that did not ask for it. OpenAI then sends
/// one more chunk before `[DONE]`: `"choices": []` with the usage. An agent written against the API as it
/// asked for it — the openai package's own README loop, `chunk.choices[0].delta.content` — fails on that
/// chunk with an IndexError. So the agent gets the stream it asked for: that one event is removed (the
/// `"usage": null` member OpenAI adds to every other chunk is left: the SDKs declare it optional).
///
/// Events are cut at SSE's blank line (`\n\n`, `\r\n\r\n`, `\r\r`); a chunk ending mid-event holds back
/// only that event's start until the rest arrives, so every complete event passes at once. An event
/// that does not end within `maxHeld` bytes stops the filtering (the rest passes as it comes): the
/// filter never holds an answer back without bound.
public final class OpenAIAddedUsageRemover: BodyTransform {
    private struct State {
        var carry: [UInt8] = []
        var passing = false
    }

    private let state = Mutex(State())
    /// Most bytes of one unfinished event held back before the filter gives up.
    static let maxHeld = 64 * 1024

    public init() {}

    public func transform(_ chunk: ByteBuffer) -> ByteBuffer {
        state.withLock { s in
            if s.passing { return chunk }
            let fresh = s.carry.isEmpty
            // The held bytes hold no event end (they were cut after the last one): only the new bytes, and
            // the three before them where an end may begin, are searched — the whole held event was
            // searched again with every chunk, so an event dripped a byte at a time cost its length squared.
            // The chunk is added to them in place (a copy of the held bytes per chunk was quadratic too).
            let resume = max(0, s.carry.count - 3)
            s.carry.append(contentsOf: chunk.readableBytesView)
            let (drops, end) = Self.scan(s.carry, from: resume)
            if fresh, drops.isEmpty, end == s.carry.count {
                s.carry.removeAll(keepingCapacity: true)
                return chunk
            }
            var out = ByteBuffer()
            out.reserveCapacity(end)
            var at = 0
            for drop in drops {
                out.writeBytes(s.carry[at..<drop.lowerBound])
                at = drop.upperBound
            }
            out.writeBytes(s.carry[at..<end])
            if end > 0 { s.carry.removeFirst(end) }
            if s.carry.count > Self.maxHeld {
                s.passing = true
                out.writeBytes(s.carry)
                s.carry = []
            }
            return out
        }
    }

    public func finish() -> ByteBuffer {
        state.withLock { s in
            defer { s.carry = [] }
            if s.carry.isEmpty || Self.isAddedUsage(s.carry, s.carry.indices) { return ByteBuffer() }
            return ByteBuffer(bytes: s.carry)
        }
    }

    /// The complete events of `bytes` that are the added usage chunk, and where the last complete event
    /// ends (what follows is an unfinished event).
    static func scan(_ bytes: [UInt8], from resume: Int = 0) -> (drops: [Range<Int>], end: Int) {
        var drops: [Range<Int>] = []
        var start = 0
        var i = resume
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            var next: Int?
            if b == 0x0A, i + 1 < n {
                if bytes[i + 1] == 0x0A {
                    next = i + 2
                } else if bytes[i + 1] == 0x0D, i + 2 < n, bytes[i + 2] == 0x0A {
                    next = i + 3
                }
            } else if b == 0x0D, i + 1 < n, bytes[i + 1] == 0x0D {
                next = i + 2
            }
            guard let end = next else {
                i += 1
                continue
            }
            if isAddedUsage(bytes, start..<end) { drops.append(start..<end) }
            start = end
            i = end
        }
        return (drops, start)
    }

    static let usageKey = Array("\"usage\"".utf8)
    static let dataField = Array("data:".utf8)

    /// Whether the SSE event at `range` of `bytes` is a chat chunk with no choices and a usage object: its
    /// data parses as a JSON object whose `choices` is `[]` and whose `usage` is an object. Only an event
    /// that names `"usage"` with an object value is parsed (every other chunk says `"usage": null` or
    /// nothing); the search reads the bytes in place, no copy of the event.
    static func isAddedUsage(_ bytes: [UInt8], _ range: Range<Int>) -> Bool {
        guard let key = ByteSearch.lastIndex(of: usageKey, in: bytes, startingAt: range.lowerBound, endingBy: range.upperBound) else { return false }
        var i = key + usageKey.count
        func skipSpace() {
            while i < range.upperBound, JSONReader.isWhitespace(bytes[i]) { i += 1 }
        }
        skipSpace()
        guard i < range.upperBound, bytes[i] == UInt8(ascii: ":") else { return false }
        i += 1
        skipSpace()
        guard i < range.upperBound, bytes[i] == UInt8(ascii: "{") else { return false }
        guard let data = dataOf(bytes[range]), case .object(let object)? = JSONValue.parse(data),
            case .array(let choices)? = object["choices"], choices.isEmpty, case .object? = object["usage"]
        else { return false }
        return true
    }

    /// The event's data: its `data:` lines' values (one leading space dropped) joined by newlines; nil
    /// when it has a field other than `data` (an `event:` names something else) or no data at all.
    static func dataOf(_ event: ArraySlice<UInt8>) -> [UInt8]? {
        var data: [UInt8] = []
        var lines = 0
        var lineStart = event.startIndex
        var i = event.startIndex
        while i <= event.endIndex {
            let atEnd = i == event.endIndex
            if atEnd || event[i] == 0x0A || event[i] == 0x0D {
                let line = event[lineStart..<i]
                if !line.isEmpty, line.first != UInt8(ascii: ":") {
                    guard line.starts(with: dataField) else { return nil }
                    var value = line.dropFirst(dataField.count)
                    if value.first == 0x20 { value = value.dropFirst() }
                    if lines > 0 { data.append(0x0A) }
                    data.append(contentsOf: value)
                    lines += 1
                }
                if !atEnd, event[i] == 0x0D, i + 1 < event.endIndex, event[i + 1] == 0x0A { i += 1 }
                lineStart = i + 1
            }
            i += 1
        }
        return lines > 0 ? data : nil
    }
}
