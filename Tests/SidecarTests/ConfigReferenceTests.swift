import Foundation
import Policy
import Testing
import Upstreams

@testable import Sidecar

/// The README's configuration reference is part of the contract: every field the loader accepts is in
/// it, and every field in it is one the loader accepts.
///
/// The loader's schema is not restated here: it is found by probing `ConfigLoader.parse` with an
/// unknown field at each level, whose error names the fields allowed there. A new field, or a renamed
/// one, fails this test until the README says so.
@Suite("Configuration reference")
struct ConfigReferenceTests {
    static let probe = "zz_probe"

    /// A document that sets `path` to a mapping holding only the probe field, in YAML flow style (keys
    /// quoted: `*` would be an alias).
    static func document(_ path: [String]) -> String {
        path.reversed().reduce("{\(probe): 1}") { inner, key in "{\"\(key)\": \(inner)}" }
    }

    /// What the loader says about a probe under `path`: the allowed fields (a mapping of fields), the
    /// known tools (a mapping keyed by tool), or nil (a value, or anything else).
    enum Level { case fields([String]), tools }

    static func level(at path: [String]) -> Level? {
        do {
            _ = try ConfigLoader.parse(document(path))
            return nil
        } catch {
            guard error.path == (path + [probe]).joined(separator: ".") else { return nil }
            if error.message.hasPrefix("unknown tool") { return .tools }
            let prefix = "unknown field (allowed: "
            guard error.message.hasPrefix(prefix), error.message.hasSuffix(")") else { return nil }
            return .fields(error.message.dropFirst(prefix.count).dropLast().components(separatedBy: ", "))
        }
    }

    /// Every leaf field the loader accepts, a tool's fields named once under `<tool>`.
    static func acceptedFields(under path: [String] = []) -> Set<String> {
        switch level(at: path) {
        case nil:
            return [path.joined(separator: ".")]
        case .tools:
            // `tools:` takes tool names, `chaos.tools:` also `*`; each tool has the same fields.
            let (name, label) = path == ["chaos", "tools"] ? ("*", "<tool or *>") : ("serpapi", "<tool>")
            return Set(acceptedFields(under: path + [name]).map { $0.replacingOccurrences(of: ".\(name).", with: ".\(label).") })
        case .fields(let names):
            return names.reduce(into: Set<String>()) { $0.formUnion(acceptedFields(under: path + [$1])) }
        }
    }

    /// The fields the README's reference table names, written out: `a.b` / `c` is `a.b` and `a.c`,
    /// `a.{b,c}` is `a.b` and `a.c`, a tool's own field (`tools.http_fetch.x`) is `tools.<tool>.x`, and
    /// the chaos faults listed in the meaning column are fields of `chaos.tools.<tool or *>`.
    static func documentedFields() throws -> Set<String> {
        let readme = try Repository.readme()
        guard let start = readme.range(of: "## Configuration reference"), let end = readme.range(of: "\n## ", range: start.upperBound..<readme.endIndex)
        else { throw DocumentError(path: "README", message: "no configuration reference") }
        /// The `code spans` of a table cell.
        func quoted(_ cell: String) -> [String] {
            cell.split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
        }
        var fields = Set<String>()
        for line in readme[start.upperBound..<end.lowerBound].split(separator: "\n") where line.hasPrefix("| `") {
            let columns = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            let names = quoted(columns[1])
            guard let first = names.first else { continue }
            let parent = first.split(separator: ".").dropLast().joined(separator: ".")
            for name in names {
                let full = name.contains(".") || parent.isEmpty ? name : "\(parent).\(name)"
                if let brace = full.firstIndex(of: "{"), full.hasSuffix("}") {
                    let base = full[..<brace]
                    for child in full[full.index(after: brace)..<full.index(before: full.endIndex)].split(separator: ",") {
                        fields.insert(String(base) + String(child))
                    }
                } else if full == "chaos.tools.<tool or *>" {
                    let faults = quoted(columns[3])
                    for fault in faults { fields.insert("\(full).\(fault)") }
                } else {
                    let tool = Tool.allCases.first { full.hasPrefix("tools.\($0.rawValue).") }
                    fields.insert(tool.map { full.replacingOccurrences(of: "tools.\($0.rawValue).", with: "tools.<tool>.") } ?? full)
                }
            }
        }
        return fields
    }

    @Test func theProbeFindsTheSchema() {
        // Guards the probe itself: a loader that stopped naming allowed fields would make the
        // comparison below vacuous.
        let accepted = Self.acceptedFields()
        #expect(accepted.count > 60)
        #expect(accepted.contains("resilience.breaker.half_open_probes"))
        #expect(accepted.contains("tools.<tool>.cache_ttl"))
        #expect(accepted.contains("chaos.tools.<tool or *>.truncate_rate"))
        #expect(accepted.contains("state.on_redis_failure.quota"))
    }

    @Test func readmeDocumentsExactlyTheAcceptedFields() throws {
        let accepted = Self.acceptedFields()
        let documented = try Self.documentedFields()
        #expect(accepted.subtracting(documented).sorted() == [], "accepted by the loader, missing from the README")
        #expect(documented.subtracting(accepted).sorted() == [], "in the README, not accepted by the loader")
    }

    /// Every environment variable the sources read by name is named in the README.
    @Test func readmeNamesEveryEnvironmentVariable() throws {
        let root = Repository.root
        let readme = try Repository.readme()
        let pattern = try NSRegularExpression(pattern: #""((?:SIDECAR_|FF_|REDIS_|LOG_|KEK_)[A-Z0-9_]+)""#)
        var names = Set<String>()
        let files = FileManager.default.enumerator(atPath: root + "/Sources")?.compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") } ?? []
        for file in files {
            let text = try String(contentsOfFile: root + "/Sources/" + file, encoding: .utf8)
            for m in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                names.insert(String(text[Range(m.range(at: 1), in: text)!]))
            }
        }
        #expect(names.count >= 10 && names.contains("SIDECAR_EVENT_LOOPS"))
        #expect(names.filter { !readme.contains("`\($0)") }.sorted() == [], "read by the sources, not named in the README")
    }
}
