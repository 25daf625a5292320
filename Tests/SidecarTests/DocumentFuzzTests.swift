import Foundation
import Policy
import Testing

@testable import Sidecar

/// Seeded mutation of the shipped configuration and policy documents through the real parsers. A policy
/// arrives over the control API (`PUT /api/policy`) and from hot reloads, so a value that traps the
/// compiler would take a running sidecar down: every mutant must parse or be refused with a message,
/// never crash this process.
@Suite("Configuration and policy documents under mutation")
struct DocumentFuzzTests {
    /// SplitMix64: a fixed seed gives the same mutants on every machine.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let hostileScalars = [
        "-1", "0", "1e400", "-1e400", ".nan", ".inf", "-.inf", "99999999999999999999", "9223372036854775807",
        "-9223372036854775808", "999999999999d", "1e15ms", "-5s", "0s", "0.0000001s", "~", "null", "[]", "{}", "''",
        "\"\"", "0x10", "0o17", "true", "no", "256.256.256.256/99", "::/129", "*", "**", "*.", "\u{202E}x",
        String(repeating: "a", count: 5000), "25:61", "Mars/Olympus", "Mon-Sun 24:00-25:00", "a:b:c", "&anchor", "*alias",
    ]

    static func mutate(_ text: String, _ rng: inout SeededGenerator) -> String {
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

    @Test(arguments: ["sidecar.dev.yaml", "sidecar.live.example.yaml"])
    func configMutantsParseOrAreRefusedWithAMessage(_ file: String) throws {
        let original = try Self.deployFile(file)
        var rng = SeededGenerator(state: Self.seed)
        var refused = 0
        for _ in 0..<Self.cases {
            do {
                _ = try ConfigLoader.parse(Self.mutate(original, &rng))
            } catch {
                #expect(!error.message.isEmpty)
                refused += 1
            }
        }
        #expect(refused > 100, "the mutations reach the validation, not only the happy path")
    }

    @Test func policyMutantsCompileOrAreRefusedWithAMessage() throws {
        let original = try Self.deployFile("policy.yaml")
        var rng = SeededGenerator(state: Self.seed &+ 1)
        var refused = 0
        for _ in 0..<Self.cases {
            do {
                _ = try PolicyRuntime.compile(Self.mutate(original, &rng))
            } catch {
                #expect(!error.message.isEmpty)
                refused += 1
            }
        }
        #expect(refused > 100)
    }
}
