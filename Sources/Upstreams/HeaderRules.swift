import NIOHTTP1

/// Header rules for a forwarding proxy (RFC 9110 §7.6.1), applied in both directions.
///
/// Hop-by-hop fields describe one connection, not the message, so they never cross the proxy. On the
/// way up we also drop everything that would identify the agent's machine or carry the sidecar's own
/// authentication; on the way down we drop what would describe the upstream's connection.
public enum HeaderRules {
    /// The `Via` pseudonym this sidecar adds to forwarded messages.
    public static let viaValue = "1.1 agent-sidecar"

    static let hopByHop: Set<String> = [
        "connection", "proxy-connection", "keep-alive", "te", "trailer", "upgrade", "transfer-encoding",
        "proxy-authorization", "proxy-authenticate",
    ]

    /// Never sent to a third party: client addresses, sidecar-internal controls, framing we recompute.
    static let neverUpstream: Set<String> = [
        "host", "content-length", "expect",
        "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "forwarded", "x-real-ip",
        "x-agent-token", "x-agent-id", "x-run-id", "x-request-timeout",
    ]

    /// Agent-supplied credentials for brokered tools: the sidecar injects the real one instead.
    static let agentCredentialHeaders: Set<String> = ["authorization", "x-api-key", "api-key", "cookie"]

    /// Removes hop-by-hop fields, including every field named in `Connection` (and `Proxy-Connection`).
    public static func removingHopByHop(_ headers: HTTPHeaders) -> HTTPHeaders {
        var named = hopByHop
        for field in ["connection", "proxy-connection"] {
            for value in headers[field] {
                for token in value.split(separator: ",") {
                    let name = token.trimmedOWS.lowercased()
                    if !name.isEmpty { named.insert(name) }
                }
            }
        }
        var out = HTTPHeaders()
        for (name, value) in headers where !named.contains(name.hasNoUppercaseASCII ? name : name.lowercased()) {
            out.add(name: name, value: value)
        }
        return out
    }

    /// The headers an upstream sees: cleaned, `Host` from the target, `Via` appended, request id attached.
    public static func upstreamHeaders(
        from agentHeaders: HTTPHeaders, tool: Tool, target: TargetURL, requestID: String
    ) -> HTTPHeaders {
        var headers = HTTPHeaders()
        let cleaned = removingHopByHop(agentHeaders)
        var via: [String] = []
        for (name, value) in cleaned {
            let lower = name.hasNoUppercaseASCII ? name : name.lowercased()
            if neverUpstream.contains(lower) { continue }
            if tool.isBrokered, agentCredentialHeaders.contains(lower) { continue }
            if lower == "x-request-id" { continue }
            if lower == "via" {
                via.append(value)
                continue
            }
            headers.add(name: name, value: value)
        }
        via.append(viaValue)
        headers.add(name: "Host", value: target.authority)
        headers.add(name: "Via", value: via.joined(separator: ", "))
        headers.add(name: "X-Request-Id", value: requestID)
        return headers
    }

    /// The headers the agent sees from an upstream response.
    public static func agentHeaders(from upstreamHeaders: HTTPHeaders, requestID: String) -> HTTPHeaders {
        var headers = removingHopByHop(upstreamHeaders)
        headers.remove(name: "x-request-id")
        let via = headers["via"]
        headers.remove(name: "via")
        headers.add(name: "Via", value: (via + [viaValue]).joined(separator: ", "))
        headers.add(name: "X-Request-Id", value: requestID)
        return headers
    }
}

extension StringProtocol {
    /// Trims optional whitespace (SP / HTAB) as HTTP defines it.
    var trimmedOWS: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}

extension String {
    /// True when lowercasing would not change the string (saves an allocation per header name).
    var hasNoUppercaseASCII: Bool { utf8.allSatisfy { $0 < 0x41 || $0 > 0x5A } }
}
