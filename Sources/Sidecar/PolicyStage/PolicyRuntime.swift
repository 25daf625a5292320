import Foundation
import Logging
import Policy
import Upstreams
import Synchronization

/// The active policy: compiled once, swapped whole. A reload compiles and validates first; an invalid
/// document is refused (with the field path) and the old policy stays. In-flight requests finish under
/// the snapshot they started with, so a reload under load fails no request.
final class PolicyRuntime: Sendable {
    private let current: Mutex<PolicyEvaluator>
    let file: String?
    private let lastModified = Mutex<Date?>(nil)
    let metrics: GatewayMetrics
    let logger: Logger

    /// The policy used when no file is configured: every tool open to `anonymous` (authentication off)
    /// and `developer`, and the three roles of the original system with their default tools.
    static let embeddedDefault = """
        version: 1
        roles:
          anonymous: {allow: ["*"]}
          developer: {allow: ["*"]}
          scraper: {allow: ["serpapi:search", "http_fetch:*"]}
          enricher: {allow: ["http_fetch:*", "openai:chat"]}
          engager: {allow: ["gmail_send:*", "openai:*"]}
        """

    init(file: String?, metrics: GatewayMetrics, logger: Logger) throws {
        self.file = file
        self.metrics = metrics
        self.logger = logger
        let text = try file.map { try Self.read($0) } ?? Self.embeddedDefault
        let compiled: CompiledPolicy
        do { compiled = try Self.compile(text) } catch {
            throw DocumentError(path: error.path, message: "\(file ?? "embedded policy"): \(error.message)")
        }
        current = Mutex(PolicyEvaluator(policy: compiled))
        if let file { lastModified.withLock { $0 = Self.mtime(file) } }
    }

    var evaluator: PolicyEvaluator { current.withLock { $0 } }
    var policy: CompiledPolicy { evaluator.policy }

    static func compile(_ text: String) throws(DocumentError) -> CompiledPolicy {
        try PolicyCompiler.compile(YAMLDocument.parse(text), source: text, isCIDR: { CIDR($0) != nil })
    }

    static func read(_ path: String) throws(DocumentError) -> String {
        do { return try TextFile.read(path) } catch { throw DocumentError(path: "", message: "policy file: \(error)") }
    }

    static func mtime(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }

    /// Re-reads the policy file (SIGHUP, `POST /api/policy/reload`, a change on disk).
    @discardableResult
    func reload(reason: String) throws(DocumentError) -> CompiledPolicy {
        guard let file else { return policy }
        lastModified.withLock { $0 = Self.mtime(file) }
        let text: String
        do { text = try Self.read(file) } catch {
            metrics.policyReloadFailures.increment()
            throw error
        }
        return try install(text, reason: reason)
    }

    /// Validates and activates a document (`PUT /api/policy`). With a file configured, the file is also
    /// rewritten, so the next restart or reload keeps it.
    @discardableResult
    func install(_ text: String, reason: String, persist: Bool = false) throws(DocumentError) -> CompiledPolicy {
        let compiled: CompiledPolicy
        do { compiled = try Self.compile(text) } catch {
            metrics.policyReloadFailures.increment()
            logger.error("policy rejected; the previous policy stays active", metadata: ["reason": "\(reason)", "error": "\(error)"])
            throw error
        }
        if persist, let file {
            try? text.write(toFile: file, atomically: true, encoding: .utf8)
            lastModified.withLock { $0 = Self.mtime(file) }
        }
        current.withLock { $0 = PolicyEvaluator(policy: compiled) }
        logger.notice("policy active", metadata: ["reason": "\(reason)", "hash": "\(compiled.hash.prefix(16))", "roles": "\(compiled.roleNames.joined(separator: ","))"])
        return compiled
    }

    /// Polls the file's modification time (once a second) and reloads when it changes.
    func watch() async {
        guard let file else { return }
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            let now = Self.mtime(file)
            if now != lastModified.withLock({ $0 }) {
                _ = try? reload(reason: "file changed")
            }
        }
    }
}
