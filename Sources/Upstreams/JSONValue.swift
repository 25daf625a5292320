import Foundation

/// A parsed JSON document. Adapters read request bodies through it to extract the few values policy
/// needs (model, max_tokens, recipients) while the original bytes are forwarded untouched.
public enum JSONValue: Sendable, Hashable, Codable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n): try c.encode(n)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Parses bytes; nil when they are not JSON the sidecar will act on (`parseStrict` says why).
    public static func parse<Bytes: Collection>(_ bytes: Bytes) -> JSONValue? where Bytes.Element == UInt8 {
        try? parseStrict(bytes)
    }

    /// Parses bytes with `JSONReader`: strict RFC 8259 in UTF-8, refusing what parsers read differently
    /// (duplicate member names above all).
    public static func parseStrict<Bytes: Collection>(_ bytes: Bytes) throws(JSONParseError) -> JSONValue where Bytes.Element == UInt8 {
        try reading(bytes) { reader throws(JSONParseError) in try reader.document() }
    }

    /// `parseStrict` for a document whose values will be written out again (`serialized`): a number a
    /// double cannot hold as written (`12345678901234567`, `0.10000000000000001`) is refused, never
    /// passed on as another number.
    public static func parseStrictExact<Bytes: Collection>(_ bytes: Bytes) throws(JSONParseError) -> JSONValue where Bytes.Element == UInt8 {
        let (value, exact) = try parseStrictNotingExactness(bytes)
        guard exact else { throw .invalid(inexactNumber) }
        return value
    }

    /// Why `parseStrictExact` refused a document.
    public static let inexactNumber = "a number is beyond what a double holds as written (over 15 significant digits, or below a double's range); send it as a string"

    /// `parseStrict`, and whether every number in the document is one `serialized` writes back with its value.
    public static func parseStrictNotingExactness<Bytes: Collection>(_ bytes: Bytes) throws(JSONParseError) -> (JSONValue, exact: Bool)
    where Bytes.Element == UInt8 {
        try reading(bytes) { reader throws(JSONParseError) in (try reader.document(), !reader.inexactNumber) }
    }

    /// The members named in `wanted` of a document that must be an object, read with
    /// `JSONReader.members`: the whole document is checked as strictly as `parseStrict` checks it (the
    /// same error for the same bytes), but only those members are built. nil when it is JSON but not an
    /// object.
    public static func parseMembers<Bytes: Collection>(_ bytes: Bytes, _ wanted: [String]) throws(JSONParseError) -> [String: JSONValue]?
    where Bytes.Element == UInt8 {
        try reading(bytes) { reader throws(JSONParseError) in try reader.members(wanted) }
    }

    /// Whether bytes are one document `parseStrict` accepts, checked without building it.
    public static func isStrict<Bytes: Collection>(_ bytes: Bytes) -> Bool where Bytes.Element == UInt8 {
        (try? reading(bytes) { reader throws(JSONParseError) in try reader.validate() }) != nil
    }

    /// The document as canonical text for digests (`JSONReader.canonicalDocument`: sorted members, one
    /// escaping, numbers exactly as written); nil when it is not strict JSON.
    public static func canonicalText<Bytes: Collection>(_ bytes: Bytes) -> String? where Bytes.Element == UInt8 {
        try? reading(bytes) { reader throws(JSONParseError) in try reader.canonicalDocument() }
    }

    /// Runs `read` with a reader over `bytes`: in place when they are contiguous, else over a copy.
    static func reading<Bytes: Collection, T>(_ bytes: Bytes, _ read: (inout JSONReader) throws(JSONParseError) -> T) throws(JSONParseError) -> T
    where Bytes.Element == UInt8 {
        let inPlace: Result<T, JSONParseError>? = bytes.withContiguousStorageIfAvailable { buffer in
            var reader = JSONReader(buffer)
            do throws(JSONParseError) { return .success(try read(&reader)) } catch { return .failure(error) }
        }
        if let inPlace { return try inPlace.get() }
        return try ContiguousArray(bytes).withUnsafeBufferPointer { buffer throws(JSONParseError) in
            var reader = JSONReader(buffer)
            return try read(&reader)
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var doubleValue: Double? { if case .number(let n) = self { return n } else { return nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    public var objectValue: [String: JSONValue]? { if case .object(let o) = self { return o } else { return nil } }

    /// An integer value, if the number is integral and fits.
    /// Integers a request may carry are below this (and so exact in a Double): counts read from agents
    /// stay far enough from `Int.max` that what the sidecar adds up from them cannot overflow.
    public static let integerBound = 9_000_000_000_000_000

    public var intValue: Int? {
        guard case .number(let n) = self, n.rounded() == n, abs(n) < Double(Self.integerBound) else { return nil }
        return Int(n)
    }

    /// Compact serialization with sorted keys, so equal values always produce equal bytes
    /// (mock answers and cache keys depend on that).
    public var serialized: String {
        var out = ""
        out.reserveCapacity(256)
        write(into: &out)
        return out
    }

    public func write(into out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let n):
            if n.rounded() == n, abs(n) < 9.0e15 { out += String(Int64(n)) } else { out += "\(n)" }
        case .string(let s): JSONValue.writeString(s, into: &out)
        case .array(let a):
            out += "["
            for (i, v) in a.enumerated() {
                if i > 0 { out += "," }
                v.write(into: &out)
            }
            out += "]"
        case .object(let o):
            out += "{"
            for (i, key) in o.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                JSONValue.writeString(key, into: &out)
                out += ":"
                o[key]!.write(into: &out)
            }
            out += "}"
        }
    }

    public static func writeString(_ s: String, into out: inout String) {
        // Fast path: most strings need no escaping and are appended whole.
        var needsEscape = false
        for b in s.utf8 where b < 0x20 || b == 0x22 || b == 0x5C {
            needsEscape = true
            break
        }
        out += "\""
        guard needsEscape else {
            out += s
            out += "\""
            return
        }
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral, ExpressibleByFloatLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .number(Double(value)) }
    public init(floatLiteral value: Double) { self = .number(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
    public init(nilLiteral: ()) { self = .null }
}
