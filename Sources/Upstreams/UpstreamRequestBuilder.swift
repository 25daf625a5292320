import NIOCore
import NIOHTTP1

/// Where a tool's calls go.
public struct ToolEndpoint: Sendable, Hashable {
    /// Base URL of a brokered tool's API (`https://api.openai.com`); may carry a path prefix.
    public var baseURL: TargetURL
    /// For `http_fetch`: send to `https` even when the agent asked for `http`.
    public var upgradeFetchToHTTPS: Bool

    public init(baseURL: TargetURL, upgradeFetchToHTTPS: Bool = false) {
        self.baseURL = baseURL
        self.upgradeFetchToHTTPS = upgradeFetchToHTTPS
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
        if call.tool == .httpFetch, let target = call.request.target {
            url = target
            if endpoint.upgradeFetchToHTTPS, url.scheme == "http" {
                let wasDefault = url.isDefaultPort
                url.scheme = "https"
                if wasDefault { url.port = 443 }
            }
        } else {
            url = endpoint.baseURL
            let prefix = url.path == "/" ? "" : (url.path.hasSuffix("/") ? String(url.path.dropLast()) : url.path)
            url.path = prefix + call.request.path
            let query = call.request.query.encoded
            url.query = query.isEmpty ? nil : query
        }
        let headers = HeaderRules.upstreamHeaders(from: call.request.headers, tool: call.tool, target: url, requestID: requestID)
        return UpstreamRequest(
            call: call, method: call.request.method, url: url, headers: headers, body: call.request.body, deadline: deadline)
    }
}
