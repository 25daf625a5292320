import Foundation
import Hummingbird
import Logging
import NIOCore
import Policy
import Upstreams

/// `GET /api/chaos` and `PUT /api/chaos`: switch fault injection at run time, on this sidecar or — with
/// `"fleet": true` and Redis — on every sidecar of the fleet (published on `sidecar:chaos`).
///
///     {"enabled": true, "seed": 42, "duration": "5m", "gmail_opt_in": false, "fleet": true,
///      "tools": {"serpapi": {"error_rate": 0.3, "error_statuses": [503]}, "*": {"latency_max_ms": 200}}}
struct ChaosAPI: Sendable {
    let chaos: ChaosTransport
    let fleetState: FleetResilience?
    let maxBodyBytes: Int
    let logger: Logger

    func register(on group: RouterGroup<AdminContext>) {
        group.get("chaos") { _, _ in Self.describe(chaos.current) }
        group.put("chaos") { request, _ in await self.update(request) }
    }

    static func describe(_ s: ChaosSettings) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = (try? encoder.encode(s)) ?? Data("{}".utf8)
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    func update(_ request: Request) async -> Response {
        var object: [String: JSONValue]
        switch await AdminBody.object(request, limit: maxBodyBytes) {
        case .success(let o): object = o
        case .failure(let e): return AdminProblem.response(e)
        }
        let fleet = object.removeValue(forKey: "fleet")?.boolValue ?? false
        if let d = object.removeValue(forKey: "duration") {
            guard let text = d.stringValue, let duration = DocumentReader.parseDuration(text), duration > .zero else {
                return Self.invalid("duration", "expected a duration like 5m")
            }
            object["until"] = .number(Double(unixMillis() + duration.milliseconds))
        }
        for (tool, _) in object["tools"]?.objectValue ?? [:] where tool != "*" && Tool(rawValue: tool) == nil {
            return Self.invalid("tools.\(tool)", "unknown tool")
        }
        let settings: ChaosSettings
        do {
            settings = try JSONDecoder().decode(ChaosSettings.self, from: Data(JSONValue.object(object).serialized.utf8))
        } catch {
            return Self.invalid("tools", "rates are between 0 and 1, error statuses are 5xx, 0 <= latency_min_ms <= latency_max_ms")
        }
        if fleet, fleetState == nil { return Self.invalid("fleet", "needs Redis (REDIS_URL)") }
        chaos.update(settings)
        logger.notice("chaos updated", metadata: ["enabled": "\(settings.enabled)", "fleet": "\(fleet)"])
        if fleet, let fleetState {
            let text = String(decoding: (try? JSONEncoder().encode(settings)) ?? Data(), as: UTF8.self)
            do { try await fleetState.publishChaos(text, until: settings.until) } catch {
                logger.warning("could not publish chaos settings to the fleet", metadata: ["error": "\(error)"])
                return AdminProblem.response(GatewayError(.stateUnavailable, "Redis did not take the fleet chaos settings; this sidecar applied them"))
            }
        }
        return Self.describe(settings)
    }

    static func invalid(_ field: String, _ message: String) -> Response {
        var e = GatewayError(.validationFailed, "the chaos settings are not valid")
        e.extensions["errors"] = [["field": .string(field), "message": .string(message)]]
        return AdminProblem.response(e)
    }
}
