/// The target of a `CONNECT` request: its authority-form request-target (RFC 9110 §9.3.6), `host:port`
/// with both parts required.
///
/// Parsed strictly, because everything the sidecar decides about a tunnel — the tool, the policy, the
/// egress check, the leaf certificate's name and the SNI comparison — keys on this one host: userinfo,
/// a path, a missing or empty port, a bare `host`, an unterminated or unbracketed IPv6 literal and
/// anything outside the host-name alphabet are refused rather than guessed at.
public struct ConnectTarget: Sendable, Hashable, CustomStringConvertible {
    /// Lowercased host name without a trailing dot, or an IP literal (IPv6 without brackets).
    public var host: String
    public var port: Int
    /// The address when the host is an IP literal (in any of the forms permissive clients accept).
    public var ip: IPAddress?

    public static func parse(_ text: String) throws(TargetURLError) -> ConnectTarget {
        guard !text.isEmpty, text.utf8.count <= 261 else { throw .init("CONNECT needs host:port") }
        guard !text.utf8.contains(where: { $0 == UInt8(ascii: "@") }) else { throw .init("CONNECT target must not carry userinfo") }
        guard !text.utf8.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") }) else {
            throw .init("CONNECT target must be host:port (authority form), not a URL")
        }
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .init("unterminated IPv6 literal") }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            guard after.hasPrefix(":") else { throw .init("CONNECT needs host:port") }
            portText = after.dropFirst()
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }), IPAddress.parse(String(host)) != nil else {
                throw .init("invalid IPv6 literal")
            }
        } else {
            let colons = text.utf8.filter { $0 == UInt8(ascii: ":") }.count
            guard colons == 1, let colon = text.firstIndex(of: ":") else {
                throw .init(colons == 0 ? "CONNECT needs host:port" : "an IPv6 literal must be in brackets")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy(\.isASCII), portText.allSatisfy(\.isNumber),
            let port = Int(portText), (1...65535).contains(port)
        else { throw .init("invalid port") }
        var name = host.lowercased()
        let ip = IPAddress.parse(name)
        if ip == nil {
            if name.hasSuffix(".") { name.removeLast() }
            guard Self.isHostName(name) else { throw .init("invalid host") }
            // Numeric forms no resolver agrees on (`1.2.3.4.5`, `0x1g`) are refused, never resolved.
            guard !name.allSatisfy({ $0.isNumber || $0 == "." || $0 == "x" }) else { throw .init("invalid host") }
        }
        return ConnectTarget(host: name, port: port, ip: ip)
    }

    /// Whether an operator's host (a listen address, a Redis server; IPv6 without brackets) is an IP
    /// literal or a host name — so `local host` or an unbalanced `[::1` is a configuration error, not
    /// a lookup that fails at run time.
    public static func isHost(_ s: String) -> Bool {
        IPAddress.parse(s) != nil || isHostName(s.hasSuffix(".") ? String(s.lowercased().dropLast()) : s.lowercased())
    }

    /// `host:port` as it was asked for (IPv6 bracketed).
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Labels of letters, digits, `-` and `_`, none empty, none over 63 bytes, the whole at most 253.
    public static func isHostName(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 253 else { return false }
        for label in s.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.count <= 63, label.first != UInt8(ascii: "-"), label.last != UInt8(ascii: "-"),
                label.allSatisfy({ b in
                    (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
                        || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
                })
            else { return false }
        }
        return true
    }

    /// Whether a TLS ClientHello's server name names this target (case-insensitive, a trailing dot
    /// ignored).
    public func matches(serverName: String) -> Bool {
        var sni = serverName.lowercased()
        if sni.hasSuffix(".") { sni.removeLast() }
        // RFC 6066 forbids an address as a server name; a client that sends one anyway must send this one.
        if let ip { return IPAddress.parse(sni) == ip }
        return sni == host
    }
}
