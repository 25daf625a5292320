import NIOHTTP1
import Upstreams

/// Header fields the sidecar reads as one value. Per RFC 9110 §5.3 two lines of a field are one
/// comma-joined list, which is not one value: with `X-Agent-Id: <token's agent>` followed by
/// `X-Agent-Id: other`, a check of the first line would pass what the second contradicts. So a repeated
/// field — or, where a comma can never be part of one value, a list-valued one — is refused with 400
/// `ambiguous_header` before anything reads it.
enum SingleValuedFields {
    /// The field, and whether a comma in its value is a list (refused) rather than part of the value.
    static let always: [(name: String, noLists: Bool)] = [
        ("x-agent-id", true), ("x-agent-token", true), ("x-run-id", true), ("x-request-timeout", true), ("x-request-id", false),
        ("traceparent", false), ("proxy-authorization", false), ("host", false),
    ]

    /// `Authorization` carries the token on reverse routes and the compatibility API (on the proxy entries
    /// it belongs to the destination); the compatibility API reads its `Content-Type`.
    static func problem(in headers: HTTPHeaders, entry: Entry?) -> GatewayError? {
        let tokenInAuthorization = entry == .reverse || entry == .compat
        var seen = [Bool](repeating: false, count: always.count + 2)
        for (name, value) in headers {
            var index: Int?
            var noLists = false
            for (k, field) in always.enumerated() where HeaderName.equalsIgnoringCase(name, field.name) {
                (index, noLists) = (k, field.noLists)
                break
            }
            if index == nil, tokenInAuthorization, HeaderName.equalsIgnoringCase(name, "authorization") { index = always.count }
            if index == nil, entry == .compat, HeaderName.equalsIgnoringCase(name, "content-type") { index = always.count + 1 }
            guard let k = index else { continue }
            if seen[k] { return GatewayError(.ambiguousHeader, "the \(name.lowercased()) field is repeated; send it once") }
            seen[k] = true
            if noLists, value.utf8.contains(UInt8(ascii: ",")) {
                return GatewayError(.ambiguousHeader, "the \(name.lowercased()) field holds a list; send one value")
            }
        }
        return nil
    }
}
