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
            // The location is named only for a finding (not built for every header of every call).
            if var f = scanner.scan(value, location: "") {
                f.location = "\(name) header"
                return f
            }
        }
        return request.body?.withUnsafeReadableBytes { scanner.scan($0, location: "body") }
    }

    /// The target without the query parameter the adapter overwrites, read as the adapter reads it
    /// (`QueryString`: names percent-decoded, so `api%5Fkey` is the same parameter).
    static func withoutParameter(_ name: String, in uri: String) -> String {
        guard let q = uri.firstIndex(of: "?") else { return uri }
        // Nothing to remove when the parameter's name is not in the query as is and nothing in it is
        // percent-encoded (the common call): the target unchanged, without parsing and re-encoding it.
        if !mayName(name, query: uri.utf8[uri.utf8.index(after: q)...]) { return uri }
        var query = QueryString(parsing: String(uri[uri.index(after: q)...]))
        query.removeAll(named: name)
        let rest = query.encoded
        return String(uri[..<q]) + (rest.isEmpty ? "" : "?" + rest)
    }

    /// Whether a query may hold a parameter `name` (no `%` or `+` in it): only if the query has a `%`
    /// (any byte of a name may come percent-encoded) or the name's bytes as they are.
    static func mayName(_ name: String, query: Substring.UTF8View) -> Bool {
        var name = name
        return name.withUTF8 { n in
            query.withContiguousStorageIfAvailable { q in
                if q.contains(UInt8(ascii: "%")) { return true }
                guard !n.isEmpty, n.count <= q.count else { return n.isEmpty }
                for i in 0...(q.count - n.count) where q[i] == n[0] {
                    if UnsafeBufferPointer(rebasing: q[i..<(i + n.count)]).elementsEqual(n) { return true }
                }
                return false
            } ?? true
        }
    }
}
