import Upstreams

/// The one canonical line per request (as Smokescreen logs one decision line): who, which tool and
/// action, what happened, how long it took, how many bytes. Built from `RequestRecord`, which carries
/// no URL path, query, body, header value or credential.
struct AccessLog: Sendable {
    let enabled: Bool
    let writer = BufferedLineWriter()

    func write(_ r: RequestRecord) {
        guard enabled else { return }
        writer.append(Self.line(r))
    }

    static func line(_ r: RequestRecord) -> String {
        var s = ""
        s.reserveCapacity(400)
        s += "{\"ts\":\"\(LogSink.timestamp())\",\"level\":\"info\",\"msg\":\"access\",\"request_id\":"
        JSONValue.writeString(r.requestID, into: &s)
        s += ",\"entry\":\"\(r.entry?.rawValue ?? "none")\",\"method\":"
        JSONValue.writeString(r.method, into: &s)
        s += ",\"tool\":\"\(r.toolLabel)\",\"action\":\"\(r.actionLabel)\",\"status\":\(r.status),\"outcome\":\"\(r.outcome)\""
        if let u = r.upstreamStatus { s += ",\"upstream_status\":\(u)" }
        if let h = r.upstreamHost {
            s += ",\"upstream_host\":"
            JSONValue.writeString(h, into: &s)
        }
        if let a = r.agentID {
            s += ",\"agent_id\":"
            JSONValue.writeString(a, into: &s)
        }
        if let t = r.tokenID {
            s += ",\"token_id\":"
            JSONValue.writeString(t, into: &s)
        }
        if r.mock { s += ",\"mock\":true" }
        if let c = r.cache { s += ",\"cache\":\"\(c)\"" }
        if r.retries > 0 { s += ",\"retries\":\(r.retries)" }
        if let b = r.breaker { s += ",\"breaker\":\"\(b)\"" }
        if let c = r.chaos { s += ",\"chaos\":\"\(c)\"" }
        s += ",\"duration_ms\":\(ms(r.totalDuration))"
        if let up = r.upstreamDuration { s += ",\"upstream_ms\":\(ms(up))" }
        s += ",\"bytes_in\":\(r.bytesIn),\"bytes_out\":\(r.bytesOut)}"
        return s
    }

    static func ms(_ d: Duration?) -> String {
        guard let d else { return "0" }
        let (s, atto) = d.components
        let micros = s * 1_000_000 + atto / 1_000_000_000_000
        return "\(micros / 1000).\(String(repeating: "0", count: 3 - String(micros % 1000).count))\(micros % 1000)"
    }
}
