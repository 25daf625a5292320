import Crypto
import Foundation
import Policy
import Upstreams

/// Checks receipt files (pure: bytes in, report out): every line a receipt, sequence numbers without a
/// gap, each `prev` the SHA-256 of the receipt before it, every signature valid under the named key —
/// and, given the head the fleet stored in Redis, that the files still reach it. Names the first break.
enum ReceiptVerifier {
    struct Report: Sendable, Equatable {
        var chain = ""
        var receipts = 0
        var signatures = 0
        var firstSeq: Int64?
        var lastSeq: Int64?
        var head: String?
        /// Receipts after the last signature (written by a sidecar that stopped before sealing them).
        var unsealed = 0
        /// The first problem: file, 1-based line, what is wrong.
        var failure: (file: String, line: Int, reason: String)?

        static func == (a: Report, b: Report) -> Bool {
            a.chain == b.chain && a.receipts == b.receipts && a.lastSeq == b.lastSeq && a.failure?.line == b.failure?.line
                && a.failure?.file == b.failure?.file
        }
    }

    /// One chain's files, in order (`receipts-<sidecar>-<first seq>.jsonl`).
    static func verify(
        chain: String, files: [(name: String, data: [UInt8])], keys: [String: Curve25519.Signing.PublicKey], expectedHead: (seq: Int64, hash: String)? = nil
    ) -> Report {
        var report = Report(chain: chain)
        var prevHash: String?
        var expectedSeq: Int64?
        var headHash: String?
        var previous: (file: String, line: Int)?
        for file in files {
            var lines = file.data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            let complete = lines.last?.isEmpty ?? true
            if complete, !lines.isEmpty { lines.removeLast() }
            for (i, line) in lines.enumerated() {
                let n = i + 1
                func fail(_ reason: String, file f: String? = nil, line l: Int? = nil) -> Report {
                    report.failure = (f ?? file.name, l ?? n, reason)
                    return report
                }
                if i == lines.count - 1, !complete { return fail("an incomplete receipt (the file was truncated mid-line)") }
                guard case .object(var body)? = JSONValue.parse(line), let seq = body["seq"]?.intValue.map(Int64.init),
                    let prev = body["prev"]?.stringValue, let keyID = body["key"]?.stringValue
                else { return fail("not a receipt (altered or truncated)") }
                if let expected = expectedSeq, seq != expected {
                    return fail(
                        seq > expected
                            ? "receipt \(seq) follows \(expected - 1): \(seq - expected) receipt(s) missing (removed)"
                            : "receipt \(seq) where \(expected) was expected (duplicated or reordered)")
                }
                if let prevHash, prev != prevHash, let previous {
                    return fail("altered: its hash does not match the prev that the next receipt carries", file: previous.file, line: previous.line)
                }
                if prevHash == nil, seq == 1, prev != ReceiptChain.genesis { return fail("the first receipt does not start the chain") }
                let signature = body.removeValue(forKey: "sig")
                let canonical = CanonicalJSON.serialize(.object(body))
                let hash = Digest.sha256Hex(bytes: canonical)
                if let signature {
                    guard let key = keys[keyID] else { return fail("signed with key \(keyID), which is not among the keys given") }
                    guard let text = signature.stringValue, let raw = Base64URL.decode(text), key.isValidSignature(raw, for: canonical) else {
                        return fail("the signature does not verify (altered)")
                    }
                    report.signatures += 1
                    report.unsealed = 0
                } else {
                    report.unsealed += 1
                }
                report.receipts += 1
                if report.firstSeq == nil { report.firstSeq = seq }
                report.lastSeq = seq
                prevHash = hash
                if seq == expectedHead?.seq { headHash = hash }
                expectedSeq = seq + 1
                previous = (file.name, n)
            }
        }
        report.head = prevHash
        if let expectedHead {
            if let last = report.lastSeq, last < expectedHead.seq {
                report.failure = (files.last?.name ?? "", 0, "the fleet's head is receipt \(expectedHead.seq); the files end at \(last) (truncated)")
            } else if let h = headHash, h != expectedHead.hash {
                report.failure = (files.last?.name ?? "", 0, "receipt \(expectedHead.seq) differs from the head the fleet stored (rewritten)")
            }
        }
        return report
    }
}
