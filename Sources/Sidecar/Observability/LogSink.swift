#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// Writes whole JSON lines to standard output with one `write(2)` each, so concurrent lines never
/// interleave and nothing is lost in a userspace buffer if the process is killed.
enum LogSink {
    static func write(_ line: String) {
        var line = line
        line.append("\n")
        line.withUTF8 { buf in
            var offset = 0
            while offset < buf.count {
                let n = Glibc.write(1, buf.baseAddress! + offset, buf.count - offset)
                if n <= 0 {
                    if n < 0, errno == EINTR { continue }
                    return
                }
                offset += n
            }
        }
    }

    /// RFC 3339 UTC timestamp with milliseconds, without Foundation's formatter cost.
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var tm = tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
        }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
            + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
    }
}

/// swift-log handler that prints one JSON object per line: `{"ts","level","logger","msg",...metadata}`.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let label: String

    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = "{\"ts\":\"\(LogSink.timestamp())\",\"level\":\"\(event.level.rawValue)\",\"logger\":"
        JSONText.append(label, to: &line)
        line += ",\"msg\":"
        JSONText.append(event.message.description, to: &line)
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra, uniquingKeysWith: { _, new in new }) }
        for key in merged.keys.sorted() {
            line += ","
            JSONText.append(key, to: &line)
            line += ":"
            JSONText.append(merged[key]!.description, to: &line)
        }
        line += "}"
        LogSink.write(line)
    }
}

/// Minimal JSON string escaping for log lines.
enum JSONText {
    static func append(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
