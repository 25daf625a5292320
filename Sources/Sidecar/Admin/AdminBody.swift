import Hummingbird
import NIOCore
import Upstreams

/// Request bodies on the admin port, read the same way by every route.
enum AdminBody {
    /// What is discarded past the limit before answering 413, so the client — which is usually still
    /// sending — reads the answer instead of a reset connection. Beyond this the connection is cut.
    static let drainLimit = 64 * 1024 * 1024

    /// The body, or 413 `body_too_large` once it passes `limit` bytes.
    static func collect(_ request: Request, limit: Int) async -> Result<ByteBuffer, GatewayError> {
        var all = ByteBuffer()
        var seen = 0
        do {
            for try await var chunk in request.body {
                seen += chunk.readableBytes
                if seen <= limit {
                    all.writeBuffer(&chunk)
                } else if seen > limit + drainLimit {
                    break
                }
            }
        } catch {
            return .failure(GatewayError(.invalidFraming, "the request body could not be read"))
        }
        guard seen <= limit else { return .failure(GatewayError(.bodyTooLarge, "request body exceeds \(limit) bytes")) }
        return .success(all)
    }

    /// The body as a JSON object, or the right problem: 413, 415, 400 (malformed), 422 (not an object).
    static func object(_ request: Request, limit: Int, allowEmpty: Bool = false) async -> Result<[String: JSONValue], GatewayError> {
        let body: ByteBuffer
        switch await collect(request, limit: limit) {
        case .success(let b): body = b
        case .failure(let e): return .failure(e)
        }
        if allowEmpty, body.readableBytes == 0 { return .success([:]) }
        guard let type = request.headers[.contentType], HeaderName.isMediaType(type, "application/json") else {
            return .failure(GatewayError(.unsupportedMediaType, "send Content-Type: application/json"))
        }
        let json: JSONValue
        let exact: Bool
        do { (json, exact) = try JSONValue.parseStrictNotingExactness(body.readableBytesView) } catch {
            return .failure(GatewayError(.invalidJSON, "the body is not valid JSON (\(error.reason))"))
        }
        guard case .object(let object) = json else {
            var e = GatewayError(.validationFailed, "the body must be a JSON object")
            e.extensions["errors"] = [["field": "", "message": "must be an object"]]
            return .failure(e)
        }
        // What the control plane stores (a run's input, its tags) is written back from doubles: a number
        // that would come back as another number is refused, not stored changed.
        guard exact else {
            var e = GatewayError(.validationFailed, JSONValue.inexactNumber)
            e.extensions["errors"] = [["field": "", "message": .string(JSONValue.inexactNumber)]]
            return .failure(e)
        }
        return .success(object)
    }
}
