import Policy
import Yams

/// Parses YAML text into the neutral `DocumentNode` tree that configuration and policy readers walk.
enum YAMLDocument {
    static func parse(_ text: String) throws(DocumentError) -> DocumentNode {
        let node: Yams.Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw DocumentError(path: "", message: "not valid YAML: \(describe(error))")
        }
        guard let node else { return .mapping([]) }
        return try convert(node, path: "")
    }

    /// A YAML error in words and a position, without the document's text. Yams' own description quotes
    /// the lines around the problem — for a duplicated key, the whole document — and a configuration's
    /// lines hold Redis passwords and credentials: `check-config`, a failed start's log line and a
    /// `PUT /api/policy` answer printed them. A 10 000-character line came back whole, too.
    static func describe(_ error: any Error) -> String {
        guard let error = error as? YamlError else { return "the document cannot be read" }
        func at(_ mark: Mark) -> String { "line \(mark.line), column \(mark.column)" }
        switch error {
        case .reader(let problem, let offset, _, _):
            return offset.map { "\(problem) at character \($0 + 1)" } ?? problem
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            // libyaml's context and problem are its own fixed phrases ("while parsing a flow mapping",
            // "did not find expected ',' or '}'"), never the document's text.
            let during = context.map { "\($0.text) at \(at($0.mark)): " } ?? ""
            return "\(at(mark)): \(during)\(problem)"
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.map { "'\($0.count > 64 ? $0.prefix(64) + "…" : Substring($0))'" }.joined(separator: ", ")
            return "\(at(context.mark)): a key appears twice in one mapping: \(keys)"
        default:
            return "the document cannot be read"
        }
    }

    private static func convert(_ node: Yams.Node, path: String) throws(DocumentError) -> DocumentNode {
        switch node {
        case .scalar(let s):
            if s.style == .plain, ["", "~", "null", "Null", "NULL"].contains(s.string) { return .null }
            return .scalar(s.string, quoted: s.style != .plain)
        case .sequence(let seq):
            var items: [DocumentNode] = []
            for (i, item) in seq.enumerated() { items.append(try convert(item, path: "\(path)[\(i)]")) }
            return .sequence(items)
        case .mapping(let map):
            var entries: [DocumentNode.MappingEntry] = []
            for (k, v) in map {
                guard case .scalar(let key) = k else { throw DocumentError(path: path, message: "mapping keys must be strings") }
                let childPath = path.isEmpty ? key.string : "\(path).\(key.string)"
                entries.append(.init(key: key.string, value: try convert(v, path: childPath)))
            }
            return .mapping(entries)
        case .alias:
            throw DocumentError(path: path, message: "YAML aliases are not supported")
        }
    }
}
