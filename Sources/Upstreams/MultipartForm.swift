import Crypto
import Foundation
import NIOCore

/// A `multipart/form-data` body (RFC 7578) read as far as the policy needs: the text of the fields it
/// names, the size of the other text fields, the count of files. The bytes go upstream unchanged.
///
/// Read strictly, because a guard must read what the upstream reads: a body two parsers could split
/// differently is refused, not guessed at — a preamble or transport padding, a part without a
/// `form-data` name, an RFC 2231 `name*=`, a `Content-Transfer-Encoding`, a read field given twice or as a
/// file, a part header that is not `name: value`, or a body that does not end with the closing delimiter.
public struct MultipartForm: Sendable, Hashable {
    /// The named fields' values (each at most once).
    public var fields: [String: String] = [:]
    /// Bytes of the text fields (those without a `filename`): what a token estimate reads.
    public var textBytes = 0
    /// Parts with a `filename`.
    public var files = 0

    public struct Failure: Error, Sendable, Hashable {
        public let reason: String
        /// A field given twice (ambiguous), not merely malformed.
        public let duplicate: Bool
        init(_ reason: String, duplicate: Bool = false) {
            self.reason = reason
            self.duplicate = duplicate
        }
    }

    /// The boundary of a `multipart/form-data` content type (or of `mediaType`), or nil for any other type.
    /// Throws when the type is that one but its boundary is missing, repeated or not RFC 2046's 1–70 bchars.
    public static func boundary(ofContentType value: String, mediaType: String = "multipart/form-data") throws(Failure) -> String? {
        guard HeaderName.isMediaType(value, mediaType) else { return nil }
        let pieces = value.split(separator: ";", omittingEmptySubsequences: false).dropFirst().map { $0.trimmingCharacters(in: .whitespaces) }
        var boundary: String?
        for piece in pieces where !piece.isEmpty {
            guard let eq = piece.firstIndex(of: "=") else { throw Failure("a content-type parameter without a value") }
            guard HeaderName.equalsIgnoringCase(piece[..<eq].trimmingCharacters(in: .whitespaces), "boundary") else { continue }
            guard boundary == nil else { throw Failure("the boundary is given twice") }
            var v = Substring(piece[piece.index(after: eq)...].trimmingCharacters(in: .whitespaces))
            if v.first == "\"" {
                guard v.count >= 2, v.last == "\"" else { throw Failure("the boundary's quotes are not closed") }
                v = v.dropFirst().dropLast()
                guard !v.contains("\\") else { throw Failure("the boundary holds an escape") }
            } else if !FieldSyntax.isToken(String(v)) {
                // Unquoted, a value is a token (RFC 2045): `boundary=a b` is `a` to a parser that stops at the
                // space — and every `--a` line in the body a delimiter to it, content to this one.
                throw Failure("an unquoted boundary must be a token (quote one with spaces or separators)")
            }
            boundary = String(v)
        }
        guard let boundary else { throw Failure("\(mediaType) without a boundary") }
        guard (1...70).contains(boundary.utf8.count), boundary.utf8.last != UInt8(ascii: " "), boundary.utf8.allSatisfy(isBChar) else {
            throw Failure("the boundary is not 1-70 characters RFC 2046 allows")
        }
        return boundary
    }

    /// RFC 2046 `bchars`: digits, letters and `'()+_,-./:=? ` .
    private static func isBChar(_ b: UInt8) -> Bool {
        switch b {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        default: return Array("'()+_,-./:=? ".utf8).contains(b)
        }
    }

    /// Reads `body`, keeping the text of the fields in `names`.
    public static func parse(_ body: ByteBuffer, boundary: String, names: Set<String>) throws(Failure) -> MultipartForm {
        try body.withUnsafeReadableBytes { raw in Result { () throws(Failure) in try parse(raw, boundary: boundary, names: names) } }.get()
    }

    public static func parse(_ body: [UInt8], boundary: String, names: Set<String>) throws(Failure) -> MultipartForm {
        try body.withUnsafeBytes { raw in Result { () throws(Failure) in try parse(raw, boundary: boundary, names: names) } }.get()
    }

    /// Over the bytes where they lie: a 30 MB upload is not copied to be read.
    static func parse(_ bytes: UnsafeRawBufferPointer, boundary: String, names: Set<String>) throws(Failure) -> MultipartForm {
        var form = MultipartForm()
        var seen: Set<String> = []
        for range in try parts(bytes, boundary: boundary) {
            let part = try PartHead(UnsafeRawBufferPointer(rebasing: bytes[range.head]))
            let content = UnsafeRawBufferPointer(rebasing: bytes[range.content])
            if names.contains(part.name) {
                guard seen.insert(part.name).inserted else { throw Failure("\(part.name) is given more than once", duplicate: true) }
                guard !part.isFile else { throw Failure("\(part.name) is sent as a file") }
                guard let text = String(validating: content, as: UTF8.self) else { throw Failure("\(part.name) is not UTF-8") }
                form.fields[part.name] = text
            }
            if part.isFile { form.files += 1 } else { form.textBytes += content.count }
        }
        return form
    }

    /// SHA-256 (hex) of a form's parts without its boundary: each part's header and content bytes,
    /// length-prefixed, hashed piece by piece where the bytes lie (no copy of a 30 MB upload). Two uploads
    /// of the same parts under different (random) boundaries digest alike — what an approval, the loop
    /// breaker and the idempotency ledger compare — and the prefixes keep it one-to-one. nil for a body
    /// that is not a well-formed form of `contentType`.
    public static func canonicalDigest(_ body: ByteBuffer, contentType: String) -> String? {
        var hash = SHA256()
        guard canonicalPieces(body, contentType: contentType, { hash.update(bufferPointer: $0) }) else { return nil }
        return Digest.hex(hash.finalize())
    }

    /// The canonical form's bytes in order, handed to `take`; false for a body that is not a well-formed form.
    private static func canonicalPieces(_ body: ByteBuffer, contentType: String, _ take: (UnsafeRawBufferPointer) -> Void) -> Bool {
        guard let boundary = try? Self.boundary(ofContentType: contentType) else { return false }
        return body.withUnsafeReadableBytes { bytes -> Bool in
            guard let parts = try? parts(bytes, boundary: boundary) else { return false }
            func literal(_ s: String) { Array(s.utf8).withUnsafeBytes { take($0) } }
            literal("multipart/form-data")
            for part in parts {
                for range in [part.head, part.content] {
                    literal("\n\(range.count):")
                    take(UnsafeRawBufferPointer(rebasing: bytes[range]))
                }
            }
            return true
        }
    }

    /// Parts a form may have. OpenAI's have a handful (an edit takes at most 16 images); a 32 MiB body of
    /// empty parts would be 600 000 of them to read, each with its headers.
    public static let maxParts = 1000

    /// Where each part's headers and content are in `bytes` (structure only: the headers are read by
    /// `PartHead`). An empty header range is a part without headers.
    static func parts(_ bytes: UnsafeRawBufferPointer, boundary: String) throws(Failure) -> [(head: Range<Int>, content: Range<Int>)] {
        let dash = Array("--".utf8) + Array(boundary.utf8)
        let delimiter = Array("\r\n".utf8) + dash
        /// Whether `literal` stands at `offset`.
        func at(_ offset: Int, _ literal: [UInt8]) -> Bool {
            offset >= 0 && bytes.count - offset >= literal.count && literal.withUnsafeBytes { memcmp(bytes.baseAddress! + offset, $0.baseAddress!, literal.count) == 0 }
        }
        func index(of needle: [UInt8], from start: Int) -> Int? {
            needle.withUnsafeBytes { ByteSearch.firstIndex(of: $0, in: bytes, from: start) }
        }
        let crlf = Array("\r\n".utf8), dashes = Array("--".utf8), blank = Array("\r\n\r\n".utf8)
        guard at(0, dash) else { throw Failure("the body does not start with the boundary") }
        var out: [(head: Range<Int>, content: Range<Int>)] = []
        var offset = dash.count
        while true {
            // After a delimiter: "--" closes (an optional CRLF may end the body), CRLF opens a part.
            if at(offset, dashes) {
                let rest = bytes.count - offset - 2
                guard rest == 0 || rest == 2 && at(offset + 2, crlf) else { throw Failure("bytes after the closing boundary") }
                return out
            }
            guard at(offset, crlf) else { throw Failure("a boundary not followed by a line end") }
            offset += 2
            guard let headEnd = index(of: blank, from: offset - 2) else { throw Failure("a part's headers do not end") }
            let contentStart = headEnd + 4
            // The next delimiter, looked for from the part's start: one inside its headers (or sharing the
            // blank line's CRLF) is a part two parsers could split differently.
            guard let next = index(of: delimiter, from: offset - 2) else { throw Failure("the body does not end with the closing boundary") }
            guard next >= contentStart else { throw Failure("a part's headers do not end") }
            guard out.count < maxParts else { throw Failure("more than \(maxParts) parts") }
            out.append((head: offset..<max(offset, headEnd), content: contentStart..<next))
            offset = next + delimiter.count
        }
    }

    /// A part's header line as its name and its value (after the colon, white space kept): nil unless the
    /// name is a token and the line holds no byte a field may not (here and in `RelatedUpload`).
    static func headerField(_ line: Substring) -> (name: Substring, value: Substring)? {
        guard let colon = line.firstIndex(of: ":"), FieldSyntax.isToken(String(line[..<colon])), FieldSyntax.isValue(String(line)) else { return nil }
        return (line[..<colon], line[line.index(after: colon)...])
    }

    /// A part's headers: its `Content-Disposition: form-data; name="…"` (and `filename`), checked.
    struct PartHead {
        var name = ""
        var isFile = false

        init(_ head: UnsafeRawBufferPointer) throws(Failure) {
            guard !head.isEmpty else { throw Failure("a part without headers") }
            guard let text = String(validating: head, as: UTF8.self) else { throw Failure("a part's headers are not UTF-8") }
            var disposition: Substring?
            for line in text.split(separator: "\r\n", omittingEmptySubsequences: false) {
                guard let (name, value) = MultipartForm.headerField(line) else { throw Failure("a part header is not name: value") }
                if HeaderName.equalsIgnoringCase(name, "content-transfer-encoding") { throw Failure("a part has a Content-Transfer-Encoding") }
                if HeaderName.equalsIgnoringCase(name, "content-disposition") {
                    guard disposition == nil else { throw Failure("a part has two Content-Disposition headers") }
                    disposition = value
                }
            }
            guard let disposition else { throw Failure("a part without Content-Disposition") }
            try read(disposition)
        }

        /// `form-data; name="x"; filename="y"` — quoted or token values, each parameter once.
        private mutating func read(_ value: Substring) throws(Failure) {
            var rest = value.drop { $0 == " " || $0 == "\t" }
            guard rest.lowercased().hasPrefix("form-data") else { throw Failure("a part is not form-data") }
            rest = rest.dropFirst("form-data".count)
            var params: [String: String] = [:]
            while true {
                rest = rest.drop { $0 == " " || $0 == "\t" }
                if rest.isEmpty { break }
                guard rest.first == ";" else { throw Failure("a malformed Content-Disposition") }
                rest = rest.dropFirst().drop { $0 == " " || $0 == "\t" }
                guard let eq = rest.firstIndex(of: "=") else { throw Failure("a malformed Content-Disposition") }
                let key = rest[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
                guard !key.isEmpty, FieldSyntax.isToken(key), !key.hasSuffix("*") else {
                    throw Failure("a Content-Disposition parameter the sidecar does not read (\(key.prefix(32)))")
                }
                rest = rest[rest.index(after: eq)...].drop { $0 == " " || $0 == "\t" }
                var v = ""
                if rest.first == "\"" {
                    rest = rest.dropFirst()
                    guard let close = rest.firstIndex(of: "\"") else { throw Failure("a Content-Disposition quote is not closed") }
                    v = String(rest[..<close])
                    // A backslash escape is read one way by some servers and another by others.
                    guard !v.contains("\\") else { throw Failure("a Content-Disposition value holds a backslash") }
                    rest = rest[rest.index(after: close)...]
                } else {
                    let end = rest.firstIndex { $0 == ";" || $0 == " " || $0 == "\t" } ?? rest.endIndex
                    v = String(rest[..<end])
                    guard FieldSyntax.isToken(v) else { throw Failure("a malformed Content-Disposition") }
                    rest = rest[end...]
                }
                guard params.updateValue(v, forKey: key) == nil else { throw Failure("a Content-Disposition names \(key) twice") }
            }
            guard let name = params["name"], !name.isEmpty else { throw Failure("a part without a name") }
            self.name = name
            isFile = params["filename"] != nil
        }
    }
}
