import NIOHTTP1

/// Header rules for a forwarding proxy (RFC 9110 §7.6.1), applied in both directions.
///
/// Hop-by-hop fields describe one connection, not the message, so they never cross the proxy. On the
/// way up we also drop everything that would identify the agent's machine or carry the sidecar's own
/// authentication; on the way down we drop what would describe the upstream's connection.
///
/// Each direction is one pass over the fields with a case-insensitive byte comparison against the
/// known names (`HeaderName`), so no field name is lowercased (allocated) on the data path.
public enum HeaderRules {
    /// The `Via` pseudonym this sidecar adds to forwarded messages.
    public static let viaValue = "1.1 agent-sidecar"

    /// This process's mark, in the comment of the `Via` it adds on the way up (`1.1 agent-sidecar
    /// (3f9a1c2b)`): a request that comes in carrying it went out of this sidecar and came back — a tool's
    /// `base_url` or the egress proxy pointing at the sidecar itself — and is refused instead of sent
    /// round again (`isLoop`). Random per process: sidecars chained on purpose never share one.
    public static let loopMark = String(UInt32.random(in: .min ... .max), radix: 16)
    private static let loopComment = "(" + loopMark + ")"
    static let upstreamVia = viaValue + " " + loopComment

    /// Whether a request's `Via` fields carry this process's mark.
    public static func isLoop(_ headers: HTTPHeaders) -> Bool {
        headers[canonicalForm: "via"].contains { $0.contains(loopComment) }
    }

    /// The headers an upstream sees: cleaned, `Host` from the target, `Via` appended, request id attached.
    public static func upstreamHeaders(
        from agentHeaders: HTTPHeaders, tool: Tool, target: TargetURL, requestID: String
    ) -> HTTPHeaders {
        upstreamHeaders(from: agentHeaders, tool: tool, authority: target.authority, requestID: requestID)
    }

    /// As above, with the target's authority (`Host`) already formatted.
    public static func upstreamHeaders(
        from agentHeaders: HTTPHeaders, tool: Tool, authority: String, requestID: String
    ) -> HTTPHeaders {
        forwarded(agentHeaders, host: authority, requestID: requestID, via: upstreamVia) { field in
            switch field {
            // Carried into what the sidecar writes at the end: the gathered `Via`, the request id.
            case .requestID, .via: true
            default: !reaches(field, tool: tool)
            }
        }
    }

    /// Whether a field the agent sent reaches `tool`'s upstream in any form — as it is, or carried into
    /// what the sidecar writes (`Via` values are gathered into one, an `X-Request-Id` becomes the call's
    /// request id). What is false here `upstreamHeaders` leaves out; the exfiltration search reads the
    /// same answer, so it searches exactly what leaves.
    public static func reachesUpstream(_ name: String, tool: Tool) -> Bool { reaches(HeaderName.classify(name), tool: tool) }

    private static func reaches(_ field: HeaderName.Class, tool: Tool) -> Bool {
        switch field {
        case .hopByHop, .neverUpstream, .contentLength: false
        case .agentCredential: !tool.isBrokered
        case .requestID, .via, .other: true
        }
    }

    /// Whether an answer is a Server-Sent Events stream (`Content-Type: text/event-stream`, any case,
    /// any parameters).
    public static func isEventStream(_ headers: HTTPHeaders) -> Bool {
        headers[canonicalForm: "content-type"].contains { HeaderName.isMediaType($0, "text/event-stream") }
    }

    /// The headers the agent sees from an upstream response. `dropLength`: the body may no longer be
    /// the length the upstream declared (its credential echoes are scrubbed), so its `Content-Length`
    /// is left out here, in the same pass, and the answer is framed for what is actually sent.
    ///
    /// The upstream's own `X-Request-Id` (OpenAI's `req_…`, what its support asks for) is passed on as
    /// `X-Upstream-Request-Id`: `X-Request-Id` is the sidecar's, the id of its access log line.
    public static func agentHeaders(from upstreamHeaders: HTTPHeaders, requestID: String, dropLength: Bool = false) -> HTTPHeaders {
        forwarded(upstreamHeaders, host: nil, requestID: requestID, via: viaValue, keepingUpstreamID: true) { field in
            switch field {
            case .hopByHop, .requestID, .via: true
            case .contentLength: dropLength
            case .neverUpstream, .agentCredential, .other: false
            }
        }
    }

    /// One pass for either direction: every field named in `Connection` and every field `drops` names is
    /// left out; the message's `Via` values are gathered into one with ours appended; `Host` (when given),
    /// `Via` and the request id close the list.
    ///
    /// Each name is classified once. A `Connection` value that names a field (rare: the usual
    /// `keep-alive` / `close` name nothing) sends the message down a second pass that knows the names
    /// first, because a named field may come before the `Connection` field that names it.
    private static func forwarded(
        _ source: HTTPHeaders, host: String?, requestID: String, via ours: String, named: ConnectionNamed? = nil, keepingUpstreamID: Bool = false,
        drops: (HeaderName.Class) -> Bool
    ) -> HTTPHeaders {
        // Collected as pairs and wrapped once: `HTTPHeaders.add` checks each name for non-ASCII bytes
        // again (a closure per byte), and these names come from a message that was parsed or built
        // field by field already; the encoders check every field before it is written.
        var fields: [(String, String)] = []
        fields.reserveCapacity(source.count + 3)
        var via: String?
        var upstreamID = !keepingUpstreamID
        for (name, value) in source {
            if let named, named.contains(name) { continue }
            let field = HeaderName.classify(name)
            if named == nil, field.isConnection, !ConnectionNamed(value: value).names.isEmpty {
                return forwarded(
                    source, host: host, requestID: requestID, via: ours, named: connectionNamed(source), keepingUpstreamID: keepingUpstreamID,
                    drops: drops)
            }
            if case .via = field { via = via.map { $0 + ", " + value } ?? value }
            if !upstreamID, case .requestID = field {
                upstreamID = true
                fields.append(("X-Upstream-Request-Id", value))
            }
            if !drops(field) { fields.append((name, value)) }
        }
        if let host { fields.append(("Host", host)) }
        fields.append(("Via", via.map { $0 + ", " + ours } ?? ours))
        fields.append(("X-Request-Id", requestID))
        return HTTPHeaders(fields)
    }

    /// The upstream's request id for the access log: its first `X-Request-Id` when that is an id
    /// (`isSafeID`), else nil — a log line takes no other header text.
    public static func upstreamRequestID(_ headers: HTTPHeaders) -> String? {
        headers.first(name: "x-request-id").flatMap { isSafeID($0) ? $0 : nil }
    }

    /// A request id that can go into a log field as it is: 1 to 128 letters, digits, `-`, `.`, `_`, `:`
    /// (the agent's own `X-Request-Id` is taken by the same rule).
    public static func isSafeID(_ s: String) -> Bool {
        (1...128).contains(s.utf8.count)
            && s.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x2E
                    || b == 0x5F || b == 0x3A
            }
    }

    /// Field names listed in `Connection` / `Proxy-Connection` (they are hop-by-hop too). Usually none.
    static func connectionNamed(_ headers: HTTPHeaders) -> ConnectionNamed {
        var names: [String] = []
        for (name, value) in headers where HeaderName.classify(name).isConnection {
            names += ConnectionNamed(value: value).names
        }
        return ConnectionNamed(names: names)
    }

    /// The extra hop-by-hop names of one message, compared case-insensitively.
    struct ConnectionNamed {
        let names: [String]

        init(names: [String]) { self.names = names }

        /// The names one `Connection` value lists that are not hop-by-hop already. The usual
        /// `keep-alive` / `close` names nothing and costs nothing: the value is walked as bytes, and only
        /// a name that is not hop-by-hop already becomes a string.
        init(value: String) {
            var names: [String] = []
            var value = value
            value.withUTF8 { bytes in
                var start = 0
                while start <= bytes.count {
                    var end = start
                    while end < bytes.count, bytes[end] != UInt8(ascii: ",") { end += 1 }
                    var (from, to) = (start, end)
                    while from < to, bytes[from] == UInt8(ascii: " ") || bytes[from] == UInt8(ascii: "\t") { from += 1 }
                    while to > from, bytes[to - 1] == UInt8(ascii: " ") || bytes[to - 1] == UInt8(ascii: "\t") { to -= 1 }
                    let token = UnsafeBufferPointer(rebasing: bytes[from..<to])
                    if !token.isEmpty, !HeaderName.classify(bytes: token).isHopByHop {
                        names.append(String(decoding: token, as: UTF8.self))
                    }
                    start = end + 1
                }
            }
            self.names = names
        }

        func contains(_ name: String) -> Bool {
            names.isEmpty ? false : names.contains { HeaderName.equalsIgnoringCase($0, name) }
        }
    }
}

/// What a field name means to the proxy, decided by comparing its bytes case-insensitively against the
/// names the rules know (most names match none and are decided by their length alone).
public enum HeaderName {
    enum Class {
        /// RFC 9110 §7.6.1 hop-by-hop fields, `Proxy-Authorization` and `Proxy-Authenticate`.
        case hopByHop(connection: Bool)
        /// Client addresses, sidecar-internal controls and framing the proxy recomputes.
        case neverUpstream
        /// `Content-Length`: recomputed on the way up; kept on the way down unless the body may change.
        case contentLength
        /// Credentials an agent might send for a brokered tool (the sidecar injects the real one), and
        /// what selects the account a credential acts for (OpenAI's organization and project).
        case agentCredential
        case requestID
        case via
        case other

        var isHopByHop: Bool {
            if case .hopByHop = self { return true }
            return false
        }

        var isConnection: Bool {
            if case .hopByHop(true) = self { return true }
            return false
        }
    }

    private static let table: [(String, Class)] = [
        ("connection", .hopByHop(connection: true)), ("proxy-connection", .hopByHop(connection: true)),
        ("keep-alive", .hopByHop(connection: false)), ("te", .hopByHop(connection: false)),
        ("trailer", .hopByHop(connection: false)), ("upgrade", .hopByHop(connection: false)),
        ("transfer-encoding", .hopByHop(connection: false)), ("proxy-authorization", .hopByHop(connection: false)),
        ("proxy-authenticate", .hopByHop(connection: false)),
        ("host", .neverUpstream), ("content-length", .contentLength), ("expect", .neverUpstream),
        ("x-forwarded-for", .neverUpstream), ("x-forwarded-host", .neverUpstream), ("x-forwarded-proto", .neverUpstream),
        ("x-forwarded-port", .neverUpstream), ("forwarded", .neverUpstream), ("x-real-ip", .neverUpstream),
        ("x-agent-token", .neverUpstream), ("x-agent-id", .neverUpstream), ("x-run-id", .neverUpstream),
        ("x-request-timeout", .neverUpstream),
        ("authorization", .agentCredential), ("x-api-key", .agentCredential), ("api-key", .agentCredential),
        ("cookie", .agentCredential), ("openai-organization", .agentCredential), ("openai-project", .agentCredential),
        ("x-request-id", .requestID), ("via", .via),
    ]

    /// The table bucketed by name length, so a name is compared only with names of its own length.
    private static let byLength: [[(name: [UInt8], class: Class)]] = {
        var buckets = [[(name: [UInt8], class: Class)]](repeating: [], count: 32)
        for (name, c) in table { buckets[name.utf8.count].append((Array(name.utf8), c)) }
        return buckets
    }()

    static func classify(_ name: String) -> Class {
        var name = name
        return name.withUTF8 { classify(bytes: $0) }
    }

    /// The class of a field name given as its bytes (walked in place: no string per comparison).
    static func classify(bytes name: UnsafeBufferPointer<UInt8>) -> Class {
        let count = name.count
        guard count < byLength.count else { return .other }
        let bucket = byLength[count]
        if bucket.isEmpty { return .other }
        for entry in bucket where matches(name, lowercase: entry.name) { return entry.class }
        return .other
    }

    /// Whether a field name is `lowercase` (a lowercase literal), ignoring ASCII case. Not generic, so
    /// callers in other modules get the compiled byte loop rather than a generic one.
    public static func named(_ name: String, _ lowercase: StaticString) -> Bool {
        var name = name
        return name.withUTF8 { bytes in
            guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
            let expected = lowercase.utf8Start
            for i in 0..<bytes.count where lower(bytes[i]) != expected[i] { return false }
            return true
        }
    }

    /// ASCII case-insensitive equality of two field names, over their bytes where they are contiguous:
    /// every request's fields are compared with a list of names (`SingleValuedFields`), and the generic
    /// `zip` of two `UTF8View`s cost ~0.3 µs per request.
    public static func equalsIgnoringCase<A: StringProtocol, B: StringProtocol>(_ a: A, _ b: B) -> Bool {
        guard a.utf8.count == b.utf8.count else { return false }
        let fast = a.utf8.withContiguousStorageIfAvailable { x in
            b.utf8.withContiguousStorageIfAvailable { y in
                for i in 0..<x.count where lower(x[i]) != lower(y[i]) { return false }
                return true
            }
        }
        return (fast ?? nil) ?? zip(a.utf8, b.utf8).allSatisfy { lower($0) == lower($1) }
    }

    /// Whether a `Content-Type` value is of media type `type` (RFC 9110 §8.3.1: `type/subtype` without
    /// case, then any parameters after `;`). `application/json; charset=utf-8` is `application/json`;
    /// `application/jsonl` and `text/event-stream-x` are other types, which a prefix test took for these.
    public static func isMediaType(_ value: some StringProtocol, _ type: String) -> Bool {
        let value = Substring(value)
        let end = value.utf8.firstIndex(of: UInt8(ascii: ";")) ?? value.utf8.endIndex
        return equalsIgnoringCase(value[..<end].trimmingOWS, type)
    }

    private static func matches(_ bytes: UnsafeBufferPointer<UInt8>, lowercase: [UInt8]) -> Bool {
        lowercase.withUnsafeBufferPointer { expected in
            for i in 0..<bytes.count where lower(bytes[i]) != expected[i] { return false }
            return true
        }
    }

    /// An ASCII byte in lower case (any other byte as it is).
    @inline(__always) static func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }
}

extension StringProtocol {
    /// Trims optional whitespace (SP / HTAB) as HTTP defines it.
    var trimmedOWS: String { String(Substring(self).trimmingOWS) }
}

extension Substring {
    /// Calls `body` with each piece between `separator` bytes (empty pieces included), walked in place:
    /// no array of pieces for a query string or a `Connection` value on every request.
    func forEachPiece(separatedBy separator: UInt8, _ body: (Substring) -> Void) {
        var start = utf8.startIndex
        while true {
            let end = utf8[start...].firstIndex(of: separator) ?? utf8.endIndex
            body(self[start..<end])
            guard end < utf8.endIndex else { return }
            start = utf8.index(after: end)
        }
    }

    /// `trimmedOWS` without making a string.
    var trimmingOWS: Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }
}
