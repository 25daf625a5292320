import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Testing
import Upstreams

@testable import Sidecar

/// Side effects (Gmail sends) on the loop path decide exactly as in a task: the same sequence of sends —
/// a first send, its duplicate, a reused `Idempotency-Key` with another email, a send whose answer was
/// lost, one Gmail refused and its retry — gets the same answers and reaches the upstream the same
/// number of times whether the pipeline starts it on the loop (`start`) or runs it in a task (`handle`).
@Suite("Side effects on the loop path")
struct LoopSideEffectTests {
    static let loop = LoopStartTests.loop

    static func pipeline(_ transport: any UpstreamTransport) throws -> Pipeline {
        var config = SidecarConfig()
        for tool in Tool.allCases { config.tools[tool]!.mode = .live }
        let store = try EmbeddedIdempotencyStore(path: ":memory:", now: { 1_000_000 })
        let ledger = IdempotencyLedger(store: store, settings: IdempotencySettings(), metrics: nil, logger: Logger(label: "test"))
        return Pipeline(
            classifier: EntryClassifier(hosts: config.tools.mapValues(\.hosts)), adapters: ToolAdapters(), transport: transport,
            credentials: StaticCredentials([.gmailSend: Credential("ya29.SECRET")]), settings: PipelineSettings(config: config),
            idempotency: ledger)
    }

    /// Upstream answers by call number: 0 and 1 sent, 2 sent but its answer lost, 3 refused, 4 sent.
    static func script(_ n: Int) -> Result<UpstreamResponse, UpstreamError> {
        switch n {
        case 2: return .failure(UpstreamError(.timeout, beforeSend: false, detail: "answer lost"))
        case 3: return ResilientCallerTests.answer(400, #"{"error":"bad"}"#)
        default: return ResilientCallerTests.answer(200, #"{"id":"m\#(n)","labelIds":["SENT"]}"#)
        }
    }

    static func send(subject: String, key: String? = nil) -> InboundRequest {
        let raw = Data("To: a@example.com\r\nSubject: \(subject)\r\n\r\nhello".utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        var headers = [("Content-Type", "application/json")]
        if let key { headers.append(("Idempotency-Key", key)) }
        return PipelineTests.request(.POST, "/gmail/v1/users/me/messages/send", headers: headers, body: #"{"raw":"\#(raw)"}"#)
    }

    static let sends: [InboundRequest] = [
        send(subject: "A"), send(subject: "A"),  // sent; replayed
        send(subject: "B", key: "k"), send(subject: "B changed", key: "k"),  // sent; conflict
        send(subject: "C"), send(subject: "C"),  // answer lost; never resent
        send(subject: "D"), send(subject: "D"),  // refused; free again, sent
    ]

    /// What an answer is compared by: status, outcome code, replay mark, body (of an upstream's answer).
    struct Seen: Equatable, CustomStringConvertible {
        var status: UInt
        var code: String?
        var replay: String?
        var body: String?
        var description: String { "\(status) \(code ?? "-") replay=\(replay ?? "-") \(body ?? "<stream>")" }

        init(_ r: ProxyResponse, outcome: String?) {
            status = r.status.code
            code = outcome
            replay = r.headers.first(name: "x-idempotent-replay")
            body = code == "ok" ? LoopStartTests.whole(r) : nil
        }
    }

    @Test func aSideEffectDecidesOnTheLoopAsInATask() async throws {
        let onLoop = LoopStartTests.LoopTransport(Self.script)
        let inTask = LoopStartTests.LoopTransport(Self.script)
        let fast = try Self.pipeline(onLoop)
        let slow = try Self.pipeline(inTask)
        var fastSeen: [Seen] = []
        var slowSeen: [Seen] = []
        for request in Self.sends {
            let promise = Self.loop.makePromise(of: Pipeline.Handled.self)
            try await Self.loop.submit {
                _ = fast.start(request, record: RequestRecord(requestID: "rid-1", method: "POST", start: .now), on: Self.loop) { promise.succeed($0) }
            }.get()
            let handled = try await promise.futureResult.get()
            handled.response.completion.start()
            fastSeen.append(Seen(handled.response, outcome: handled.record.outcome))
            var record = RequestRecord(requestID: "rid-1", method: "POST", start: .now)
            let response = await slow.handle(request, record: &record)
            slowSeen.append(Seen(response, outcome: record.outcome))
        }
        #expect(fastSeen == slowSeen)
        #expect(fastSeen.map(\.status) == [200, 200, 200, 409, 504, 409, 400, 200], "\(fastSeen)")
        #expect(fastSeen.map(\.code) == ["ok", "ok", "ok", "idempotency_conflict", "upstream_timeout", "duplicate_outcome_unknown", "ok", "ok"])
        #expect(fastSeen[0].body?.contains(#""id":"m0""#) == true, "\(fastSeen[0])")
        #expect(fastSeen[1].replay == "true" && fastSeen[1].body == fastSeen[0].body)
        // On the loop: started there, never sent from a task; five calls reached the upstream either way.
        #expect(onLoop.started.withLock { $0 } == 5 && onLoop.sent.withLock { $0 } == 0)
        #expect(inTask.sent.withLock { $0 } + inTask.started.withLock { $0 } == 5)
    }
}
