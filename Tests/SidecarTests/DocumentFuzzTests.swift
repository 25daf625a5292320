import Foundation
import Policy
import Testing
import Upstreams

@testable import Sidecar

/// Seeded mutation of the shipped configuration and policy documents through the real parsers. A policy
/// arrives over the control API (`PUT /api/policy`) and from hot reloads, so a value that traps the
/// compiler would take a running sidecar down: every mutant must parse or be refused with a message,
/// never crash this process.
@Suite("Configuration and policy documents under mutation")
struct DocumentFuzzTests {
    static let hostileScalars = [
        "-1", "0", "1e400", "-1e400", ".nan", ".inf", "-.inf", "99999999999999999999", "9223372036854775807",
        "-9223372036854775808", "999999999999d", "1e15ms", "-5s", "0s", "0.0000001s", "~", "null", "[]", "{}", "''",
        "\"\"", "0x10", "0o17", "true", "no", "256.256.256.256/99", "::/129", "*", "**", "*.", "\u{202E}x",
        String(repeating: "a", count: 5000), "25:61", "Mars/Olympus", "Mon-Sun 24:00-25:00", "a:b:c", "&anchor", "*alias",
    ]

    static func mutate(_ text: String, _ rng: inout SplitMix64) -> String {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            guard !lines.isEmpty else { break }
            let i = Int.random(in: 0..<lines.count, using: &rng)
            switch Int.random(in: 0..<6, using: &rng) {
            case 0, 1, 2:  // a scalar replaced by a hostile one
                if let colon = lines[i].firstIndex(of: ":") {
                    lines[i] = lines[i][...colon] + " " + hostileScalars.randomElement(using: &rng)!
                } else if let dash = lines[i].firstIndex(of: "-") {
                    lines[i] = lines[i][...dash] + " " + hostileScalars.randomElement(using: &rng)!
                }
            case 3: lines.remove(at: i)
            case 4: lines.insert(lines[i], at: i)  // a duplicate key or list item
            default:  // a byte-level edit
                var bytes = Array(lines[i].utf8)
                if !bytes.isEmpty { bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 32...126, using: &rng) }
                lines[i] = String(decoding: bytes, as: UTF8.self)
            }
        }
        return lines.joined(separator: "\n")
    }

    /// 1500 mutants per document in `make test`; DOC_FUZZ_CASES and DOC_FUZZ_SEED for longer campaigns.
    static let cases = ProcessInfo.processInfo.environment["DOC_FUZZ_CASES"].flatMap { Int($0) } ?? 1500
    static let seed = ProcessInfo.processInfo.environment["DOC_FUZZ_SEED"].flatMap { UInt64($0) } ?? 20_261_201

    static func deployFile(_ name: String) throws -> String {
        try String(contentsOfFile: Repository.root + "/deploy/" + name, encoding: .utf8)
    }

    /// Mutants of one shipped document through `parse`: each parses or is refused with a message (a
    /// SplitMix64 seed gives the same mutants on every machine); returns how many were refused.
    /// Yields now and then: a campaign is seconds of CPU in a debug build, and the tests run in parallel
    /// on a pool of as many threads as cores — held that long, tests waiting on I/O starve.
    static func campaign(_ file: String, seed: UInt64, parse: (String) throws(DocumentError) -> Void) async throws -> Int {
        let original = try deployFile(file)
        var rng = SplitMix64(seed: seed)
        var refused = 0
        for n in 0..<cases {
            if n % 64 == 63 { await Task.yield() }
            do {
                try parse(mutate(original, &rng))
            } catch {
                #expect(!error.message.isEmpty)
                refused += 1
            }
        }
        return refused
    }

    @Test(arguments: ["sidecar.dev.yaml", "sidecar.live.example.yaml"])
    func configMutantsParseOrAreRefusedWithAMessage(_ file: String) async throws {
        let refused = try await Self.campaign(file, seed: Self.seed) { text throws(DocumentError) in _ = try ConfigLoader.parse(text) }
        #expect(refused > 100, "the mutations reach the validation, not only the happy path")
    }

    @Test func policyMutantsCompileOrAreRefusedWithAMessage() async throws {
        let refused = try await Self.campaign("policy.yaml", seed: Self.seed &+ 1) { text throws(DocumentError) in _ = try PolicyRuntime.compile(text) }
        #expect(refused > 100)
    }
}
