import Foundation

/// `upstream.proxy`: the HTTP proxy the sidecar's brokered calls leave through — a corporate egress proxy,
/// where the host has no route to the internet of its own. An `https://` upstream is reached through a
/// `CONNECT` tunnel (TLS end to end: the proxy sees the host name, never the credential); a cleartext one
/// as an absolute-form request. The proxy's own credentials (`http://user:password@host:port`) go in
/// `Proxy-Authorization: Basic` and are never printed: `description` names only that there are some.
public struct UpstreamProxy: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?

    public init(host: String, port: Int, username: String? = nil, password: String? = nil) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
    }

    public var description: String { "http://\(username == nil ? "" : "[credentials]@")\(host.contains(":") ? "[\(host)]" : host):\(port)" }

    /// `http://[user[:password]@]host:port[/]`; the reason otherwise (which never repeats the text: it may
    /// hold a password).
    public static func parse(_ text: String) -> Result<UpstreamProxy, ProxyURLError> {
        guard text.lowercased().hasPrefix("http://") else {
            return .failure(.init(text.contains("://") ? "only an http:// proxy is supported (the tunnel to an https upstream is TLS end to end)" : "expected http://host:port"))
        }
        var authority = Substring(text.dropFirst("http://".count))
        if authority.hasSuffix("/") { authority = authority.dropLast() }
        guard !authority.contains(where: { $0 == "/" || $0 == "?" || $0 == "#" || $0.isWhitespace }) else {
            return .failure(.init("expected http://host:port, without a path"))
        }
        var username: String?
        var password: String?
        if let at = authority.lastIndex(of: "@") {
            let userinfo = authority[..<at]
            authority = authority[authority.index(after: at)...]
            let parts = userinfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            // Percent-decoded as a Redis URL's userinfo is (`removingPercentEncoding`: nil for a broken escape).
            guard let user = String(parts[0]).removingPercentEncoding, !user.isEmpty,
                let pass = parts.count == 2 ? String(parts[1]).removingPercentEncoding : ""
            else {
                return .failure(.init("the proxy's user name and password must be percent-encoded"))
            }
            username = user
            password = pass
        }
        let host: Substring
        let portText: Substring
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]"), authority[authority.index(after: close)...].hasPrefix(":") else {
                return .failure(.init("expected http://[ipv6]:port"))
            }
            host = authority[authority.index(after: authority.startIndex)..<close]
            portText = authority[authority.index(close, offsetBy: 2)...]
        } else {
            guard let colon = authority.lastIndex(of: ":") else { return .failure(.init("the proxy needs a port (http://host:port)")) }
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        }
        guard !host.isEmpty, !host.contains(":") || authority.hasPrefix("[") else { return .failure(.init("expected http://host:port")) }
        guard let port = Int(portText), (1...65535).contains(port), portText.allSatisfy(\.isASCII) else {
            return .failure(.init("the proxy needs a port from 1 to 65535 (http://host:port)"))
        }
        return .success(UpstreamProxy(host: String(host), port: port, username: username, password: password))
    }
}

/// Why an `upstream.proxy` value was refused.
public struct ProxyURLError: Error, Sendable, Hashable {
    public var reason: String
    init(_ reason: String) { self.reason = reason }
}
