import NIOCore
import NIOHTTP1

/// Where a tool's calls go.
public struct ToolEndpoint: Sendable, Hashable {
    /// Base URL of a brokered tool's API (`https://api.openai.com`); may carry a path prefix.
    public var baseURL: TargetURL {
        didSet { (authority, pathPrefix) = (baseURL.authority, Self.pathPrefix(baseURL)) }
    }
    /// For `http_fetch`: send to `https` even when the agent asked for `http`.
    public var upgradeFetchToHTTPS: Bool
    /// `baseURL.authority`, the `Host` of every call to a brokered tool: formatted once, not per call.
    public private(set) var authority: String
    /// The base URL's path without its trailing slash (empty for `/`): what every call's path goes under.
    public private(set) var pathPrefix: String

    public init(baseURL: TargetURL, upgradeFetchToHTTPS: Bool = false) {
        self.baseURL = baseURL
        self.upgradeFetchToHTTPS = upgradeFetchToHTTPS
        self.authority = baseURL.authority
        self.pathPrefix = Self.pathPrefix(baseURL)
    }

    private static func pathPrefix(_ url: TargetURL) -> String {
        url.path == "/" ? "" : (url.path.hasSuffix("/") ? String(url.path.dropLast()) : url.path)
    }

    public static func defaultBaseURL(for tool: Tool) -> TargetURL {
        switch tool {
        case .serpapi: return TargetURL(scheme: "https", host: "serpapi.com")
        case .openai: return TargetURL(scheme: "https", host: "api.openai.com")
        case .gmailSend: return TargetURL(scheme: "https", host: "gmail.googleapis.com")
        case .httpFetch: return TargetURL(scheme: "https", host: "invalid")
        }
    }
}

/// Turns a classified call into the request that leaves the sidecar. Pure.
public enum UpstreamRequestBuilder {
    public static func build(
        call: ToolCall, endpoint: ToolEndpoint, requestID: String, deadline: NIODeadline
    ) -> UpstreamRequest {
        var url: TargetURL
        var authority = endpoint.authority
        if call.tool == .httpFetch, let target = call.request.target {
            url = target
            if endpoint.upgradeFetchToHTTPS, url.scheme == "http" {
                let wasDefault = url.isDefaultPort
                url.scheme = "https"
                if wasDefault { url.port = 443 }
            }
            authority = url.authority
        } else {
            url = endpoint.baseURL
            url.path = endpoint.pathPrefix.isEmpty ? call.request.path : endpoint.pathPrefix + call.request.path
            let query = call.request.query.encoded
            url.query = query.isEmpty ? nil : query
        }
        let headers = HeaderRules.upstreamHeaders(from: call.request.headers, tool: call.tool, authority: authority, requestID: requestID)
        return UpstreamRequest(
            call: call, method: call.request.method, url: url, headers: headers, body: call.request.body, deadline: deadline)
    }
}
