/// Why a body is not a JSON document the sidecar will act on.
public enum JSONParseError: Error, Sendable, Hashable {
    /// Not RFC 8259 JSON in UTF-8: bad syntax, invalid UTF-8, a byte-order mark, a lone surrogate
    /// escape, a number outside a double's range, nesting deeper than `JSONReader.maxDepth`.
    case invalid(String)
    /// One object names a member twice (compared after unescaping): parsers disagree on which one
    /// counts, so a guard could read one value while the upstream acts on the other.
    case duplicateKey(String)

    /// For a problem's detail: the reason in words, a repeated name cut to 64 characters.
    public var reason: String {
        switch self {
        case .invalid(let why): return why
        case .duplicateKey(let name): return "the JSON body names \"\(name.prefix(64))\" twice in one object"
        }
    }
}

/// A strict RFC 8259 reader over bytes.
///
/// Guards read request bodies with it, and a guard must read exactly what the upstream will read. So
/// everything two parsers could read differently is refused rather than resolved one way: duplicate
/// member names at any depth (after unescaping, so `"mod\u0065l"` is `model`), a byte-order mark,
/// UTF-16/32, invalid UTF-8, unpaired surrogate escapes, numbers that overflow a double, trailing bytes.
/// It is also several times cheaper than Foundation's `JSONDecoder` on the request path.
struct JSONReader {
    static let maxDepth = 128

    private let bytes: UnsafeBufferPointer<UInt8>
    private var i = 0
    private var depth = 0
    /// Set when a number was read whose value `JSONValue` cannot write back (`12345678901234567`,
    /// `0.10000000000000001`, `1e-400`: a double holds another value). A caller that re-serializes what
    /// it read refuses such a document rather than send a number the agent did not write.
    private(set) var inexactNumber = false

    init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    /// The one value at the start of the bytes (after white space), whatever follows it.
    mutating func leadingValue() throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        return try value()
    }

    mutating func document() throws(JSONParseError) -> JSONValue {
        try whole { reader throws(JSONParseError) in try reader.value() }
    }

    /// Reads the bytes as one document with `read`: no byte-order mark, white space around it, nothing
    /// after it — the frame every way of reading a document shares.
    private mutating func whole<T>(_ read: (inout JSONReader) throws(JSONParseError) -> T) throws(JSONParseError) -> T {
        if bytes.count >= 3, bytes[0] == 0xEF, bytes[1] == 0xBB, bytes[2] == 0xBF { throw .invalid("byte-order mark") }
        skipWhitespace()
        let result = try read(&self)
        skipWhitespace()
        guard i == bytes.count else { throw .invalid("bytes after the document") }
        return result
    }

    /// The members named in `wanted` of a top-level object, built; nil when the document is JSON but
    /// not an object. Every other byte is validated exactly as `document()` validates it — the same
    /// checks in the same order, so the same error for the same bytes, duplicate names at any depth
    /// included — without building what it reads: the request path needs four fields of a chat body,
    /// not a tree of its messages (building it was ~1.3 µs of a ~40 µs call).
    mutating func members(_ wanted: [String]) throws(JSONParseError) -> [String: JSONValue]? {
        try whole { reader throws(JSONParseError) in try reader.leadingMembers(wanted) }
    }

    /// `members(wanted)` of the one value at the start of the bytes (after white space), whatever
    /// follows it — as `leadingValue()` reads it, without building what is not wanted.
    mutating func leadingMembers(_ wanted: [String]) throws(JSONParseError) -> [String: JSONValue]? {
        skipWhitespace()
        guard i < bytes.count, bytes[i] == UInt8(ascii: "{") else {
            try skipValue()
            return nil
        }
        var found: [String: JSONValue] = [:]
        try skipObject(keeping: wanted, into: &found)
        return found
    }

    /// Checks the bytes as one document, as strictly as `document()`, building nothing.
    mutating func validate() throws(JSONParseError) {
        try whole { reader throws(JSONParseError) in try reader.skipValue() }
    }

    /// The document as text a digest can compare: members sorted by name (after unescaping), strings
    /// escaped one way, no white space — and every number exactly as it was written. `JSONValue`
    /// holds numbers as doubles, so its serialization wrote `12345678901234567` and
    /// `12345678901234568` alike: two side effects that differ only there had one digest (one was
    /// taken for a duplicate of the other, and an approval of one fitted both). Checked as strictly as
    /// `document()`. For a document whose numbers are plain integers below 9e15 or in Swift's shortest
    /// form, this is `JSONValue.serialized`, byte for byte (digests stored before it stay valid).
    mutating func canonicalDocument() throws(JSONParseError) -> String {
        try whole { reader throws(JSONParseError) in
            var out = ""
            out.reserveCapacity(reader.bytes.count)
            try reader.canonicalValue(into: &out)
            return out
        }
    }

    private mutating func canonicalValue(into out: inout String) throws(JSONParseError) {
        guard i < bytes.count else { throw .invalid("unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            var members: [(name: String, value: String)] = []
            if try !opens(closing: UInt8(ascii: "}")) {
                let base = names.count
                defer { names.removeSubrange(base...) }
                var many: Set<String>?
                repeat {
                    let name = try memberName()
                    var value = ""
                    try canonicalValue(into: &value)
                    try note(name, from: base, many: &many)
                    members.append((name, value))
                } while try continues(closing: UInt8(ascii: "}"))
            }
            out += "{"
            for (n, member) in members.sorted(by: { $0.name < $1.name }).enumerated() {
                if n > 0 { out += "," }
                JSONValue.writeString(member.name, into: &out)
                out += ":"
                out += member.value
            }
            out += "}"
        case UInt8(ascii: "["):
            out += "["
            if try !opens(closing: UInt8(ascii: "]")) {
                var first = true
                repeat {
                    skipWhitespace()
                    if !first { out += "," }
                    first = false
                    try canonicalValue(into: &out)
                } while try continues(closing: UInt8(ascii: "]"))
            }
            out += "]"
        case UInt8(ascii: "\""): JSONValue.writeString(try string(), into: &out)
        case UInt8(ascii: "t"): try literal("true"); out += "true"
        case UInt8(ascii: "f"): try literal("false"); out += "false"
        case UInt8(ascii: "n"): try literal("null"); out += "null"
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            let start = i
            _ = try number()
            out += String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
        default: throw .invalid("unexpected byte")
        }
    }

    /// Where each member `members` built was written (its value's bytes), for a caller that rewrites one
    /// and sets `keepsRanges` (the request path, which only reads them, keeps none).
    private(set) var ranges: [String: Range<Int>] = [:]
    var keepsRanges = false

    /// Member names of the objects being skimmed or written canonically, innermost last (one array for
    /// the whole document).
    private var names: [String] = []
    /// Past this many members an object's names are checked through a set, not by a linear search:
    /// an object of many short members would otherwise cost quadratic time.
    private static let linearNames = 16

    /// `value()` without building it.
    private mutating func skipValue() throws(JSONParseError) {
        guard i < bytes.count else { throw .invalid("unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            var none: [String: JSONValue] = [:]
            try skipObject(keeping: [], into: &none)
        case UInt8(ascii: "["): try skipArray()
        case UInt8(ascii: "\""): try skipString()
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): _ = try number()
        default: throw .invalid("unexpected byte")
        }
    }

    /// `object()` without building it, except the members named in `wanted`, which go to `found`.
    private mutating func skipObject(keeping wanted: [String], into found: inout [String: JSONValue]) throws(JSONParseError) {
        if try opens(closing: UInt8(ascii: "}")) { return }
        let base = names.count
        defer { names.removeSubrange(base...) }
        var many: Set<String>?
        repeat {
            let name = try memberName()
            if wanted.contains(name) {
                let start = i
                found[name] = try value()
                if keepsRanges { ranges[name] = start..<i }
            } else {
                try skipValue()
            }
            // After the value, as `object()` finds a repeated name only when it stores the value.
            try note(name, from: base, many: &many)
        } while try continues(closing: UInt8(ascii: "}"))
    }

    /// Notes a member name of the object whose names start at `base` in `names`, refusing a repeat
    /// (compared as `object()`'s dictionary compares them). Past `linearNames` members the object's
    /// names are also kept in `many`, so an object of many members is not quadratic.
    private mutating func note(_ name: String, from base: Int, many: inout Set<String>?) throws(JSONParseError) {
        if many == nil {
            guard !names[base...].contains(name) else { throw .duplicateKey(name) }
            names.append(name)
            if names.count - base > Self.linearNames { many = Set(names[base...]) }
        } else {
            guard many!.insert(name).inserted else { throw .duplicateKey(name) }
        }
    }

    /// `array()` without building it.
    private mutating func skipArray() throws(JSONParseError) {
        if try opens(closing: UInt8(ascii: "]")) { return }
        repeat {
            skipWhitespace()
            try skipValue()
        } while try continues(closing: UInt8(ascii: "]"))
    }

    /// `string()` without building it: the same checks in the same order. Its UTF-8 is checked run by
    /// run between escapes (an escape starts with `\`, which ends any multi-byte sequence, so a run is
    /// valid exactly when it is valid inside the decoded whole), and an invalid run is reported where
    /// `string()` reports it: at the end, after every escape was checked.
    private mutating func skipString() throws(JSONParseError) {
        i += 1
        var start = i
        var invalidUTF8 = false
        while true {
            while i < bytes.count, bytes[i] != UInt8(ascii: "\""), bytes[i] != UInt8(ascii: "\\") {
                guard bytes[i] >= 0x20 else { throw .invalid("control character in a string") }
                i += 1
            }
            guard i < bytes.count else { throw .invalid("unterminated string") }
            if !invalidUTF8 { invalidUTF8 = !Self.isUTF8(UnsafeBufferPointer(rebasing: bytes[start..<i])) }
            if bytes[i] == UInt8(ascii: "\"") {
                i += 1
                if invalidUTF8 { throw .invalid("invalid UTF-8") }
                return
            }
            guard i + 1 < bytes.count else { throw .invalid("unterminated escape") }
            let e = bytes[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"), UInt8(ascii: "n"),
                UInt8(ascii: "r"), UInt8(ascii: "t"):
                break
            case UInt8(ascii: "u"):
                _ = try unicodeEscape()
            default:
                throw .invalid("invalid escape")
            }
            start = i
        }
    }

    /// Whether bytes are UTF-8 as `utf8(_:)` accepts it (ASCII at once; anything else decoded the same way).
    private static func isUTF8(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        bytes.allSatisfy({ $0 < 0x80 }) || String(decoding: bytes, as: UTF8.self).utf8.elementsEqual(bytes)
    }

    private mutating func skipWhitespace() {
        while i < bytes.count, Self.isWhitespace(bytes[i]) { i += 1 }
    }

    /// JSON's white space (RFC 8259 §2): space, tab, line feed, carriage return.
    static func isWhitespace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 }

    private mutating func value() throws(JSONParseError) -> JSONValue {
        guard i < bytes.count else { throw .invalid("unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try object()
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
        default: throw .invalid("unexpected byte")
        }
    }

    private mutating func literal(_ text: StaticString) throws(JSONParseError) {
        let n = text.utf8CodeUnitCount
        guard i + n <= bytes.count, UnsafeBufferPointer(rebasing: bytes[i..<(i + n)]).elementsEqual(UnsafeBufferPointer(start: text.utf8Start, count: n))
        else { throw .invalid("unexpected literal") }
        i += n
    }

    private mutating func nest() throws(JSONParseError) {
        depth += 1
        guard depth <= Self.maxDepth else { throw .invalid("nested deeper than \(Self.maxDepth)") }
    }

    private mutating func object() throws(JSONParseError) -> JSONValue {
        var members: [String: JSONValue] = [:]
        if try opens(closing: UInt8(ascii: "}")) { return .object(members) }
        repeat {
            let name = try memberName()
            let v = try value()
            guard members.updateValue(v, forKey: name) == nil else { throw .duplicateKey(name) }
        } while try continues(closing: UInt8(ascii: "}"))
        return .object(members)
    }

    /// At a container's opening byte: one level deeper; true when it closes at once (`{}`, `[]`, and
    /// then it is left again).
    private mutating func opens(closing close: UInt8) throws(JSONParseError) -> Bool {
        try nest()
        i += 1
        skipWhitespace()
        guard i < bytes.count, bytes[i] == close else { return false }
        i += 1
        depth -= 1
        return true
    }

    /// A member's name and the `:` after it, white space around them skipped.
    private mutating func memberName() throws(JSONParseError) -> String {
        skipWhitespace()
        guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw .invalid("expected a member name") }
        let name = try string()
        skipWhitespace()
        guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw .invalid("expected ':'") }
        i += 1
        skipWhitespace()
        return name
    }

    /// After a member or an element: true when another follows; false when the container closes (and
    /// is left). Every reader of containers takes these three steps, so they fail alike on the same bytes.
    private mutating func continues(closing close: UInt8) throws(JSONParseError) -> Bool {
        skipWhitespace()
        guard i < bytes.count else { throw .invalid("unexpected end") }
        if bytes[i] == UInt8(ascii: ",") {
            i += 1
            return true
        }
        guard bytes[i] == close else { throw .invalid(close == UInt8(ascii: "}") ? "expected ',' or '}'" : "expected ',' or ']'") }
        i += 1
        depth -= 1
        return false
    }

    private mutating func array() throws(JSONParseError) -> JSONValue {
        var elements: [JSONValue] = []
        if try opens(closing: UInt8(ascii: "]")) { return .array(elements) }
        repeat {
            skipWhitespace()
            elements.append(try value())
        } while try continues(closing: UInt8(ascii: "]"))
        return .array(elements)
    }

    private mutating func string() throws(JSONParseError) -> String {
        i += 1
        let start = i
        // Fast path: no escape — the bytes are the string (validated as UTF-8 once).
        while i < bytes.count, bytes[i] != UInt8(ascii: "\""), bytes[i] != UInt8(ascii: "\\") {
            guard bytes[i] >= 0x20 else { throw .invalid("control character in a string") }
            i += 1
        }
        guard i < bytes.count else { throw .invalid("unterminated string") }
        if bytes[i] == UInt8(ascii: "\"") {
            let s = try Self.utf8(UnsafeBufferPointer(rebasing: bytes[start..<i]))
            i += 1
            return s
        }
        var out = Array(bytes[start..<i])
        while true {
            guard i < bytes.count else { throw .invalid("unterminated string") }
            let b = bytes[i]
            if b == UInt8(ascii: "\"") {
                i += 1
                break
            }
            guard b >= 0x20 else { throw .invalid("control character in a string") }
            guard b == UInt8(ascii: "\\") else {
                out.append(b)
                i += 1
                continue
            }
            guard i + 1 < bytes.count else { throw .invalid("unterminated escape") }
            let e = bytes[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                let scalar = try unicodeEscape()
                Unicode.UTF8.encode(Unicode.Scalar(scalar)!) { out.append($0) }
            default:
                throw .invalid("invalid escape")
            }
        }
        return try out.withUnsafeBufferPointer { buffer throws(JSONParseError) in try Self.utf8(buffer) }
    }

    /// The bytes as a string, refusing invalid UTF-8. Not `String(validating:as:)`: it is generic over
    /// the encoding, and its metadata lookups cost more than the parse itself for short keys. Decoding
    /// repairs invalid sequences with U+FFFD, so a result whose bytes differ from the input was invalid.
    static func utf8(_ bytes: UnsafeBufferPointer<UInt8>) throws(JSONParseError) -> String {
        let s = String(decoding: bytes, as: UTF8.self)
        guard bytes.allSatisfy({ $0 < 0x80 }) || s.utf8.elementsEqual(bytes) else { throw .invalid("invalid UTF-8") }
        return s
    }

    /// The scalar of a `\u` escape (its `\u` just read). A high surrogate must be followed by an escaped
    /// low one, and a low one must not come alone: parsers differ on lone halves.
    private mutating func unicodeEscape() throws(JSONParseError) -> UInt32 {
        let scalar = try hex4()
        if (0xD800...0xDBFF).contains(scalar) {
            guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                throw .invalid("unpaired surrogate escape")
            }
            i += 2
            let low = try hex4()
            guard (0xDC00...0xDFFF).contains(low) else { throw .invalid("unpaired surrogate escape") }
            return 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
        }
        guard !(0xDC00...0xDFFF).contains(scalar) else { throw .invalid("unpaired surrogate escape") }
        return scalar
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard i + 4 <= bytes.count else { throw .invalid("short \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[i]
            let d: UInt32
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(b - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(b - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(b - UInt8(ascii: "A") + 10)
            default: throw .invalid("bad \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    private mutating func number() throws(JSONParseError) -> Double {
        let start = i
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard i < bytes.count else { throw .invalid("bad number") }
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else {
            guard digits() > 0 else { throw .invalid("bad number") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digits() > 0 else { throw .invalid("bad number") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { throw .invalid("bad number") }
        }
        let text = UnsafeBufferPointer(rebasing: bytes[start..<i])
        guard let v = Double(String(decoding: text, as: UTF8.self)), v.isFinite else {
            throw .invalid("number out of range")
        }
        if !inexactNumber, !Self.writesBack(text, v) { inexactNumber = true }
        return v
    }

    /// Whether `JSONValue.write` writes `value` as text of the same decimal value as `text` (spelling
    /// aside: `1.0`, `1e0` and `1` are one value). Plain short numbers — what agents send — are decided
    /// without formatting anything.
    static func writesBack(_ text: UnsafeBufferPointer<UInt8>, _ value: Double) -> Bool {
        if text.count <= 15, text.allSatisfy({ ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: "-") }) {
            return true  // an integer of at most 15 digits: a double holds it exactly, and it is written as one
        }
        var written = ""
        JSONValue.number(value).write(into: &written)
        return written.withUTF8 { Decimal10(text) == Decimal10($0) }
    }

    /// A JSON number's decimal value, for comparing spellings: sign, significant digits without leading
    /// or trailing zeros, and the power of ten of the last one. Zero is zero whatever its sign.
    struct Decimal10: Equatable {
        var negative = false
        var digits: [UInt8] = []
        var exponent = 0

        init(_ text: UnsafeBufferPointer<UInt8>) {
            var j = 0
            if j < text.count, text[j] == UInt8(ascii: "-") {
                negative = true
                j += 1
            }
            var fraction = 0
            var seenPoint = false
            while j < text.count, text[j] != UInt8(ascii: "e"), text[j] != UInt8(ascii: "E") {
                let b = text[j]
                if b == UInt8(ascii: ".") {
                    seenPoint = true
                } else if b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") {
                    if !(digits.isEmpty && b == UInt8(ascii: "0")) { digits.append(b) }
                    if seenPoint { fraction += 1 }
                }
                j += 1
            }
            var power = 0
            if j < text.count {
                j += 1
                var minus = false
                if j < text.count, text[j] == UInt8(ascii: "+") || text[j] == UInt8(ascii: "-") {
                    minus = text[j] == UInt8(ascii: "-")
                    j += 1
                }
                while j < text.count, text[j] >= UInt8(ascii: "0"), text[j] <= UInt8(ascii: "9") {
                    // Bounded: a double's exponent is far below this, and a longer one is out of range anyway.
                    if power < 100_000 { power = power * 10 + Int(text[j] - UInt8(ascii: "0")) }
                    j += 1
                }
                if minus { power = -power }
            }
            exponent = power - fraction
            while digits.last == UInt8(ascii: "0") {
                digits.removeLast()
                exponent += 1
            }
            if digits.isEmpty {
                negative = false
                exponent = 0
            }
        }
    }

    private mutating func digits() -> Int {
        let start = i
        while i < bytes.count, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") { i += 1 }
        return i - start
    }
}
