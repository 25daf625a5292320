#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import Synchronization
import Upstreams

/// Writes whole JSON lines to standard output with one `write(2)` each, so concurrent lines never
/// interleave and nothing is lost in a userspace buffer if the process is killed.
enum LogSink {
    /// While the sidecar runs, every log line goes through its access-log writer (`route(to:)`), so no
    /// thread that logs — an event loop warning about a revoked token, say — ever waits for a stalled
    /// reader of standard output. Before start-up and after shutdown lines are written directly.
    private static let routed = NIOLockedValueBox<BufferedLineWriter?>(nil)

    static func route(to writer: BufferedLineWriter?) { routed.withLockedValue { $0 = writer } }

    /// A log line (without its newline): to the running writer — warnings and worse wake its thread at
    /// once — or straight out.
    static func emit(_ line: String, urgent: Bool) {
        guard let writer = routed.withLockedValue({ $0 }) else { return write(line) }
        writer.append(urgent: urgent) { $0.append(contentsOf: line.utf8) }
    }

    static func write(_ line: String) {
        var line = line
        line.append("\n")
        line.withUTF8 { writeAll($0) }
    }

    /// One writer at a time: a write of more than `PIPE_BUF` bytes to a pipe can be split, and a line
    /// written from another thread would land inside the split batch (seen with a stalled reader: a
    /// shutdown line inside a 64 KiB access batch).
    private static let stdout = NIOLock()

    static func writeAll(_ buf: UnsafeBufferPointer<UInt8>) {
        stdout.withLock {
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
        LogSink.emit(line, urgent: event.level >= .warning)
    }
}

/// Access-log lines are many (one per request), so they are buffered and written in batches by a
/// thread of their own: when the buffer passes 64 KiB, every 100 ms, and at shutdown (as nginx's
/// `access_log ... buffer= flush=`). Unlike nginx, no event loop ever waits for standard output: a slow
/// or stalled reader of the log (a full pipe, a stuck collector) holds up only the writer thread. While
/// it is held, lines collect up to `maxPending` bytes; beyond that they are dropped and counted
/// (`gateway_access_log_dropped_lines_total`, and one warning line once output moves again) — the
/// proxy keeps answering rather than stall every connection on its log. While it runs, the other log
/// lines go through it too (`LogSink.route`), in order with the access lines.
final class BufferedLineWriter: @unchecked Sendable {
    static let flushBytes = 64 * 1024
    /// About 40 000 access lines: a reader stalled for a second at full load loses nothing.
    static let defaultMaxPending = 16 * 1024 * 1024

    /// The lock's value is 1 when the writer thread should act now (a full batch, or stop).
    private let state = ConditionLock(value: 0)
    // Guarded by `state`:
    private var pending: [UInt8] = []
    private var dropped = 0
    private var stopping = false
    private var running = false
    /// Held while bytes go out, so batches leave in the order they were taken.
    private let output = NIOLock()
    private let maxPending: Int
    private let sink: @Sendable (UnsafeBufferPointer<UInt8>) -> Void
    private let onDropped: @Sendable (Int) -> Void
    private var thread: NIOThreadPool?

    init(
        maxPending: Int = BufferedLineWriter.defaultMaxPending,
        sink: @escaping @Sendable (UnsafeBufferPointer<UInt8>) -> Void = { LogSink.writeAll($0) },
        onDropped: @escaping @Sendable (Int) -> Void = { _ in }
    ) {
        self.maxPending = maxPending
        self.sink = sink
        self.onDropped = onDropped
        pending.reserveCapacity(Self.flushBytes * 2)
    }

    /// Appends the line `write` produces (and a newline) under the buffer's lock, so it is formatted in
    /// place; `write` must be quick. Never waits for output.
    /// `urgent`: wake the writer thread now instead of at the next full batch or interval.
    func append(urgent: Bool = false, _ write: (inout [UInt8]) -> Void) {
        state.lock()
        guard pending.count < maxPending else {
            dropped += 1
            return state.unlock()
        }
        write(&pending)
        pending.append(10)
        if running, urgent || pending.count >= Self.flushBytes, !stopping {
            state.unlock(withValue: 1)
        } else {
            state.unlock()
        }
    }

    /// Starts the writer thread (once).
    func start(interval: Duration = .milliseconds(100)) {
        state.lock()
        guard !running else { return state.unlock() }
        running = true
        state.unlock()
        let pool = WorkerThread.start(lock: state, interval: interval, stopping: { self.stopping }, work: { self.flush() })
        state.lock()
        thread = pool
        state.unlock()
    }

    /// Writes out what is pending, and the count of lines dropped since the last write. Safe from any
    /// thread; batches leave in the order they were taken.
    func flush() {
        output.withLock {
            state.lock()
            let batch = pending
            pending.removeAll(keepingCapacity: true)
            let lost = dropped
            dropped = 0
            state.unlock()
            if !batch.isEmpty { batch.withUnsafeBufferPointer { sink($0) } }
            if lost > 0 {
                onDropped(lost)
                var line: [UInt8] = []
                line.append(contentsOf: #"{"ts":""#.utf8)
                LogTimestamp.append(to: &line)
                line.append(contentsOf: #"","level":"warning","msg":"log lines dropped: the log output did not keep up","dropped":"#.utf8)
                line.append(contentsOf: String(lost).utf8)
                line.append(contentsOf: "}\n".utf8)
                line.withUnsafeBufferPointer { sink($0) }
            }
        }
    }

    /// Stops the writer thread after a last write of everything pending; later lines are written by
    /// `flush()`.
    func stop() {
        state.lock()
        guard running else { return state.unlock() }
        stopping = true
        let pool = thread
        state.unlock(withValue: 1)
        try? pool?.syncShutdownGracefully()
        state.lock()
        thread = nil
        running = false
        stopping = false
        state.unlock()
    }

    /// Writes from its thread until cancelled, then stops it (with a last write).
    /// Every log line of the process goes through this writer meanwhile (`LogSink.route`).
    func runFlusher(interval: Duration = .milliseconds(100)) async {
        start(interval: interval)
        LogSink.route(to: self)
        while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
        // Lines from now on go straight out; what is pending leaves with the last write.
        LogSink.route(to: nil)
        // `stop` waits for the thread: not on a cooperative (here: event-loop) thread.
        try? await NIOThreadPool.singleton.runIfActive { self.stop() }
    }
}

/// One thread that does a writer's work each time the writer sets its lock's value to 1 (a full batch,
/// or stop), and at least every `interval`; after `stopping()` (read under the lock) it works once more
/// and ends. Shared by the log writer and the receipt writer.
enum WorkerThread {
    static func start(
        lock: ConditionLock<Int>, interval: Duration, stopping: @escaping @Sendable () -> Bool, work: @escaping @Sendable () -> Void
    ) -> NIOThreadPool {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        pool.submit { _ in
            while true {
                if !lock.lock(whenValue: 1, timeoutSeconds: seconds) { lock.lock() }
                let stop = stopping()
                lock.unlock(withValue: 0)
                work()
                if stop { return }
            }
        }
        return pool
    }
}
