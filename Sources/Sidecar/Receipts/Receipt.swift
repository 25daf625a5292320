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
    var requestDigest: SHA256Value?
    var responseDigest: SHA256Value?
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

    /// Receipts the queue had to drop before this one (reported in it, so a loss shows in the chain).
    var lost: Int? = nil

    /// The receipt in its canonical form (RFC 8785), with the chain's members. Every member name is ASCII,
    /// so code-unit order is a fixed order: the members are written straight out in it — no dictionary,
    /// no sort — and the result is byte for byte what `CanonicalJSON` makes of the parsed line (tested),
    /// which is what `receipts verify` recomputes.
    ///
    /// `time`: formats `at`, keeping the date and time of the last second it formatted.
    func canonical(seq: Int64, prev: String, sidecar: String, key: String, sig: String?, time: inout ReceiptTime, into out: inout [UInt8]) {
        var first = true
        func name(_ n: StaticString) {
            out.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
            first = false
            out.append(UInt8(ascii: "\""))
            n.withUTF8Buffer { out.append(contentsOf: $0) }
            out.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        }
        func string(_ n: StaticString, _ v: String?) {
            guard let v else { return }
            name(n)
            CanonicalJSON.string(v, into: &out)
        }
        func digest(_ n: StaticString, _ v: SHA256Value?) {
            guard let v else { return }
            name(n)
            out.append(UInt8(ascii: "\""))
            v.writeHex(into: &out)
            out.append(UInt8(ascii: "\""))
        }
        func integer(_ n: StaticString, _ v: Int64?) {
            guard let v else { return }
            name(n)
            out.append(contentsOf: String(v).utf8)
        }
        string("action", action)
        string("agent", agent)
        string("approval", approval)
        name("at")
        time.write(at, into: &out)
        string("credential", credential)
        string("entry", entry)
        string("idempotency", idempotency)
        string("key", key)
        integer("lost", lost.map(Int64.init))
        string("outcome", outcome)
        string("policy", policy)
        string("prev", prev)
        string("request_id", requestID)
        digest("request_sha256", requestDigest)
        digest("response_sha256", responseDigest)
        string("run", run)
        integer("seq", seq)
        string("sidecar", sidecar)
        string("sig", sig)
        integer("status", Int64(status))
        string("token_id", token)
        string("tool", tool)
        integer("upstream_status", upstreamStatus.map(Int64.init))
        integer("v", 1)
        out.append(UInt8(ascii: "}"))
    }
}

/// The hash chain of one sidecar's receipts (pure): every receipt carries its sequence number and the
/// SHA-256 of the previous receipt's canonical form; a *sealed* receipt also carries an Ed25519
/// signature over its own canonical form — which, through `prev`, covers every receipt before it.
struct ReceiptChain: Sendable {
    static let genesis = String(repeating: "0", count: 64)
    private var time = ReceiptTime()

    private(set) var seq: Int64
    private(set) var head: String

    init(seq: Int64 = 0, head: String = ReceiptChain.genesis) {
        self.seq = seq
        self.head = head
    }

    /// The next receipt as a line (without its newline) appended to `out`, signed when `signer` is given.
    mutating func append(_ draft: ReceiptDraft, sidecar: String, keyID: String, signer: Curve25519.Signing.PrivateKey?, into out: inout [UInt8]) {
        seq += 1
        let start = out.count
        draft.canonical(seq: seq, prev: head, sidecar: sidecar, key: keyID, sig: nil, time: &time, into: &out)
        let canonical = out[start...]
        let hash = Digest.sha256Hex(bytes: canonical)
        if let signer, let signature = try? signer.signature(for: Array(canonical)) {
            out.removeSubrange(start...)
            draft.canonical(seq: seq, prev: head, sidecar: sidecar, key: keyID, sig: Base64URL.encode(signature), time: &time, into: &out)
        }
        head = hash
    }

    /// The key id a receipt names: the first 16 hex digits of the SHA-256 of the raw public key.
    static func keyID(_ key: Curve25519.Signing.PublicKey) -> String { String(Digest.sha256Hex(bytes: Array(key.rawRepresentation)).prefix(16)) }
}

/// A SHA-256 as four words: kept in a request's record without a string, written as hex only by the
/// receipt writer.
struct SHA256Value: Sendable, Hashable {
    private var words: (UInt64, UInt64, UInt64, UInt64)

    init(_ digest: SHA256.Digest) {
        var w: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        digest.withUnsafeBytes { raw in withUnsafeMutableBytes(of: &w) { $0.copyMemory(from: raw) } }
        words = w
    }

    static func of(_ bytes: UnsafeRawBufferPointer) -> Self {
        var hasher = SHA256()
        hasher.update(bufferPointer: bytes)
        return Self(hasher.finalize())
    }

    static func == (a: Self, b: Self) -> Bool { a.words == b.words }
    func hash(into h: inout Hasher) { withUnsafeBytes(of: words) { h.combine(bytes: $0) } }

    func writeHex(into out: inout [UInt8]) {
        let digits: StaticString = "0123456789abcdef"
        withUnsafeBytes(of: words) { raw in
            digits.withUTF8Buffer { d in
                for b in raw {
                    out.append(d[Int(b >> 4)])
                    out.append(d[Int(b & 0xF)])
                }
            }
        }
    }

    var hex: String {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        writeHex(into: &out)
        return String(decoding: out, as: UTF8.self)
    }
}

/// Formats a receipt's time (`"2026-12-06T04:02:14.139Z"`, quoted), the date and time of day once per second.
struct ReceiptTime: Sendable {
    private var second: Int64 = .min
    private var prefix: [UInt8] = []

    mutating func write(_ millis: Int64, into out: inout [UInt8]) {
        let s = millis / 1000
        if s != second {
            second = s
            prefix = Array(LogSink.timestamp(seconds: Int(s), milliseconds: 0).utf8.dropLast(4))
        }
        out.append(UInt8(ascii: "\""))
        out.append(contentsOf: prefix)
        let ms = Int(millis % 1000)
        out.append(UInt8(48 + ms / 100))
        out.append(UInt8(48 + ms / 10 % 10))
        out.append(UInt8(48 + ms % 10))
        out.append(contentsOf: [UInt8(ascii: "Z"), UInt8(ascii: "\"")])
    }
}
