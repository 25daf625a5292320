import Crypto
import Foundation
import Policy
import Upstreams

/// What a finished call leaves for its receipt: who, what, the digests of what went in and came out,
/// and how it ended — never a body, an argument or a secret.
struct ReceiptDraft: Sendable {
    var at: Int64
    var requestID: String
    var entry: String?
    var agent: String?
    var token: String?
    var run: String?
    var tool: String?
    var action: String?
    var requestDigest: String?
    var responseDigest: String?
    var status: Int
    var outcome: String
    var upstreamStatus: Int?
    var policy: String?
    /// `tool@vN`: the credential version injected (never its value).
    var credential: String?
    var approval: String?
    var idempotency: String?
    /// The call went to a live upstream (its credential version is then recorded).
    var upstreamContacted = false

    var fields: [String: JSONValue] {
        var f: [String: JSONValue] = [
            "at": .string(LogSink.timestamp(seconds: Int(at / 1000), milliseconds: Int32(at % 1000))), "request_id": .string(requestID), "status": .number(Double(status)),
            "outcome": .string(outcome),
        ]
        func put(_ k: String, _ v: String?) { if let v { f[k] = .string(v) } }
        put("entry", entry)
        put("agent", agent)
        put("token_id", token)
        put("run", run)
        put("tool", tool)
        put("action", action)
        put("request_sha256", requestDigest)
        put("response_sha256", responseDigest)
        put("policy", policy)
        put("credential", credential)
        put("approval", approval)
        put("idempotency", idempotency)
        if let u = upstreamStatus { f["upstream_status"] = .number(Double(u)) }
        return f
    }
}

/// The hash chain of one sidecar's receipts (pure): every receipt carries its sequence number and the
/// SHA-256 of the previous receipt's canonical form; a *sealed* receipt also carries an Ed25519
/// signature over its own canonical form — which, through `prev`, covers every receipt before it.
struct ReceiptChain: Sendable {
    static let genesis = String(repeating: "0", count: 64)

    private(set) var seq: Int64
    private(set) var head: String

    init(seq: Int64 = 0, head: String = ReceiptChain.genesis) {
        self.seq = seq
        self.head = head
    }

    /// The next receipt as a line (without its newline), signed when `signer` is given.
    mutating func append(_ fields: [String: JSONValue], sidecar: String, keyID: String, signer: Curve25519.Signing.PrivateKey?) -> [UInt8] {
        seq += 1
        var body = fields
        body["v"] = 1
        body["seq"] = .number(Double(seq))
        body["prev"] = .string(head)
        body["sidecar"] = .string(sidecar)
        body["key"] = .string(keyID)
        let canonical = CanonicalJSON.serialize(.object(body))
        head = Digest.sha256Hex(bytes: canonical)
        guard let signer, let signature = try? signer.signature(for: canonical) else { return canonical }
        body["sig"] = .string(Base64URL.encode(signature))
        return CanonicalJSON.serialize(.object(body))
    }

    /// The key id a receipt names: the first 16 hex digits of the SHA-256 of the raw public key.
    static func keyID(_ key: Curve25519.Signing.PublicKey) -> String { String(Digest.sha256Hex(bytes: Array(key.rawRepresentation)).prefix(16)) }
}
