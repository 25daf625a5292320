import Foundation
import Hummingbird
import NIOPosix
import Upstreams

/// `GET /api/receipts?run=&request_id=&limit=` — this sidecar's receipts of one run (or one request),
/// newest first, as written (each with its `seq`, `prev` and, for the last of a batch, `sig`); and
/// `GET /api/receipts/head` — the sealed head and the public key to verify with. Receipts are readable
/// once sealed (within `receipts.seal_interval`). Admin token only.
struct ReceiptsAPI: Sendable {
    let receipts: ReceiptLog

    func register(on group: RouterGroup<AdminContext>) {
        group.get("receipts/head") { _, _ in
            let head = receipts.currentHead
            return AdminRoutes.json(
                [
                    "sidecar": .string(receipts.sidecar), "seq": .number(Double(head.seq)), "hash": .string(head.hash), "key": .string(receipts.keyID),
                    "public_key": .string(receipts.publicKey.rawRepresentation.base64EncodedString()),
                ], status: .ok)
        }
        group.get("receipts") { request, _ in
            let run = request.uri.queryParameters["run"].map(String.init)
            let requestID = request.uri.queryParameters["request_id"].map(String.init)
            guard run != nil || requestID != nil else {
                var e = GatewayError(.validationFailed, "name a run (run=) or a request (request_id=)")
                e.extensions["errors"] = [["field": "run", "message": "required without request_id"]]
                return AdminProblem.response(e)
            }
            let limit = request.uri.queryParameters["limit"].flatMap { Int($0) }.map { max(1, min(1000, $0)) } ?? 100
            let found = try await NIOThreadPool.singleton.runIfActive {
                Self.find(in: receipts.dir, sidecar: receipts.sidecar, field: run != nil ? "run" : "request_id", value: run ?? requestID!, limit: limit)
            }
            return AdminRoutes.json(["receipts": .array(found), "count": .number(Double(found.count))], status: .ok)
        }
    }

    /// Receipts whose `field` equals `value`, newest first: files newest first, lines matched by their
    /// bytes before they are parsed.
    static func find(in dir: String, sidecar: String, field: String, value: String, limit: Int) -> [JSONValue] {
        var needle: [UInt8] = []
        CanonicalJSON.string(field, into: &needle)
        needle.append(UInt8(ascii: ":"))
        CanonicalJSON.string(value, into: &needle)
        var out: [JSONValue] = []
        for name in ReceiptLog.files(dir: dir, sidecar: sidecar).reversed() {
            guard let data = FileManager.default.contents(atPath: (dir as NSString).appendingPathComponent(name)) else { continue }
            let bytes = [UInt8](data)
            for line in bytes.split(separator: 10).reversed() where line.firstRange(of: needle) != nil {
                if let json = JSONValue.parse(line) { out.append(json) }
                if out.count >= limit { return out }
            }
        }
        return out
    }
}
