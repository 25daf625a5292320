import Crypto
import NIOCore

/// A Google API multipart upload (`uploadType=multipart`, RFC 2387 `multipart/related`): the method's JSON
/// metadata, then the media — for Gmail's `messages.send`, the metadata (`threadId`, `labelIds`) and the
/// RFC 2822 message as `message/rfc822`. google-api-python-client sends one for `send(body=…,
/// media_body=…)`, which is how a reply with a large attachment goes out.
///
/// Read strictly, as the guards must read the message Gmail sends: exactly two parts, the first
/// `application/json` holding a JSON object (without `raw`: a second message beside the media), the
/// second `message/rfc822` with no transfer encoding that changes its bytes (`7bit`, `8bit`, `binary`
/// only). Python's email package writes the body with bare LF line ends, so a delimiter is
/// `--boundary` at the start of a line ending in LF or CRLF; both parsers find the same parts because
/// the same byte sequence (LF `--boundary`) splits them.
public struct RelatedUpload: Sendable, Hashable {
    public var metadata: [String: JSONValue]
    /// Where the metadata's and the media's bytes are in the body.
    public var metadataBytes: Range<Int>
    public var media: Range<Int>

    public struct Failure: Error, Sendable, Hashable {
        public let reason: String
        init(_ reason: String) { self.reason = reason }
    }

    /// The parts of a `multipart/related` body: each part's headers (lines without their ends) and where
    /// its content is.
    static func parts(_ bytes: UnsafeRawBufferPointer, boundary: String) throws(Failure) -> [(head: [Substring], content: Range<Int>)] {
        let dash = Array("--".utf8) + Array(boundary.utf8)
        let delimiter = [UInt8(ascii: "\n")] + dash
        func at(_ offset: Int, _ literal: [UInt8]) -> Bool {
            offset >= 0 && bytes.count - offset >= literal.count && zip(bytes[offset...], literal).allSatisfy { $0 == $1 }
        }
        /// A line end at `offset`: its length (LF or CRLF), or nil.
        func lineEnd(_ offset: Int) -> Int? { at(offset, [10]) ? 1 : at(offset, [13, 10]) ? 2 : nil }
        guard at(0, dash) else { throw Failure("the body does not start with the boundary") }
        var out: [(head: [Substring], content: Range<Int>)] = []
        var offset = dash.count
        while true {
            if at(offset, Array("--".utf8)) {
                let rest = bytes.count - offset - 2
                guard rest == 0 || lineEnd(offset + 2) == rest else { throw Failure("bytes after the closing boundary") }
                return out
            }
            guard let end = lineEnd(offset) else { throw Failure("a boundary not followed by a line end") }
            let start = offset + end
            let next = delimiter.withUnsafeBytes { ByteSearch.firstIndex(of: $0, in: bytes, from: start - 1) }
            guard let next, next >= start else { throw Failure("the body does not end with the closing boundary") }
            // The part: header lines up to the first empty one, then the content up to the line end
            // before the delimiter (CRLF or LF).
            var lines: [Substring] = []
            var cursor = start
            var contentStart: Int?
            while cursor < next {
                let lf = (cursor..<next).first { bytes[$0] == 10 } ?? next
                var line = cursor..<lf
                if line.count > 0, bytes[line.upperBound - 1] == 13 { line = line.lowerBound..<(line.upperBound - 1) }
                cursor = lf + 1
                if line.isEmpty {
                    contentStart = cursor
                    break
                }
                guard let text = String(validating: UnsafeRawBufferPointer(rebasing: bytes[line]), as: UTF8.self) else {
                    throw Failure("a part's headers are not UTF-8")
                }
                lines.append(Substring(text))
            }
            guard let contentStart, contentStart <= next else { throw Failure("a part's headers do not end") }
            let contentEnd = next > contentStart && bytes[next - 1] == 13 ? next - 1 : next
            guard out.count < 2 else { throw Failure("more than two parts") }
            out.append((head: lines, content: contentStart..<max(contentStart, contentEnd)))
            offset = next + delimiter.count
        }
    }

    /// One part's `Content-Type` (exactly one), with its transfer encoding checked to be an identity.
    static func partType(_ head: [Substring]) throws(Failure) -> String {
        var type: String?
        for line in head {
            guard let (name, raw) = MultipartForm.headerField(line) else { throw Failure("a part header is not name: value") }
            let value = raw.trimmingCharacters(in: .whitespaces)
            if HeaderName.equalsIgnoringCase(name, "content-type") {
                guard type == nil else { throw Failure("a part has two Content-Type headers") }
                type = value
            } else if HeaderName.equalsIgnoringCase(name, "content-transfer-encoding") {
                guard ["7bit", "8bit", "binary"].contains(value.lowercased()) else { throw Failure("a part is sent with Content-Transfer-Encoding \(value.prefix(16))") }
            }
        }
        guard let type else { throw Failure("a part without Content-Type") }
        return type
    }

    /// The upload in `body`, whose content type is `contentType` (nil when it is not `multipart/related`).
    public static func parse(_ body: ByteBuffer, contentType: String, media mediaType: String) throws(Failure) -> RelatedUpload? {
        let boundary: String?
        do { boundary = try MultipartForm.boundary(ofContentType: contentType, mediaType: "multipart/related") } catch {
            throw Failure(error.reason)
        }
        guard let boundary else { return nil }
        return try body.withUnsafeReadableBytes { bytes in
            Result { () throws(Failure) -> RelatedUpload in
                let found = try parts(bytes, boundary: boundary)
                guard found.count == 2 else { throw Failure("a multipart upload is two parts: the JSON metadata, then the media") }
                guard HeaderName.isMediaType(try partType(found[0].head), "application/json") else {
                    throw Failure("the first part is the metadata: Content-Type: application/json")
                }
                guard HeaderName.isMediaType(try partType(found[1].head), mediaType) else { throw Failure("the second part is the media: Content-Type: \(mediaType)") }
                let json: JSONValue
                do { json = try JSONValue.parseStrict(UnsafeRawBufferPointer(rebasing: bytes[found[0].content])) } catch {
                    throw Failure("the metadata is not JSON (\(error))")
                }
                guard case .object(let metadata) = json else { throw Failure("the metadata is not a JSON object") }
                return RelatedUpload(metadata: metadata, metadataBytes: found[0].content, media: found[1].content)
            }
        }.get()
    }

    /// SHA-256 (hex) of the upload without its boundary — the metadata's canonical JSON and the media's
    /// bytes, length-prefixed — so the same send repeated under a new boundary (every client draws one
    /// per request) is the same call to an approval, the loop breaker and the idempotency ledger. nil for
    /// a body that is not a well-formed upload.
    public static func canonicalDigest(_ body: ByteBuffer, contentType: String, media mediaType: String) -> String? {
        guard let upload = (try? parse(body, contentType: contentType, media: mediaType)) ?? nil else { return nil }
        return body.withUnsafeReadableBytes { bytes -> String? in
            guard let text = JSONValue.canonicalText(UnsafeRawBufferPointer(rebasing: bytes[upload.metadataBytes])) else { return nil }
            let metadata = Array(text.utf8)
            var hash = SHA256()
            for piece in [Array("multipart/related\n\(metadata.count):".utf8), metadata, Array("\n\(upload.media.count):".utf8)] {
                hash.update(data: piece)
            }
            hash.update(bufferPointer: UnsafeRawBufferPointer(rebasing: bytes[upload.media]))
            return Digest.hex(hash.finalize())
        }
    }
}
