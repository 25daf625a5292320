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
    /// `query`: the call's query as the tool's adapter reads it (the same parse: what is searched is what
    /// the adapter forwards).
    func checkExfiltration(_ request: InboundRequest, tool: Tool?, query: QueryString? = nil, carrier: TokenCarrier? = nil) throws(GatewayError) {
        guard let secrets else { return }
        let scanner = secrets.scanner
        guard !scanner.isEmpty, let finding = Self.find(in: request, tool: tool, query: query, carrier: carrier, scanner) else { return }
        metrics?.securityEvent(finding.canary ? "canary" : "exfiltration")
        throw GatewayError(
            .secretExfiltration,
            "the call carries \(finding); it was not sent. Agents never need the credentials the sidecar injects")
    }

    /// Only the fields that reach the upstream are searched — by the rule that builds its headers
    /// (`HeaderRules.reachesUpstream`: not the hop-by-hop ones, the sidecar's own controls, or a brokered
    /// tool's credential fields, which the sidecar replaces) — and not `carrier`'s, the fields that carried
    /// the agent's token, which `removingCarrier` takes out before that. The token, a kilobyte in every
    /// call, was most of what the search read (~5 µs per call).
    static func find(
        in request: InboundRequest, tool: Tool?, query: QueryString?, carrier: TokenCarrier? = nil, _ scanner: ExfiltrationScanner
    ) -> ExfiltrationScanner.Finding? {
        let uri = tool == .serpapi ? target(request.head.uri, without: "api_key", query: query) : request.head.uri
        if let f = scanner.scan(uri, location: "URL") { return f }
        let removed = carrier?.fieldName
        for (name, value) in request.head.headers {
            if let tool, !HeaderRules.reachesUpstream(name, tool: tool) { continue }
            if let removed, HeaderName.equalsIgnoringCase(name, removed) { continue }
            // The location is named only for a finding (not built for every header of every call).
            if var f = scanner.scan(value, location: "") {
                f.location = "\(name) header"
                return f
            }
        }
        return request.body?.withUnsafeReadableBytes { scanner.scan($0, location: "body") }
    }

    /// The target without the query parameter the adapter overwrites, read from the query the adapter
    /// itself reads (names percent-decoded: `api%5Fkey` is the same parameter). Without that parameter in
    /// it, the target as it came — not re-encoded.
    static func target(_ uri: String, without name: String, query: QueryString?) -> String {
        guard var query, query.first(name) != nil, let q = uri.firstIndex(of: "?") else { return uri }
        query.removeAll(named: name)
        let rest = query.encoded
        return String(uri[..<q]) + (rest.isEmpty ? "" : "?" + rest)
    }
}
