import NIOHTTP1

/// How a request reached the sidecar. All three forms become the same `ToolCall`.
public enum Entry: String, Sendable, Hashable {
    /// `HTTP_PROXY` clients: absolute-form request-target (`GET http://serpapi.com/search?...`).
    case forward
    /// SDKs with a base URL: `/openai/v1/...`, `/serpapi/...`, `/gmail/...`, `/fetch?url=`.
    case reverse
    /// `POST /api/proxy-request {tool, action, params}` as the 4Runr SDKs send it.
    case compat
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

    /// Reverse-route prefixes whose rest is the upstream path, with their trailing slash.
    private static let reversePrefixes: [(Tool, String)] = [(.openai, Tool.openai.reversePrefix + "/"), (.serpapi, Tool.serpapi.reversePrefix + "/")]

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

    private func classifyOriginForm(method: HTTPMethod, uri: String) -> Result<Classification, ClassificationError> {
        // Byte-wise: request-targets are ASCII (the decoder refuses anything else), and comparing
        // Characters would cost a grapheme walk per request.
        let path: Substring
        let query: String?
        if let q = uri.utf8.firstIndex(of: UInt8(ascii: "?")) {
            path = uri[..<q]
            query = String(uri[uri.utf8.index(after: q)...])
        } else {
            path = Substring(uri)
            query = nil
        }
        if path.utf8.elementsEqual("/api/proxy-request".utf8) {
            return method == .POST ? .success(.compat) : .failure(.methodNotAllowed(allowed: ["POST"]))
        }
        if path.utf8.elementsEqual("/fetch".utf8) {
            guard let raw = QueryString(parsing: query).first("url"), !raw.isEmpty else {
                return .failure(.invalidTarget("/fetch needs a url query parameter"))
            }
            do {
                let target = try TargetURL.parse(raw)
                return .success(.tool(entry: .reverse, tool: .httpFetch, path: target.path, query: target.query, target: target))
            } catch {
                return .failure(.invalidTarget(error.reason))
            }
        }
        for (tool, prefix) in Self.reversePrefixes where path.utf8.starts(with: prefix.utf8) {
            let rest = path.utf8.index(path.utf8.startIndex, offsetBy: prefix.utf8.count - 1)
            return .success(.tool(entry: .reverse, tool: tool, path: String(path[rest...]), query: query, target: nil))
        }
        // Gmail's real API paths start with /gmail/v1/, so the prefix is kept in the upstream path.
        if path.utf8.starts(with: "/gmail/".utf8) {
            return .success(.tool(entry: .reverse, tool: .gmailSend, path: String(path), query: query, target: nil))
        }
        return .failure(.routeNotFound)
    }
}
