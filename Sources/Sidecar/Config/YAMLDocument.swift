import Policy
import Yams

/// Parses YAML text into the neutral `DocumentNode` tree that configuration and policy readers walk.
enum YAMLDocument {
    static func parse(_ text: String) throws(DocumentError) -> DocumentNode {
        let node: Yams.Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw DocumentError(path: "", message: "not valid YAML: \(error)")
        }
        guard let node else { return .mapping([]) }
        return try convert(node, path: "")
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
