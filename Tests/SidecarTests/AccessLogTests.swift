import Foundation
import Testing
import Upstreams

@testable import Sidecar

@Suite("Access log line")
struct AccessLogTests {
    private func parsed(_ record: RequestRecord) throws -> [String: Any] {
        let line = AccessLog.line(record)
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
        return try #require(object as? [String: Any])
    }

    /// The timestamp's per-second prefix is cached; the cache once kept the prefix's trailing "." and
    /// every line read `...:53..873Z`, which no RFC 3339 parser accepts.
    @Test func timestampIsRFC3339WithMilliseconds() throws {
        let record = RequestRecord(requestID: "r-1", method: "GET", start: .now)
        for _ in 0..<3 {  // the first call fills the cache, the next ones read it
            let ts = try #require(try parsed(record)["ts"] as? String)
            let pattern = #/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/#
            #expect(ts.wholeMatch(of: pattern) != nil, "\(ts)")
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            let date = try #require(formatter.date(from: ts))
            #expect(abs(date.timeIntervalSinceNow) < 5)
        }
    }

    /// The record's monotonic instants subtract to a `Duration` in nanoseconds, either way round.
    @Test func monotonicInstantsSubtractToDurations() {
        let a = MonotonicInstant(nanoseconds: 1_000_000_000)
        let b = MonotonicInstant(nanoseconds: 1_012_045_000)
        #expect(b - a == .microseconds(12_045) && a - b == .microseconds(-12_045) && a < b)
        #expect(AccessLog.ms(b - a) == "12.045")
    }

    @Test func fieldsAreTheRecordsAndEscaped() throws {
        var record = RequestRecord(requestID: "id\"with\\quote\n", method: "GET", start: .now)
        record.tool = .serpapi
        record.action = "search"
        record.status = 200
        record.upstreamStatus = 200
        record.bytesOut = 121
        record.totalDuration = .microseconds(12_045)
        let line = try parsed(record)
        #expect(line["request_id"] as? String == "id\"with\\quote\n")
        #expect(line["tool"] as? String == "serpapi")
        #expect(line["action"] as? String == "search")
        #expect(line["status"] as? Int == 200)
        #expect(line["upstream_status"] as? Int == 200)
        #expect(line["bytes_out"] as? Int == 121)
        #expect(line["outcome"] as? String == "ok")
        #expect(AccessLog.ms(.microseconds(12_045)) == "12.045")
        #expect((line["duration_ms"] as? NSNumber)?.doubleValue == 12.045)
    }
}

/// The record keeps its fields in one copy-on-write box; copies handed to other stages must not see each
/// other's changes (a stage's record is a value, as before the box).
@Suite("Request record value semantics")
struct RequestRecordValueTests {
    @Test func copiesAreIndependent() {
        var first = RequestRecord(requestID: "r-1", method: "GET", start: .now)
        first.tool = .serpapi
        let snapshot = first
        first.outcome = "upstream_timeout"
        first.bytesOut = 10
        first.agentID = "a"
        var second = snapshot
        second.status = 200
        #expect(snapshot.outcome == "ok" && snapshot.bytesOut == 0 && snapshot.agentID == nil && snapshot.status == 0)
        #expect(first.outcome == "upstream_timeout" && first.status == 0 && first.tool == .serpapi)
        #expect(second.status == 200 && second.outcome == "ok" && second.tool == .serpapi && second.requestID == "r-1")
        #expect(second.start == first.start)
    }

    /// A cost kept as integer micros is written as the decimal it is: the same number JSON readers got
    /// from the `Double` path it replaced, and exact where that one printed `1e-06`.
    @Test(arguments: [0, 1, 10, 15, 100, 1_500, 2_000, 999_999, 1_000_000, 1_000_001, 2_500_000, 123_456_789, -1_500, Int.max])
    func microsAreWrittenAsTheirDecimal(_ micros: Int) throws {
        var bytes: [UInt8] = []
        JSONBytes.micros(micros, into: &bytes)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.wholeMatch(of: #/-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?/#) != nil, "\(text)")
        let read = try #require(Decimal(string: text))
        #expect(read == Decimal(micros) / 1_000_000, "\(text)")
        if abs(micros) < 1 << 50 { #expect(Double(text) == Double(micros) / 1_000_000, "\(text)") }
    }
}
