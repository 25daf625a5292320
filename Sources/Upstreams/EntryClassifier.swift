import NIOHTTP1

/// How a request reached the sidecar. All three forms become the same `ToolCall`.
public enum Entry: String, Sendable, Hashable {
    /// `HTTP_PROXY` clients: absolute-form request-target (`GET http://serpapi.com/search?...`).
    case forward
    /// SDKs with a base URL: `/openai/v1/...`, `/serpapi/...`, `/gmail/...`, `/fetch?url=`.
    case reverse
    /// `POST /api/proxy-request {tool, action, params}` as the 4Runr SDKs send it.
    case compat
    /// `HTTPS_PROXY` clients: a request decrypted inside an intercepted `CONNECT` tunnel (and the
    /// `CONNECT` itself when it is refused).
    case tunnel
    /// A `CONNECT` tunnel to a pass-through host: relayed without interception, one line per tunnel.
    case passthrough

    /// Entries where the agent talks to the sidecar as to a proxy: authentication failures are 407 with
    /// `Proxy-Authenticate`, and the agent's own `Authorization` belongs to the destination.
    public var isProxy: Bool { self == .forward || self == .tunnel || self == .passthrough }
}

/// The result of looking at the request line only (method and request-target).
public enum Classification: Sendable, Hashable {
    /// A tool call whose upstream path (and, for `http_fetch`, destination) is known.
    case tool(entry: Entry, tool: Tool, path: String, query: String?, target: TargetURL?)
    /// The compatibility API: the tool is named in the JSON body.
    case compat
    /// A `CONNECT host:port` tunnel request.
    case connect(authority: String)
}

/// Why the request line could not be classified. All are the agent's mistakes (4xx).
public enum ClassificationError: Error, Sendable, Hashable {
    /// Origin-form path that matches no route (404).
    case routeNotFound
    /// Right path, wrong method (405).
    case methodNotAllowed(allowed: [String])
    /// The request-target or the `/fetch?url=` destination is not a usable URL (400).
    case invalidTarget(String)
    /// Inside a tunnel: the request names another host than the one the tunnel was opened to (421).
    case misdirected(String)
}

/// Maps a request line to an entry form and a tool. Pure: the tool host lists come from configuration.
///
/// Forward-proxy requests are classified by upstream host (exact, case-insensitive match against each
/// tool's host list; any other host is `http_fetch`). Reverse routes are classified by path prefix.
public struct EntryClassifier: Sendable {
    private let toolByHost: [String: Tool]

    /// - Parameter hosts: For each brokered tool, the upstream host names that identify it.
    public init(hosts: [Tool: [String]]) {
        var map: [String: Tool] = [:]
        for (tool, names) in hosts where tool != .httpFetch {
            for name in names { map[name.lowercased()] = tool }
        }
        self.toolByHost = map
    }

    public static let defaultHosts: [Tool: [String]] = [
        .serpapi: ["serpapi.com"],
        .openai: ["api.openai.com"],
        .gmailSend: ["gmail.googleapis.com"],
    ]

    /// Reverse-route prefixes whose rest is the upstream path, with their trailing slash, as bytes.
    private static let reversePrefixes: [(Tool, [UInt8])] = [
        (.openai, Array((Tool.openai.reversePrefix + "/").utf8)), (.serpapi, Array((Tool.serpapi.reversePrefix + "/").utf8)),
    ]

    public func tool(forHost host: String) -> Tool { toolByHost[host.lowercased()] ?? .httpFetch }

    public func classify(method: HTTPMethod, uri: String) -> Result<Classification, ClassificationError> {
        if method == .CONNECT { return .success(.connect(authority: uri)) }
        if uri.hasPrefix("/") { return classifyOriginForm(method: method, uri: uri) }
        let lower = uri.prefix(8).lowercased()
        if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
            let target: TargetURL
            do { target = try TargetURL.parse(uri) } catch { return .failure(.invalidTarget(error.reason)) }
            let tool = tool(forHost: target.host)
            return .success(
                .tool(
                    entry: .forward, tool: tool, path: target.path, query: target.query,
                    target: tool == .httpFetch ? target : nil))
        }
        return .failure(.invalidTarget("request-target must be origin-form (/path) or absolute-form (http://host/path)"))
    }

    /// Classifies a request read inside a `CONNECT` tunnel to `tunnel`: it goes to
    /// `https://host[:port]` plus its origin-form target, as a forward-proxy request to that URL would.
    /// An absolute-form target must name the tunnel's own origin (refused as misdirected otherwise: a
    /// tunnel opened to one host never carries requests for another), and so must a `Host` field.
    public func classifyTunneled(method: HTTPMethod, uri: String, host hostField: String?, tunnel: ConnectTarget)
        -> Result<Classification, ClassificationError>
    {
        guard method != .CONNECT else { return .failure(.misdirected("CONNECT inside a tunnel is not allowed")) }
        let origin = TargetURL(scheme: "https", host: tunnel.host, port: tunnel.port)
        var target: TargetURL
        if uri.utf8.first == UInt8(ascii: "/") {
            let utf8 = uri.utf8
            let q = utf8.firstIndex(of: UInt8(ascii: "?"))
            target = origin
            target.path = String(Substring(utf8[..<(q ?? utf8.endIndex)]))
            target.query = q.map { String(Substring(utf8[utf8.index(after: $0)...])) }
        } else {
            let lower = uri.prefix(8).lowercased()
            guard lower.hasPrefix("https://") || lower.hasPrefix("http://") else {
                return .failure(.invalidTarget("request-target must be origin-form (/path) inside a tunnel"))
            }
            do { target = try TargetURL.parse(uri) } catch { return .failure(.invalidTarget(error.reason)) }
            guard target.scheme == "https", target.host == origin.host, target.port == origin.port else {
                return .failure(.misdirected("the request names another origin than the tunnel's (\(tunnel))"))
            }
        }
        if let hostField, !Self.sameAuthority(hostField, origin) {
            return .failure(.misdirected("the Host field names another host than the tunnel's (\(tunnel))"))
        }
        let tool = tool(forHost: tunnel.host)
        return .success(.tool(entry: .tunnel, tool: tool, path: target.path, query: target.query, target: tool == .httpFetch ? target : nil))
    }

    /// Whether a `Host` field value (`host[:port]`, RFC 9110 §7.2) names `origin`: the host compared
    /// ignoring ASCII case and a trailing dot, the port defaulting to the scheme's. Read byte-wise on
    /// the field's own bytes, because it runs for every request of every tunnel (parsing it as a URL
    /// cost ~2 µs, 6 % of an intercepted request). Anything that is not exactly an authority — userinfo,
    /// a path, a query, a sign or space in the port — names no origin.
    static func sameAuthority(_ field: String, _ origin: TargetURL) -> Bool {
        var field = field
        var want = origin.host
        return field.withUTF8 { b in
            want.withUTF8 { want in
                var hostStart = 0, hostEnd = b.count, portStart = b.count
                if b.first == UInt8(ascii: "[") {
                    guard let close = b.firstIndex(of: UInt8(ascii: "]")) else { return false }
                    hostStart = 1
                    hostEnd = close
                    if close + 1 < b.count {
                        guard b[close + 1] == UInt8(ascii: ":") else { return false }
                        portStart = close + 2
                    }
                } else if let colon = b.lastIndex(of: UInt8(ascii: ":")) {
                    // An IPv6 literal names an origin only in brackets (`::1:443` is no authority).
                    guard b.firstIndex(of: UInt8(ascii: ":")) == colon else { return false }
                    hostEnd = colon
                    portStart = colon + 1
                }
                if hostEnd > hostStart, b[hostEnd - 1] == UInt8(ascii: "."), b.first != UInt8(ascii: "[") { hostEnd -= 1 }
                guard hostEnd - hostStart == want.count else { return false }
                for i in 0..<want.count where HeaderName.lower(b[hostStart + i]) != want[i] { return false }
                // An empty port (`host:`) is the default one, as in a URL (RFC 3986 §3.2.3).
                guard portStart < b.count else { return origin.port == TargetURL.defaultPort(for: origin.scheme) }
                guard b.count - portStart <= 5 else { return false }
                var port = 0
                for i in portStart..<b.count {
                    guard b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") else { return false }
                    port = port * 10 + Int(b[i] - UInt8(ascii: "0"))
                }
                return port == origin.port
            }
        }
    }

    private func classifyOriginForm(method: HTTPMethod, uri: String) -> Result<Classification, ClassificationError> {
        // Byte-wise, on the target's own bytes: request-targets are ASCII (the decoder refuses anything
        // else), comparing Characters would cost a grapheme walk, and String.UTF8View indices a check
        // per step; only the path and query that are kept become strings.
        var uri = uri
        return uri.withUTF8 { bytes in
            let q = bytes.firstIndex(of: UInt8(ascii: "?"))
            let path = UnsafeBufferPointer(rebasing: bytes[..<(q ?? bytes.count)])
            let query = q.map { String(decoding: UnsafeBufferPointer(rebasing: bytes[($0 + 1)...]), as: UTF8.self) }
            if Self.bytes(path, equal: "/api/proxy-request") {
                return method == .POST ? .success(.compat) : .failure(.methodNotAllowed(allowed: ["POST"]))
            }
            if Self.bytes(path, equal: "/fetch") {
                guard let raw = QueryString(parsing: query).first("url"), !raw.isEmpty else {
                    return .failure(.invalidTarget("/fetch needs a url query parameter"))
                }
                do throws(TargetURLError) {
                    let target = try TargetURL.parse(raw)
                    return .success(.tool(entry: .reverse, tool: .httpFetch, path: target.path, query: target.query, target: target))
                } catch {
                    return .failure(.invalidTarget(error.reason))
                }
            }
            for (tool, prefix) in Self.reversePrefixes where path.starts(with: prefix) {
                // The upstream path keeps the prefix's trailing slash.
                let rest = String(decoding: UnsafeBufferPointer(rebasing: path[(prefix.count - 1)...]), as: UTF8.self)
                return .success(.tool(entry: .reverse, tool: tool, path: rest, query: query, target: nil))
            }
            // Gmail's real API paths start with /gmail/v1/ (media uploads /upload/gmail/v1/), so the prefix is
            // kept in the upstream path.
            if path.starts(with: "/gmail/".utf8) || path.starts(with: "/upload/gmail/".utf8) {
                return .success(.tool(entry: .reverse, tool: .gmailSend, path: String(decoding: path, as: UTF8.self), query: query, target: nil))
            }
            return .failure(.routeNotFound)
        }
    }

    private static func bytes(_ bytes: UnsafeBufferPointer<UInt8>, equal literal: StaticString) -> Bool {
        bytes.count == literal.utf8CodeUnitCount
            && bytes.elementsEqual(UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
    }
}
