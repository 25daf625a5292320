// rate-load: constant-rate HTTP/1.1 load, open model, for bench/latency.sh (wrk2 is not on this machine).
//
// Requests are due at fixed times (rate R: one every 1/R s, split over two event loops) whether or not
// earlier ones finished, and each latency runs from the time the request was *due*, not from when a
// connection was free to send it: a stalled server is charged for every request it delayed (coordinated
// omission corrected, as wrk2 and k6's arrival-rate executors do). A due request takes an idle kept-alive
// connection, else opens one (up to --connections per loop), else waits in line.
//
//   rate-load HOST:PORT --rate 1000 [--seconds 10] [--warmup 2] [--connections 64]
//             [--method GET] [--path /] [--header "Name: value"]... [--body TEXT]
//
// Prints one JSON line: rate, sent, completed, errors (connection failures and requests unanswered at the
// end, which count with their latency so far), non_2xx, achieved_rps, p50_us, p90_us, p99_us, p999_us,
// max_us — latencies of the requests due after the warm-up.
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

struct Options {
    var host = ""
    var port = 0
    var rate = 1000.0
    var seconds = 10.0
    var warmup = 2.0
    var connections = 64
    var method = HTTPMethod.GET
    var path = "/"
    var headers: [(String, String)] = []
    var body: String?
}

func parseOptions() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst()
    func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data((message + "\nusage: rate-load HOST:PORT --rate R [--seconds S] [--warmup S] [--connections N] [--method M] [--path P] [--header 'N: V']... [--body B]\n").utf8))
        exit(2)
    }
    guard let target = args.popFirst(), let colon = target.lastIndex(of: ":"), let port = Int(target[target.index(after: colon)...]) else {
        fail("HOST:PORT first")
    }
    o.host = String(target[..<colon])
    o.port = port
    while let flag = args.popFirst() {
        guard let value = args.popFirst() else { fail("\(flag) needs a value") }
        switch flag {
        case "--rate": o.rate = Double(value) ?? 0
        case "--seconds": o.seconds = Double(value) ?? 0
        case "--warmup": o.warmup = Double(value) ?? 0
        case "--connections": o.connections = Int(value) ?? 0
        case "--method": o.method = HTTPMethod(rawValue: value)
        case "--path": o.path = value
        case "--header":
            guard let c = value.firstIndex(of: ":") else { fail("a header is 'Name: value'") }
            o.headers.append((String(value[..<c]), value[value.index(after: c)...].trimmingCharacters(in: .whitespaces)))
        case "--body": o.body = value
        default: fail("unknown option \(flag)")
        }
    }
    guard o.rate > 0, o.seconds > 0, o.warmup >= 0, o.connections > 0 else { fail("rate, seconds and connections must be positive") }
    return o
}

/// What one loop measured.
struct Tally {
    var sent = 0
    var completed = 0
    var errors = 0
    var non2xx = 0
    /// Microseconds from due to answered, for requests due after the warm-up.
    var latencies: [UInt32] = []

    mutating func merge(_ o: Tally) {
        sent += o.sent
        completed += o.completed
        errors += o.errors
        non2xx += o.non2xx
        latencies += o.latencies
    }
}

/// One kept-alive connection: sends a request, reads its answer to the end, reports.
final class Conn: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = Never
    typealias OutboundOut = HTTPClientRequestPart

    let driver: Driver
    var channel: Channel?
    var due: NIODeadline?
    var status: UInt = 0

    init(driver: Driver) { self.driver = driver }

    func send(_ due: NIODeadline) {
        guard let channel else { return }
        self.due = due
        let o = driver.options
        var head = HTTPRequestHead(version: .http1_1, method: o.method, uri: o.path)
        head.headers.add(name: "Host", value: "\(o.host):\(o.port)")
        for (n, v) in o.headers { head.headers.add(name: n, value: v) }
        if let body = o.body { head.headers.add(name: "Content-Length", value: String(body.utf8.count)) }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body = o.body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): status = h.status.code
        case .body: break
        case .end:
            guard let due else { return }
            self.due = nil
            driver.answered(self, due: due, ok: (200..<300).contains(status))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        driver.lost(self, due: due)
        due = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// One event loop's share of the schedule, its connections and its line of waiting requests. Touched only
/// on its loop.
final class Driver: @unchecked Sendable {
    let loop: EventLoop
    let options: Options
    let interval: Int64  // ns between this loop's due times
    let offset: Int64  // this loop's first due time after the start
    var start = NIODeadline.now()
    var next: Int64 = 0  // index of the next due request
    var idle: [Conn] = []
    var open = 0
    var waiting = CircularBuffer<NIODeadline>()  // due, no connection free yet (taken from the front)
    var tally = Tally()
    var measureFrom = NIODeadline.now()
    var stopAt = NIODeadline.now()

    init(loop: EventLoop, options: Options, share: Double, offset: Int64) {
        self.loop = loop
        self.options = options
        self.interval = Int64(1e9 / (options.rate * share))
        self.offset = offset
    }

    func run(start: NIODeadline) -> EventLoopFuture<Tally> {
        let done = loop.makePromise(of: Tally.self)
        loop.execute {
            self.start = start
            self.measureFrom = start + .nanoseconds(Int64(self.options.warmup * 1e9))
            self.stopAt = self.measureFrom + .nanoseconds(Int64(self.options.seconds * 1e9))
            self.tick(done)
        }
        return done.futureResult
    }

    private func due(_ index: Int64) -> NIODeadline { start + .nanoseconds(offset + index * interval) }

    /// Sends what is due, then sleeps until the next due time (a timer per due time, not a fixed tick:
    /// the generator's own delay stays out of the latencies as far as the timer allows).
    private func tick(_ done: EventLoopPromise<Tally>) {
        let now = NIODeadline.now()
        while due(next) <= now, due(next) < stopAt {
            dispatch(due(next))
            next += 1
        }
        guard due(next) >= stopAt else {
            loop.scheduleTask(deadline: due(next)) { self.tick(done) }
            return
        }
        // Two seconds for the last answers; what is still unanswered then counts as an error, with its
        // latency so far.
        loop.scheduleTask(in: .seconds(2)) {
            let end = NIODeadline.now()
            for due in Array(self.waiting) + self.inFlight() { self.record(due, at: end, ok: false, error: true) }
            done.succeed(self.tally)
        }
    }

    private var busy: [ObjectIdentifier: Conn] = [:]
    private func inFlight() -> [NIODeadline] { busy.values.compactMap(\.due) }

    func dispatch(_ due: NIODeadline) {
        tally.sent += 1
        if let c = idle.popLast() {
            busy[ObjectIdentifier(c)] = c
            c.send(due)
        } else if open < options.connections {
            open += 1
            connect(due)
        } else {
            waiting.append(due)
        }
    }

    func connect(_ due: NIODeadline) {
        let conn = Conn(driver: self)
        busy[ObjectIdentifier(conn)] = conn
        conn.due = due  // counts as in flight while connecting
        ClientBootstrap(group: loop)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { ch in
                ch.pipeline.addHTTPClientHandlers().flatMap { ch.pipeline.addHandler(conn) }
            }
            .connect(host: options.host, port: options.port)
            .whenComplete { result in
                switch result {
                case .success(let ch):
                    conn.channel = ch
                    conn.send(due)
                case .failure:
                    self.busy[ObjectIdentifier(conn)] = nil
                    self.open -= 1
                    self.record(due, at: NIODeadline.now(), ok: false, error: true)
                }
            }
    }

    func answered(_ c: Conn, due: NIODeadline, ok: Bool) {
        record(due, at: NIODeadline.now(), ok: ok, error: false)
        if !waiting.isEmpty {
            c.send(waiting.removeFirst())
        } else {
            busy[ObjectIdentifier(c)] = nil
            idle.append(c)
        }
    }

    func lost(_ c: Conn, due: NIODeadline?) {
        busy[ObjectIdentifier(c)] = nil
        idle.removeAll { $0 === c }
        open -= 1
        if let due { record(due, at: NIODeadline.now(), ok: false, error: true) }
        // Requests in line get a new connection in its place.
        if !waiting.isEmpty, open < options.connections, NIODeadline.now() < stopAt {
            open += 1
            connect(waiting.removeFirst())
        }
    }

    func record(_ due: NIODeadline, at end: NIODeadline, ok: Bool, error: Bool) {
        if error { tally.errors += 1 } else { tally.completed += 1 }
        if !ok && !error { tally.non2xx += 1 }
        guard due >= measureFrom else { return }
        let us = max(0, (end - due).nanoseconds / 1000)
        tally.latencies.append(UInt32(min(us, Int64(UInt32.max))))
    }
}

let options = parseOptions()
let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
let start = NIODeadline.now() + .milliseconds(50)
let loops = [group.next(), group.next()]
// The two loops interleave: loop 1's due times fall halfway between loop 0's.
let perLoopInterval = 1e9 / (options.rate / 2)
let drivers = loops.enumerated().map { i, loop in Driver(loop: loop, options: options, share: 0.5, offset: Int64(Double(i) * perLoopInterval / 2)) }
var total = Tally()
for t in try EventLoopFuture.whenAllSucceed(drivers.map { $0.run(start: start) }, on: loops[0]).wait() { total.merge(t) }
try? group.syncShutdownGracefully()

let lat = total.latencies.sorted()
func pct(_ p: Double) -> UInt32 { lat.isEmpty ? 0 : lat[min(lat.count - 1, Int(Double(lat.count) * p))] }
let measured = Double(lat.count)
let json: [String: Any] = [
    "rate": options.rate, "sent": total.sent, "completed": total.completed, "errors": total.errors, "non_2xx": total.non2xx,
    "achieved_rps": measured / options.seconds, "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99), "p999_us": pct(0.999),
    "max_us": lat.last ?? 0,
]
let data = try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])
print(String(decoding: data, as: UTF8.self))
