import Crypto
import Foundation
import Testing
import Upstreams

@testable import Sidecar

/// Receipts: RFC 8785 canonical form, the hash chain with batch signatures, and verification that names
/// the first altered, removed or truncated line.
@Suite struct ReceiptTests {
    @Test func canonicalJSONFollowsRFC8785() {
        // Members sorted by UTF-16 code units (RFC 8785 §3.2.3): U+20AC (0x20AC) before U+1F600, whose first
        // unit is the surrogate 0xD83D — code-point order would agree here, UTF-8 byte order too, but
        // U+FF5E (0xFF5E) vs U+1F600 would not. No whitespace, minimal escapes.
        let value: JSONValue = ["b": 1, "a": ["x", true, .null], "\u{20AC}": "euro", "\u{1F600}": "smile", "\u{80}": "c1", "\u{FF5E}": "w"]
        let text = String(decoding: CanonicalJSON.serialize(value), as: UTF8.self)
        #expect(text == #"{"a":["x",true,null],"b":1,"\#u{80}":"c1","\#u{20AC}":"euro","\#u{1F600}":"smile","\#u{FF5E}":"w"}"#)
        let escaped = String(decoding: CanonicalJSON.serialize(.string("q\"\\\n\t\u{1}é/")), as: UTF8.self)
        #expect(escaped == #""q\"\\\n\t\u0001é/""#)
        #expect(String(decoding: CanonicalJSON.serialize(.number(200)), as: UTF8.self) == "200")
    }

    /// The writer's fixed member order is RFC 8785's: each line is exactly what the generic canonical
    /// form of its parsed value is (what `verify` recomputes), with every optional member present or not.
    @Test func theWritersFormIsTheCanonicalForm() throws {
        var rng = SystemRandomNumberGenerator()
        let key = Curve25519.Signing.PrivateKey()
        var chain = ReceiptChain()
        for i in 0..<200 {
            func maybe(_ s: String) -> String? { Bool.random(using: &rng) ? s : nil }
            var d = ReceiptDraft(
                at: 1_765_000_000_000 + Int64(i) * 997, requestID: "r\(i)\u{1}\"q", entry: maybe("reverse"), agent: maybe("agt_é"), token: maybe("tok_1"),
                run: maybe("run_1"), tool: maybe("openai"), action: maybe("chat"), requestDigest: Bool.random(using: &rng) ? SHA256Value(SHA256.hash(data: [1])) : nil, responseDigest: Bool.random(using: &rng) ? SHA256Value(SHA256.hash(data: [2])) : nil,
                status: 200 + i % 300, outcome: "ok\n", upstreamStatus: Bool.random(using: &rng) ? 503 : nil, policy: maybe("p"), credential: maybe("openai@v2"),
                approval: maybe("apr_x"), idempotency: maybe("replay"))
            d.lost = Bool.random(using: &rng) ? i : nil
            var line: [UInt8] = []
            chain.append(d, sidecar: "sc-1", keyID: "k", signer: i % 3 == 0 ? key : nil, into: &line)
            guard let parsed = JSONValue.parse(line) else {
                Issue.record("not JSON: \(String(decoding: line, as: UTF8.self))")
                continue
            }
            #expect(CanonicalJSON.serialize(parsed) == line, "\(String(decoding: line, as: UTF8.self))")
        }
    }

    static func lines(_ n: Int, batch: Int, key: Curve25519.Signing.PrivateKey) -> [UInt8] {
        var chain = ReceiptChain()
        var out: [UInt8] = []
        for i in 1...n {
            let draft = ReceiptDraft(
                at: 1_765_000_000_000 + Int64(i), requestID: "r\(i)", agent: "agt_1", tool: "gmail_send", action: "send",
                requestDigest: SHA256Value(SHA256.hash(data: [UInt8(i & 0xFF)])), status: i % 7 == 0 ? 403 : 200, outcome: i % 7 == 0 ? "param_denied" : "ok")
            chain.append(draft, sidecar: "sc-1", keyID: ReceiptChain.keyID(key.publicKey), signer: i % batch == 0 || i == n ? key : nil, into: &out)
            out.append(10)
        }
        return out
    }

    static func lineRanges(_ data: [UInt8]) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        var start = 0
        for (i, b) in data.enumerated() where b == 10 {
            ranges.append(start..<i)
            start = i + 1
        }
        return ranges
    }

    @Test func aThousandReceiptsVerifyAndEachTamperingIsNamed() throws {
        let key = Curve25519.Signing.PrivateKey()
        let keys = [ReceiptChain.keyID(key.publicKey): key.publicKey]
        let data = Self.lines(1000, batch: 256, key: key)
        let ok = ReceiptVerifier.verify(chain: "sc-1", files: [("f1", data)], keys: keys)
        #expect(ok.failure == nil && ok.receipts == 1000 && ok.signatures == 4 && ok.unsealed == 0)

        let ranges = Self.lineRanges(data)
        // One line altered (status 200 → 201), unsealed: named by the next line's link.
        var altered = data
        let line500 = String(decoding: data[ranges[499]], as: UTF8.self)
        let changed = Array(line500.replacingOccurrences(of: #""status":200"#, with: #""status":201"#).utf8)
        #expect(changed.count == ranges[499].count)
        altered.replaceSubrange(ranges[499], with: changed)
        let a = ReceiptVerifier.verify(chain: "sc-1", files: [("f1", altered)], keys: keys)
        #expect(a.failure?.line == 500 && a.failure?.reason.contains("altered") == true)
        // A sealed line altered: its signature fails.
        var sealed = data
        let line512 = String(decoding: data[ranges[511]], as: UTF8.self)
        sealed.replaceSubrange(ranges[511], with: Array(line512.replacingOccurrences(of: #""status":200"#, with: #""status":500"#).utf8))
        let s = ReceiptVerifier.verify(chain: "sc-1", files: [("f1", sealed)], keys: keys)
        #expect(s.failure?.line == 512 && s.failure?.reason.contains("signature") == true)
        // One line removed.
        var removed = data
        removed.removeSubrange(ranges[299].lowerBound...ranges[299].upperBound)
        let r = ReceiptVerifier.verify(chain: "sc-1", files: [("f1", removed)], keys: keys)
        #expect(r.failure?.line == 300 && r.failure?.reason.contains("missing") == true)
        // Truncated mid-line.
        let truncated = Array(data[..<(ranges[899].lowerBound + 40)])
        let t = ReceiptVerifier.verify(chain: "sc-1", files: [("f1", truncated)], keys: keys)
        #expect(t.failure?.line == 900 && t.failure?.reason.contains("truncated") == true)
        // Cut at a line boundary: only the fleet's head shows it.
        let cut = Array(data[..<(ranges[799].upperBound + 1)])
        let c = ReceiptVerifier.verify(chain: "sc-1", files: [("f1", cut)], keys: keys, expectedHead: (1000, ok.head!))
        #expect(c.failure?.reason.contains("truncated") == true)
        #expect(ReceiptVerifier.verify(chain: "sc-1", files: [("f1", data)], keys: keys, expectedHead: (1000, ok.head!)).failure == nil)
        // Another key cannot vouch for the chain.
        let other = Curve25519.Signing.PrivateKey()
        let forged = ReceiptVerifier.verify(chain: "sc-1", files: [("f1", data)], keys: [ReceiptChain.keyID(key.publicKey): other.publicKey])
        #expect(forged.failure?.line == 256)
    }

    @Test func aChainGoesOnAcrossFilesAndRestarts() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("receipts-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var settings = ReceiptSettings()
        settings.dir = (dir as NSString).appendingPathComponent("receipts")
        settings.maxFileBytes = 65_536
        let logger = Logger(label: "test")
        for round in 0..<2 {
            let log = try ReceiptLog(settings: settings, stateDir: dir, sidecar: "sc-1", logger: logger)
            for i in 0..<1000 {
                log.record(ReceiptDraft(at: 1_765_000_000_000, requestID: "r\(round)-\(i)", status: 200, outcome: "ok"))
                if i % 100 == 99 { log.flushForTests() }
            }
            log.flushForTests()
            log.closeForTests()
        }
        let names = ReceiptLog.files(dir: settings.dir!, sidecar: "sc-1")
        #expect(names.count > 2, "rotated past 64 KiB: \(names)")
        let files = try names.map { ($0, [UInt8](try Data(contentsOf: URL(fileURLWithPath: (settings.dir! as NSString).appendingPathComponent($0))))) }
        let keys = try ReceiptKeys.publicKeys(at: (dir as NSString).appendingPathComponent("keys"))
        let report = ReceiptVerifier.verify(chain: "sc-1", files: files, keys: keys)
        #expect(report.failure == nil && report.receipts == 2000 && report.firstSeq == 1 && report.lastSeq == 2000)
        let mode = try FileManager.default.attributesOfItem(atPath: (dir as NSString).appendingPathComponent("keys/receipts-\(keys.keys.first!).key"))[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }
}

import Logging
