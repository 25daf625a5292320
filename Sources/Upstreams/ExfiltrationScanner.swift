#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Finds the exact bytes of known secrets — the credentials the sidecar injects, and canaries — in what
/// an agent sends: raw, hex (either case), base64 (standard or URL alphabet, at any alignment, any
/// padding), and after percent-decoding or JSON unescaping. No pattern guessing: only values the sidecar
/// holds can match, so a match is never a false positive by chance (a window of at least 8 bytes of a
/// random key).
///
/// A secret is matched by any window of `window(for:)` consecutive bytes of it (half the secret, 8 to 16
/// bytes), not only whole: an agent that splits a key across two headers, or between the query and the
/// body, still sends a half in one place. Windows are found with a rolling hash over each location (one
/// pass per window length), a 64 Ki-bit filter in front of the table, and the bytes compared on a hit.
public struct ExfiltrationScanner: Sendable {
    /// One known secret: what to call it in a refusal (never its value) and whether it is a canary.
    public struct Secret: Sendable, Hashable {
        public var label: String
        public var value: String
        public var canary: Bool

        public init(label: String, value: String, canary: Bool) {
            self.label = label
            self.value = value
            self.canary = canary
        }
    }

    /// Where a secret was found, and in which form. Names the secret by label only.
    public struct Finding: Sendable, Hashable, CustomStringConvertible {
        public var label: String
        public var canary: Bool
        public var location: String
        public var form: String

        public var description: String { "\(canary ? "a canary credential" : "the \(label) credential") in the \(location) (\(form))" }
    }

    private struct Entry: Sendable {
        var secret: Int
        var form: Int
        var offset: Int
    }

    /// All windows of one length.
    private struct Table: Sendable {
        var length: Int
        var power: UInt64  // B^(length-1)
        var filter: [UInt64] = Array(repeating: 0, count: 1024)
        var entries: [UInt64: [Entry]] = [:]
    }

    private let labels: [(label: String, canary: Bool)]
    private let forms: [(bytes: [UInt8], name: String)]
    private let tables: [Table]

    public var isEmpty: Bool { tables.isEmpty }

    static let base: UInt64 = 1_099_511_628_211

    /// Values shorter than 8 bytes are ignored: too likely to occur by chance.
    public init(_ secrets: [Secret]) {
        var labels: [(String, Bool)] = []
        var forms: [(bytes: [UInt8], name: String)] = []
        var byLength: [Int: Table] = [:]
        for secret in secrets {
            let bytes = Array(secret.value.utf8)
            guard bytes.count >= 8 else { continue }
            let index = labels.count
            labels.append((secret.label, secret.canary))
            let w = Self.window(for: bytes.count)
            // Encoded forms use the same window length where it carries as much (16 hex or base64
            // characters hold 64 or 96 bits of the key), so a typical key's forms share one table and
            // each location is read once.
            let hexWindow = min(2 * w, max(w, 16))
            let base64Window = min(w * 4 / 3, max(w, 16))
            var variants: [(bytes: [UInt8], name: String, window: Int)] = [
                (bytes, "raw", w), (Self.hex(bytes, upper: false), "hex", hexWindow), (Self.hex(bytes, upper: true), "hex", hexWindow),
            ]
            for shift in 0..<3 {
                let m = (bytes.count - shift) / 3 * 3
                guard m >= 6 else { continue }
                let chunk = Array(bytes[shift..<(shift + m)])
                let std = Array(Base64.encode(chunk).utf8)  // m is a multiple of 3: no padding
                let b64w = min(std.count, base64Window)
                variants.append((std, "base64", b64w))
                variants.append((std.map { $0 == UInt8(ascii: "+") ? UInt8(ascii: "-") : $0 == UInt8(ascii: "/") ? UInt8(ascii: "_") : $0 }, "base64url", b64w))
            }
            for v in variants {
                let formIndex = forms.count
                forms.append((v.bytes, v.name))
                let length = min(v.window, v.bytes.count)
                var table = byLength[length] ?? Table(length: length, power: Self.power(length))
                for offset in 0...(v.bytes.count - length) {
                    let h = v.bytes.withUnsafeBufferPointer { Self.hash(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer($0)[offset..<(offset + length)])) }
                    table.filter[Int(h >> 54)] |= 1 << ((h >> 48) & 63)
                    table.entries[h, default: []].append(Entry(secret: index, form: formIndex, offset: offset))
                }
                byLength[length] = table
            }
        }
        self.labels = labels
        self.forms = forms
        tables = byLength.values.sorted { $0.length > $1.length }
    }

    /// Half the secret, 8 to 16 bytes: a split into two still leaves a whole window in one place.
    static func window(for count: Int) -> Int { min(count, max(8, min(16, count / 2))) }

    /// Scans one location, its bytes as sent and, where they could hide a secret, decoded
    /// (percent-encoding, JSON string escapes).
    public func scan(_ bytes: UnsafeRawBufferPointer, location: String) -> Finding? {
        guard !isEmpty, !bytes.isEmpty else { return nil }
        if let f = find(in: bytes) { return finding(f, location: location, view: nil) }
        let percent = memchr(bytes.baseAddress!, Int32(UInt8(ascii: "%")), bytes.count) != nil
        let backslash = memchr(bytes.baseAddress!, Int32(UInt8(ascii: "\\")), bytes.count) != nil
        if percent, var decoded = Self.percentDecoded(bytes) {
            // Up to three levels: a URL carried inside another URL's query (`/fetch?url=`) arrives encoded twice.
            for _ in 0..<3 {
                if let f = decoded.withUnsafeBytes({ find(in: $0) }) { return finding(f, location: location, view: "percent-encoded") }
                guard decoded.contains(UInt8(ascii: "%")), let deeper = decoded.withUnsafeBytes({ Self.percentDecoded($0) }) else { break }
                decoded = deeper
            }
        }
        if backslash, let decoded = Self.jsonUnescaped(bytes), let f = decoded.withUnsafeBytes({ find(in: $0) }) {
            return finding(f, location: location, view: "JSON-escaped")
        }
        return nil
    }

    public func scan(_ text: String, location: String) -> Finding? {
        var text = text
        return text.withUTF8 { scan(UnsafeRawBufferPointer($0), location: location) }
    }

    private func finding(_ entry: Entry, location: String, view: String?) -> Finding {
        let form = forms[entry.form].name
        return Finding(
            label: labels[entry.secret].label, canary: labels[entry.secret].canary, location: location,
            form: view.map { form == "raw" ? $0 : "\(form), \($0)" } ?? form)
    }

    private func find(in bytes: UnsafeRawBufferPointer) -> Entry? {
        guard let start = bytes.baseAddress else { return nil }
        let body = start.assumingMemoryBound(to: UInt8.self)
        for table in tables where bytes.count >= table.length {
            let L = table.length, power = table.power, last = bytes.count - L
            // The filter and the bytes through pointers: the loop touches no array (and, unoptimised, retains
            // nothing per byte — a 30 MB upload took seconds per scan in a debug build).
            let found: Entry? = table.filter.withUnsafeBufferPointer { filter in
                var h = Self.hash(UnsafeRawBufferPointer(rebasing: bytes[0..<L]))
                var i = 0
                while true {
                    if filter[Int(h >> 54)] & (1 << ((h >> 48) & 63)) != 0, let candidates = table.entries[h] {
                        for e in candidates where forms[e.form].bytes.withUnsafeBytes({ form in memcmpEqual(form.baseAddress! + e.offset, start + i, L) }) {
                            return e
                        }
                    }
                    guard i < last else { return nil }
                    h = (h &- UInt64(body[i]) &* power) &* Self.base &+ UInt64(body[i + L])
                    i += 1
                }
            }
            if let found { return found }
        }
        return nil
    }

    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0
        for b in bytes { h = h &* base &+ UInt64(b) }
        return h
    }

    static func power(_ length: Int) -> UInt64 {
        var p: UInt64 = 1
        for _ in 1..<max(1, length) { p = p &* base }
        return p
    }

    static func hex(_ bytes: [UInt8], upper: Bool) -> [UInt8] {
        let digits = Array((upper ? "0123456789ABCDEF" : "0123456789abcdef").utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return out
    }

    /// `%XX` decoded (other bytes as they are); nil when nothing was encoded.
    static func percentDecoded(_ bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        var changed = false
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "%"), i + 2 < bytes.count, let hi = hexValue(bytes[i + 1]), let lo = hexValue(bytes[i + 2]) {
                out.append(hi << 4 | lo)
                i += 3
                changed = true
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return changed ? out : nil
    }

    /// JSON string escapes decoded (`\uXXXX` to UTF-8, surrogate pairs joined); nil when there were none.
    static func jsonUnescaped(_ bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        var changed = false
        func code(at j: Int) -> UInt32? {
            guard j + 4 <= bytes.count else { return nil }
            var v: UInt32 = 0
            for k in j..<(j + 4) {
                guard let d = hexValue(bytes[k]) else { return nil }
                v = v << 4 | UInt32(d)
            }
            return v
        }
        while i < bytes.count {
            guard bytes[i] == UInt8(ascii: "\\"), i + 1 < bytes.count else {
                out.append(bytes[i])
                i += 1
                continue
            }
            changed = true
            let e = bytes[i + 1]
            switch e {
            case UInt8(ascii: "u"):
                guard var scalar = code(at: i + 2) else {
                    out.append(e)
                    i += 2
                    continue
                }
                i += 6
                if (0xD800..<0xDC00).contains(scalar), i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u"),
                    let low = code(at: i + 2), (0xDC00..<0xE000).contains(low)
                {
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
                }
                out.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar) ?? "\u{FFFD}")).utf8))
            case UInt8(ascii: "n"): out.append(10); i += 2
            case UInt8(ascii: "t"): out.append(9); i += 2
            case UInt8(ascii: "r"): out.append(13); i += 2
            case UInt8(ascii: "b"): out.append(8); i += 2
            case UInt8(ascii: "f"): out.append(12); i += 2
            default: out.append(e); i += 2  // \" \\ \/ and anything else: the character itself
            }
        }
        return changed ? out : nil
    }

    /// A hex digit's value: the one reading of percent-escapes (`QueryString`, `PathSegment`).
    static func hexValue(_ c: UInt8) -> UInt8? { QueryString.hexValue(c) }
}

private func memcmpEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Bool {
    for i in 0..<n where a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
    return true
}
