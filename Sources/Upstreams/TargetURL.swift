/// An absolute `http`/`https` URL split into the parts a proxy decides on.
///
/// We parse URLs ourselves instead of using Foundation's `URL` because a proxy must agree with itself
/// about where a request goes: the host we classify, check and log is exactly the host we connect to.
/// Userinfo (`http://user:pass@host/`) is refused, as RFC 9110 §4.2.4 asks of a URL from an untrusted
/// source: it is the classic way to make a URL look like it points somewhere else
/// (`http://api.openai.com@evil.test/`), and dropping it silently would send a call without the
/// credentials its author put there. Fragments are dropped (they never go on the wire).
public struct TargetURL: Sendable, Hashable, CustomStringConvertible {
    public var scheme: String
    /// Lowercased host name, or an IP literal (IPv6 without brackets).
    public var host: String
    public var port: Int
    /// Always starts with `/`.
    public var path: String
    /// The raw query without the leading `?`, or nil.
    public var query: String?

    public init(scheme: String, host: String, port: Int? = nil, path: String = "/", query: String? = nil) {
        self.scheme = scheme.lowercased()
        self.host = host.lowercased()
        self.port = port ?? TargetURL.defaultPort(for: self.scheme)
        self.path = path.isEmpty ? "/" : path
        self.query = query
    }

    public static func defaultPort(for scheme: String) -> Int { scheme == "https" ? 443 : 80 }

    public var isDefaultPort: Bool { port == TargetURL.defaultPort(for: scheme) }

    public var hostIsIPv6: Bool { host.utf8.contains(UInt8(ascii: ":")) }

    /// `host[:port]` as it belongs in a `Host` header (port omitted when it is the scheme's default).
    public var authority: String {
        let h = hostIsIPv6 ? "[\(host)]" : host
        return isDefaultPort ? h : "\(h):\(port)"
    }

    /// Path plus query: the request-target in origin form.
    public var pathAndQuery: String {
        guard let query else { return path }
        return "\(path)?\(query)"
    }

    public var description: String { "\(scheme)://\(authority)\(pathAndQuery)" }

    /// Parses an absolute URL. Only `http` and `https` are accepted.
    public static func parse(_ string: String) throws(TargetURLError) -> TargetURL {
        guard string.utf8.count <= 8192 else { throw .init("URL is too long") }
        guard let schemeEnd = string.range(of: "://") else { throw .init("URL must be absolute (scheme://host/...)") }
        let scheme = string[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { throw .init("scheme must be http or https") }
        var rest = string[schemeEnd.upperBound...]
        if let hash = rest.firstIndex(of: "#") { rest = rest[..<hash] }
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        let tail = rest[authorityEnd...]
        guard !authority.utf8.contains(UInt8(ascii: "@")) else {
            throw .init("URL must not carry userinfo (user:password@host); credentials go in a header")
        }
        guard !authority.isEmpty else { throw .init("URL has no host") }

        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw .init("unterminated IPv6 literal") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw .init("garbage after IPv6 literal") }
                portText = after.dropFirst()
            }
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                throw .init("invalid IPv6 literal")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        if !authority.hasPrefix("[") {
            guard !host.isEmpty, host.utf8.count <= 253,
                host.unicodeScalars.allSatisfy({ $0.isASCII && (TargetURL.hostCharacters.contains($0)) })
            else { throw .init("invalid host") }
        }
        var port: Int?
        if let portText {
            if portText.isEmpty {
                port = nil
            } else {
                guard portText.count <= 5, let p = Int(portText), (1...65535).contains(p) else {
                    throw .init("invalid port")
                }
                port = p
            }
        }
        var path = ""
        var query: String?
        if let q = tail.firstIndex(of: "?") {
            path = String(tail[..<q])
            query = String(tail[tail.index(after: q)...])
        } else {
            path = String(tail)
        }
        guard path.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }),
            (query ?? "").unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F })
        else { throw .init("URL contains characters that must be percent-encoded") }
        return TargetURL(scheme: scheme, host: String(host), port: port, path: path.isEmpty ? "/" : path, query: query)
    }

    private static let hostCharacters: Set<Unicode.Scalar> = {
        var set = Set<Unicode.Scalar>()
        for s in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_".unicodeScalars { set.insert(s) }
        return set
    }()
}

/// Why a URL was not accepted; the text is safe to show to the agent (it never echoes the URL).
public struct TargetURLError: Error, Sendable, Hashable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}
