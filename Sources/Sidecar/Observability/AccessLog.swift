#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Upstreams

/// The one canonical line per request (as Smokescreen logs one decision line): who, which tool and
/// action, what happened, how long it took, how many bytes. Built from `RequestRecord`, which carries
/// no URL path, query, body, header value or credential.
///
/// It is written for every request, so it is built as bytes straight into one buffer (no intermediate
/// strings); the text is exactly what the JSON encoding of the same fields would be.
struct AccessLog: Sendable {
    let enabled: Bool
    let writer: BufferedLineWriter

    init(enabled: Bool, writer: BufferedLineWriter = BufferedLineWriter()) {
        self.enabled = enabled
        self.writer = writer
    }

    func write(_ r: RequestRecord) {
        guard enabled else { return }
        // Formatted straight into the shared buffer: no line of its own to allocate and copy.
        writer.append { Self.append(r, to: &$0) }
    }

    static func line(_ r: RequestRecord) -> String {
        var out: [UInt8] = []
        append(r, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    static func append(_ r: RequestRecord, to s: inout [UInt8]) {
        s.append(contentsOf: #"{"ts":""#.utf8)
        LogTimestamp.append(to: &s)
        s.append(contentsOf: #"","level":"info","msg":"access""#.utf8)
        JSONBytes.field(#","request_id":"#, r.requestID, into: &s)
        JSONBytes.field(#","entry":"#, r.entry?.rawValue ?? "none", into: &s)
        JSONBytes.field(#","method":"#, r.method, into: &s)
        JSONBytes.field(#","tool":"#, r.toolLabel, into: &s)
        JSONBytes.field(#","action":"#, r.actionLabel, into: &s)
        JSONBytes.field(#","status":"#, r.status, into: &s)
        JSONBytes.field(#","outcome":"#, r.outcome, into: &s)
        if let u = r.upstreamStatus { JSONBytes.field(#","upstream_status":"#, u, into: &s) }
        if let h = r.upstreamHost { JSONBytes.field(#","upstream_host":"#, h, into: &s) }
        if let u = r.upstreamRequestID { JSONBytes.field(#","upstream_request_id":"#, u, into: &s) }
        if let a = r.agentID { JSONBytes.field(#","agent_id":"#, a, into: &s) }
        if let t = r.tokenID { JSONBytes.field(#","token_id":"#, t, into: &s) }
        if let run = r.runID { JSONBytes.field(#","run_id":"#, run, into: &s) }
        if r.mock { s.append(contentsOf: #","mock":true"#.utf8) }
        if let c = r.cache { JSONBytes.field(#","cache":"#, c, into: &s) }
        if r.retries > 0 { JSONBytes.field(#","retries":"#, r.retries, into: &s) }
        if let b = r.breaker { JSONBytes.field(#","breaker":"#, b, into: &s) }
        if let i = r.idempotency { JSONBytes.field(#","idempotency":"#, i, into: &s) }
        if let c = r.chaos { JSONBytes.field(#","chaos":"#, c, into: &s) }
        JSONBytes.literal(#","duration_ms":"#, into: &s)
        milliseconds(r.totalDuration, into: &s)
        if let up = r.upstreamDuration {
            JSONBytes.literal(#","upstream_ms":"#, into: &s)
            milliseconds(up, into: &s)
        }
        JSONBytes.field(#","bytes_in":"#, r.bytesIn, into: &s)
        JSONBytes.field(#","bytes_out":"#, r.bytesOut, into: &s)
        s.append(UInt8(ascii: "}"))
    }

    static func ms(_ d: Duration?) -> String {
        var out: [UInt8] = []
        milliseconds(d, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Milliseconds with three decimals (microsecond resolution), e.g. `12.045`.
    static func milliseconds(_ d: Duration?, into s: inout [UInt8]) {
        guard let d else { return s.append(UInt8(ascii: "0")) }
        let (seconds, atto) = d.components
        let micros = max(0, seconds * 1_000_000 + atto / 1_000_000_000_000)
        JSONBytes.fixedPoint(Int(micros), digits: 3, trimmed: false, into: &s)
    }
}

/// JSON pieces written as bytes.
enum JSONBytes {
    /// A field's `,"name":` as one literal (names need no escaping): one copy per field.
    static func literal(_ text: StaticString, into s: inout [UInt8]) {
        s.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// `,"name":"value"` (the name given with its punctuation, as `literal`).
    static func field(_ name: StaticString, _ value: String, into s: inout [UInt8]) {
        literal(name, into: &s)
        string(value, into: &s)
    }

    /// `,"name":123`.
    static func field(_ name: StaticString, _ value: Int, into s: inout [UInt8]) {
        literal(name, into: &s)
        integer(value, into: &s)
    }

    static func string(_ value: String, into s: inout [UInt8]) {
        var value = value
        value.withUTF8 { bytes in
            s.append(UInt8(ascii: "\""))
            // Ids, names and codes need no escaping: checked and copied as bytes, in one piece.
            var clean = true
            for b in bytes where b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") {
                clean = false
                break
            }
            if clean {
                s.append(contentsOf: bytes)
            } else {
                escape(bytes, into: &s)
            }
            s.append(UInt8(ascii: "\""))
        }
    }

    private static func escape(_ bytes: UnsafeBufferPointer<UInt8>, into s: inout [UInt8]) {
        for b in bytes {
            switch b {
            case UInt8(ascii: "\""): s.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): s.append(contentsOf: #"\\"#.utf8)
            case UInt8(ascii: "\n"): s.append(contentsOf: #"\n"#.utf8)
            case UInt8(ascii: "\r"): s.append(contentsOf: #"\r"#.utf8)
            case UInt8(ascii: "\t"): s.append(contentsOf: #"\t"#.utf8)
            case 0..<0x20:
                let hex: StaticString = "0123456789abcdef"
                s.append(contentsOf: #"\u00"#.utf8)
                s.append(hex.utf8Start[Int(b >> 4)])
                s.append(hex.utf8Start[Int(b & 0xF)])
            default: s.append(b)
            }
        }
    }

    /// Millionths as a decimal number (`1500` → `0.0015`, `2000000` → `2`): a cost in USD kept as integer
    /// micros, written without going through a `Double` and its shortest-form printing.
    static func micros(_ value: Int, into s: inout [UInt8]) { fixedPoint(value, digits: 6, trimmed: true, into: &s) }

    /// `value / 10^digits` as a decimal: `digits` fraction digits always (`trimmed: false`), or only those
    /// up to the last that is not zero, and no point when none is left (`trimmed: true`).
    static func fixedPoint(_ value: Int, digits: Int, trimmed: Bool, into s: inout [UInt8]) {
        if value < 0 { s.append(UInt8(ascii: "-")) }
        var scale: UInt = 1
        for _ in 0..<digits { scale *= 10 }
        let v = value.magnitude
        integer(Int(v / scale), into: &s)
        var fraction = v % scale
        var width = digits
        if trimmed {
            guard fraction > 0 else { return }
            while fraction % 10 == 0 {
                fraction /= 10
                width -= 1
            }
        }
        s.append(UInt8(ascii: "."))
        var divisor: UInt = 1
        for _ in 1..<max(1, width) { divisor *= 10 }
        while divisor > 0 {
            s.append(UInt8(ascii: "0") + UInt8(fraction / divisor % 10))
            divisor /= 10
        }
    }

    static func integer(_ value: Int, into s: inout [UInt8]) {
        if value < 0 { s.append(UInt8(ascii: "-")) }
        var v = value.magnitude
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = 0
        withUnsafeMutableBytes(of: &digits) { d in
            repeat {
                d[n] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
                n += 1
            } while v > 0
            for i in stride(from: n - 1, through: 0, by: -1) { s.append(d[i]) }
        }
    }
}

/// RFC 3339 UTC timestamps with milliseconds. The part up to the seconds changes once a second, so it is
/// formatted once per second per thread and reused.
enum LogTimestamp {
    private final class Cache {
        var second = -1
        var prefix: [UInt8] = []
    }

    private static let caches = PerThread { Cache() }

    static func append(to s: inout [UInt8]) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let cache = caches.value
        if cache.second != ts.tv_sec {
            cache.second = ts.tv_sec
            let full = LogSink.timestamp(seconds: ts.tv_sec, milliseconds: 0)
            cache.prefix = Array(full.utf8.dropLast(5))  // without ".000Z"
        }
        s.append(contentsOf: cache.prefix)
        let ms = Int(ts.tv_nsec / 1_000_000)
        s.append(UInt8(ascii: "."))
        s.append(UInt8(ascii: "0") + UInt8(ms / 100))
        s.append(UInt8(ascii: "0") + UInt8(ms / 10 % 10))
        s.append(UInt8(ascii: "0") + UInt8(ms % 10))
        s.append(UInt8(ascii: "Z"))
    }
}
