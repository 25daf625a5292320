import ArgumentParser
import Foundation

extension SidecarCommand {
    /// `sidecar receipts verify DIR [--keys PATH] [--redis URL]`: checks every chain of receipt files in
    /// DIR — signatures, sequence, hash links — and, with `--redis`, that each chain still reaches the
    /// head its sidecar stored there. Prints one line per chain; exits 1 at the first break, naming the
    /// file and line.
    struct Receipts: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "receipts", abstract: "Signed, hash-chained call receipts.", subcommands: [Verify.self])

        struct Verify: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Verify receipt files: signatures, chain, and (with --redis) the fleet's heads.")

            @Argument(help: "Directory of receipts-<sidecar>-<seq>.jsonl files.")
            var dir: String

            @Option(name: .long, help: "A receipts-*.pub file or a directory of them (default: DIR/../keys).")
            var keys: String?

            @Option(name: .long, help: "Redis URL holding the sidecars' sealed heads (sidecar:receipts:head:<id>).")
            var redis: String?

            @Flag(name: .long, help: "Fail when receipts after the last signature are unsealed.")
            var strict = false

            func run() async throws {
                do {
                    let keyPath = keys ?? ((dir as NSString).deletingLastPathComponent as NSString).appendingPathComponent("keys")
                    let publicKeys = try ReceiptKeys.publicKeys(at: keyPath)
                    let chains = Self.chains(in: dir)
                    guard !chains.isEmpty else { throw StartupError("no receipt files in \(dir)") }
                    var failed = false
                    for (sidecar, names) in chains.sorted(by: { $0.key < $1.key }) {
                        let files = try names.map { ($0, [UInt8](try Data(contentsOf: URL(fileURLWithPath: (dir as NSString).appendingPathComponent($0))))) }
                        var head: (seq: Int64, hash: String)?
                        if let redis { head = try await Self.head(url: redis, sidecar: sidecar) }
                        let report = ReceiptVerifier.verify(chain: sidecar, files: files, keys: publicKeys, expectedHead: head)
                        let span = report.firstSeq.map { "\($0)…\(report.lastSeq!)" } ?? "none"
                        if let f = report.failure {
                            failed = true
                            print("FAIL \(sidecar): \(f.file)\(f.line > 0 ? ":\(f.line)" : ""): \(f.reason) (after \(report.receipts) good receipts)")
                        } else if report.unsealed > 0, strict {
                            failed = true
                            print("FAIL \(sidecar): \(report.unsealed) receipt(s) after the last signature are unsealed")
                        } else {
                            let tail = report.unsealed > 0 ? "; \(report.unsealed) after the last signature not yet sealed" : ""
                            print("ok \(sidecar): \(report.receipts) receipts (\(span)), \(report.signatures) signatures\(head != nil ? ", reaches the fleet's head" : "")\(tail)")
                        }
                    }
                    if failed { throw ExitCode(1) }
                } catch let e as ExitCode {
                    throw e
                } catch {
                    FileHandle.standardError.write(Data("receipts verify: \(error)\n".utf8))
                    throw ExitCode(1)
                }
            }

            /// Files by chain (the sidecar id in their names), each chain in order.
            static func chains(in dir: String) -> [String: [String]] {
                var out: [String: [String]] = [:]
                for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix("receipts-") && name.hasSuffix(".jsonl") {
                    let stem = name.dropFirst("receipts-".count).dropLast(".jsonl".count)
                    guard let dash = stem.lastIndex(of: "-"), Int64(stem[stem.index(after: dash)...]) != nil else { continue }
                    out[String(stem[..<dash]), default: []].append(name)
                }
                return out.mapValues { $0.sorted() }
            }

            static func head(url: String, sidecar: String) async throws -> (seq: Int64, hash: String)? {
                guard let location = RedisLocation.parse(url, cluster: false) else { throw StartupError("--redis: not a redis:// URL") }
                let client = RedisClient(seeds: location.seeds, cluster: location.cluster, poolSize: 1, commandTimeout: .seconds(2), connectTimeout: .seconds(2))
                guard let text = try await client.send(["GET", ReceiptLog.headKey(sidecar)]).string else { return nil }
                let parts = text.split(separator: " ")
                guard parts.count == 2, let seq = Int64(parts[0]) else { return nil }
                return (seq, String(parts[1]))
            }
        }
    }
}
