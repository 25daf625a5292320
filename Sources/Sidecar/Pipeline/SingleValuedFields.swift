#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
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
        ("traceparent", false), ("proxy-authorization", false), ("host", false), ("idempotency-key", true),
    ]

    /// `Authorization` carries the token on reverse routes and the compatibility API (on the proxy entries
    /// it belongs to the destination); the compatibility API reads its `Content-Type`.
    static func problem(in headers: HTTPHeaders, entry: Entry?) -> GatewayError? {
        problem(in: headers.lazy.map { ($0.name, $0.value) }, authorization: entry == .reverse || entry == .compat, contentType: entry == .compat)
    }

    /// The same rule for any list of fields (the admin port's too, which reads `Authorization`,
    /// `Content-Type` and `others`).
    static func problem<Fields: Sequence>(in fields: Fields, authorization: Bool, contentType: Bool, others: [String] = []) -> GatewayError?
    where Fields.Element == (String, String) {
        // Which fields came, as bits (an array of flags was an allocation per request); a set past 64
        // names, which no caller has.
        var seen: UInt64 = 0
        var seenBeyond: Set<Int> = []
        for (name, value) in fields {
            var index: Int?
            var noLists = false
            for (k, field) in always.enumerated() where HeaderName.equalsIgnoringCase(name, field.name) {
                (index, noLists) = (k, field.noLists)
                break
            }
            if index == nil, authorization, HeaderName.equalsIgnoringCase(name, "authorization") { index = always.count }
            if index == nil, contentType, HeaderName.equalsIgnoringCase(name, "content-type") { index = always.count + 1 }
            if index == nil, let k = others.firstIndex(where: { HeaderName.equalsIgnoringCase(name, $0) }) { index = always.count + 2 + k }
            guard let k = index else { continue }
            let repeated = k < 64 ? seen & (1 << UInt64(k)) != 0 : !seenBeyond.insert(k).inserted
            if repeated { return GatewayError(.ambiguousHeader, "the \(name.lowercased()) field is repeated; send it once") }
            if k < 64 { seen |= 1 << UInt64(k) }
            if noLists, Self.hasComma(value) {
                return GatewayError(.ambiguousHeader, "the \(name.lowercased()) field holds a list; send one value")
            }
        }
        return nil
    }

    /// `memchr` over the value's bytes: the token field is hundreds of bytes on every request, and the
    /// generic `contains` over a `UTF8View` showed up at 2–3 % of a request's CPU.
    static func hasComma(_ value: String) -> Bool {
        var value = value
        return value.withUTF8 { b in
            guard let base = b.baseAddress, !b.isEmpty else { return false }
            return memchr(base, Int32(UInt8(ascii: ",")), b.count) != nil
        }
    }
}
