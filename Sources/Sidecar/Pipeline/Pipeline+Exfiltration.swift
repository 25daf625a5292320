import NIOCore
import Upstreams

/// The exfiltration stage: before anything is sent, the agent's URL, every header and the body are
/// searched for the exact secrets the sidecar holds (`SecretCatalog`) and for canaries. An agent never
/// needs a credential the sidecar injects, so one in its call is a leak in progress (a prompt injection
/// posting the key somewhere) — refused, never sent, counted as a security event.
///
/// What the sidecar replaces is not outbound and is not searched: a brokered tool's own credential slot
/// (`Authorization` for OpenAI and Gmail, `api_key` for SerpAPI) is removed and written anew, so an SDK
/// still configured with the real key reaches its API (through the sidecar's key) and leaks nothing.
extension Pipeline {
    func checkExfiltration(_ request: InboundRequest, tool: Tool?) throws(GatewayError) {
        guard let secrets else { return }
        let scanner = secrets.scanner
        guard !scanner.isEmpty, let finding = Self.find(in: request, tool: tool, scanner) else { return }
        metrics?.securityEvent(finding.canary ? "canary" : "exfiltration")
        throw GatewayError(
            .secretExfiltration,
            "the call carries \(finding); it was not sent. Agents never need the credentials the sidecar injects")
    }

    static func find(in request: InboundRequest, tool: Tool?, _ scanner: ExfiltrationScanner) -> ExfiltrationScanner.Finding? {
        let uri = tool == .serpapi ? withoutParameter("api_key", in: request.head.uri) : request.head.uri
        if let f = scanner.scan(uri, location: "URL") { return f }
        let replaced = tool == .openai || tool == .gmailSend
        for (name, value) in request.head.headers {
            if replaced, HeaderName.equalsIgnoringCase(name, "authorization") { continue }
            if let f = scanner.scan(value, location: "\(name) header") { return f }
        }
        return request.body?.withUnsafeReadableBytes { scanner.scan($0, location: "body") }
    }

    /// The target without the query parameter the adapter overwrites, read as the adapter reads it
    /// (`QueryString`: names percent-decoded, so `api%5Fkey` is the same parameter).
    static func withoutParameter(_ name: String, in uri: String) -> String {
        guard let q = uri.firstIndex(of: "?") else { return uri }
        var query = QueryString(parsing: String(uri[uri.index(after: q)...]))
        query.removeAll(named: name)
        let rest = query.encoded
        return String(uri[..<q]) + (rest.isEmpty ? "" : "?" + rest)
    }
}
