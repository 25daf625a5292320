#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import Synchronization
import Upstreams

/// Writes whole JSON lines to standard output with one `write(2)` each, so concurrent lines never
/// interleave and nothing is lost in a userspace buffer if the process is killed.
enum LogSink {
    static func write(_ line: String) {
        var line = line
        line.append("\n")
        line.withUTF8 { writeAll($0) }
    }

    static func writeAll(_ buf: UnsafeBufferPointer<UInt8>) {
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

    /// RFC 3339 UTC timestamp with milliseconds, without Foundation's formatter cost (lines take the
    /// current one from `LogTimestamp`, which formats the seconds once per second).
    static func timestamp(seconds: Int, milliseconds: Int32) -> String {
        var t = seconds
        var tm = tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
        }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
            + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(milliseconds, 3))Z"
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
        var ts: [UInt8] = []
        LogTimestamp.append(to: &ts)
        var line = "{\"ts\":\"\(String(decoding: ts, as: UTF8.self))\",\"level\":\"\(event.level.rawValue)\",\"logger\":"
        JSONValue.writeString(label, into: &line)
        line += ",\"msg\":"
        JSONValue.writeString(event.message.description, into: &line)
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra, uniquingKeysWith: { _, new in new }) }
        for key in merged.keys.sorted() {
            line += ","
            JSONValue.writeString(key, into: &line)
            line += ":"
            JSONValue.writeString(merged[key]!.description, into: &line)
        }
        line += "}"
        LogSink.write(line)
    }
}

/// Access-log lines are many (one per request), so they are buffered and written in batches: when the
/// buffer passes 64 KiB, every 100 ms, and at shutdown (as nginx's `access_log ... buffer= flush=`).
/// Other log lines go straight out through `LogSink.write`.
final class BufferedLineWriter: Sendable {
    private let buffer = Mutex<[UInt8]>([])
    static let flushBytes = 64 * 1024

    init() { buffer.withLock { $0.reserveCapacity(Self.flushBytes * 2) } }

    /// Appends the line `write` produces (and a newline) under the buffer's lock, so it is formatted in
    /// place; `write` must be quick.
    func append(_ write: (inout [UInt8]) -> Void) {
        var full: [UInt8]?
        buffer.withLock { b in
            write(&b)
            b.append(10)
            if b.count >= Self.flushBytes {
                full = b
                b.removeAll(keepingCapacity: true)
            }
        }
        if let full { full.withUnsafeBufferPointer { LogSink.writeAll($0) } }
    }

    func flush() {
        let pending = buffer.withLock { b -> [UInt8] in
            let out = b
            b.removeAll(keepingCapacity: true)
            return out
        }
        if !pending.isEmpty { pending.withUnsafeBufferPointer { LogSink.writeAll($0) } }
    }

    /// Flushes every `interval` until cancelled, then once more.
    func runFlusher(interval: Duration = .milliseconds(100)) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            flush()
        }
        flush()
    }
}
