/// Just enough RFC 5322 to guard an outgoing email: header fields (unfolded), recipients, body size.
///
/// Gmail's `users.messages.send` takes the whole message as base64url in `raw`, so the sidecar must
/// read the message to know who it is sent to.
public struct RFC2822Message: Sendable, Hashable {
    public var headers: [(name: String, value: String)]
    public var bodyBytes: Int
    /// A header line held a CR that is not part of a CRLF line ending.
    public var headerInjection: Bool

    public static func == (l: Self, r: Self) -> Bool {
        l.bodyBytes == r.bodyBytes && l.headerInjection == r.headerInjection
            && l.headers.elementsEqual(r.headers, by: { $0.name == $1.name && $0.value == $1.value })
    }
    public func hash(into h: inout Hasher) {
        h.combine(bodyBytes)
        for x in headers { h.combine(x.name); h.combine(x.value) }
    }

    /// The fields named `name` (any case), in order, compared over bytes: every send reads thirteen names
    /// against each field, and two `lowercased()` copies per comparison were most of reading a message's
    /// recipients. Lazy: counting them makes nothing.
    func fields(_ name: String) -> some Collection<(name: String, value: String)> {
        headers.lazy.filter { HeaderName.equalsIgnoringCase($0.name, name) }
    }

    public func values(_ name: String) -> [String] { fields(name).map(\.value) }

    /// Fields that carry recipients: a message is delivered to every address in any of them.
    public static let recipientFields = ["to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"]
    /// Fields RFC 5322 §3.6 allows at most once; two of them could be read either way.
    public static let singleFields = ["from", "sender", "reply-to", "to", "cc", "bcc", "subject"]

    /// Every recipient, or why the message cannot be judged: a single-valued field given twice, or a
    /// recipient field that is not clearly a list of addresses (see `AddressList`).
    public func checkedRecipients() -> Result<[MailAddress], ToolRequestError> {
        for name in Self.singleFields where fields(name).count > 1 {
            return .failure(.ambiguousParameter("raw: the message has more than one \(name) field"))
        }
        var out: [MailAddress] = []
        for name in Self.recipientFields {
            for value in values(name) {
                guard let addresses = AddressList.parse(value) else {
                    return .failure(.invalidParameter("raw: the \(name) field is not a list of addresses the sidecar can read"))
                }
                out += addresses
            }
        }
        return .success(out)
    }

    public static func parse(_ bytes: [UInt8]) -> RFC2822Message? {
        // The header section ends at the first empty line (CRLF CRLF, or LF LF as many libraries write).
        var end = bytes.count
        var bodyStart = bytes.count
        var i = 0
        while i < bytes.count {
            if bytes[i] == 10 {
                if i + 1 < bytes.count, bytes[i + 1] == 10 { end = i; bodyStart = i + 2; break }
                if i + 2 < bytes.count, bytes[i + 1] == 13, bytes[i + 2] == 10 { end = i; bodyStart = i + 3; break }
            }
            i += 1
        }
        // Split on LF as bytes: in a Swift String "\r\n" is one Character and would not split.
        var injection = false
        var headers: [(name: String, value: String)] = []
        for rawLine in bytes[0..<end].split(separator: 10, omittingEmptySubsequences: false) {
            var line = rawLine[...]
            if line.last == 13 { line = line.dropLast() }
            if line.contains(13) { injection = true }
            guard let text = String(validating: line, as: UTF8.self) else { return nil }
            guard !text.isEmpty else { continue }
            if text.first == " " || text.first == "\t" {
                guard !headers.isEmpty else { return nil }
                headers[headers.count - 1].value += " " + text[...].trimmedOWS
                continue
            }
            guard let colon = text.firstIndex(of: ":") else { return nil }
            // obs-optional (RFC 5322 §4.5.3): white space may stand between a field's name and its colon,
            // and `Bcc\t:` is a Bcc field to any mail system.
            var name = text[..<colon]
            while name.last == " " || name.last == "\t" { name = name.dropLast() }
            guard !name.isEmpty, name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else { return nil }
            headers.append((String(name), text[text.index(after: colon)...].trimmedOWS))
        }
        guard !headers.isEmpty else { return nil }
        return RFC2822Message(headers: headers, bodyBytes: max(0, bytes.count - bodyStart), headerInjection: injection)
    }

    /// Addresses in an address-list header value (`a@b.c, "Doe, J" <j@d.e>, Group: x@y.z;`), or nil when
    /// it is not clearly one.
    public static func addresses(in value: String) -> [String]? { AddressList.parse(value)?.map(\.description) }

    /// Composes a plain-text message from structured fields (the compatibility API).
    /// Values containing CR or LF are refused: composing them would let a caller inject headers.
    public static func compose(
        from: String?, to: [String], cc: [String], bcc: [String], subject: String, body: String
    ) -> Result<[UInt8], ToolRequestError> {
        for v in [from ?? "", subject] + to + cc + bcc where v.hasLineBreak {
            return .failure(.invalidParameter("header values must not contain CR or LF"))
        }
        guard !to.isEmpty else { return .failure(.invalidParameter("params.to is required")) }
        var text = ""
        if let from { text += "From: \(from)\r\n" }
        text += "To: \(to.joined(separator: ", "))\r\n"
        if !cc.isEmpty { text += "Cc: \(cc.joined(separator: ", "))\r\n" }
        if !bcc.isEmpty { text += "Bcc: \(bcc.joined(separator: ", "))\r\n" }
        text += "Subject: \(subject)\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        text += body.replacingCRLF()
        return .success(Array(text.utf8))
    }
}

extension String {
    fileprivate func trimmingSuffix(_ s: String) -> String {
        var x = self
        while x.hasSuffix(s) { x.removeLast(s.count) }
        return x
    }

    /// Normalizes line endings to CRLF, as RFC 5322 requires.
    fileprivate func replacingCRLF() -> String {
        var out = ""
        var lastWasCR = false
        for ch in self.unicodeScalars {
            if ch == "\n", !lastWasCR { out += "\r\n" } else { out.unicodeScalars.append(ch) }
            lastWasCR = ch == "\r"
        }
        return out
    }
}

extension StringProtocol {
    /// CR or LF anywhere, checked on bytes (a Swift `Character` may be the pair "\r\n").
    public var hasLineBreak: Bool { utf8.contains(13) || utf8.contains(10) }
}
