import Policy
import Yams

/// Parses YAML text into the neutral `DocumentNode` tree that configuration and policy readers walk.
enum YAMLDocument {
    static func parse(_ text: String) throws(DocumentError) -> DocumentNode {
        // Refused before Yams reads the text: it resolves each alias to the anchored node, so nine
        // nested aliases of nine make 9⁹ nodes to walk (and to hash, when one is a mapping key) — a
        // 300-byte "billion laughs" held check-config, a start and `PUT /api/policy` at full CPU.
        if let line = anchorLine(text) {
            throw DocumentError(path: "", message: "line \(line): YAML anchors and aliases (&name, *name) are not supported")
        }
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

    /// The line of the first anchor (`&name` where a node begins: at a line's start, after `- `, any `:`,
    /// `? `, `[`, `{` or `,`), outside quoted scalars and comments; nil when there is none. Without an
    /// anchor no alias can resolve (libyaml refuses an undefined one), so this is all that needs finding.
    /// Conservative: a block scalar's line that begins with `&` is taken for an anchor too.
    static func anchorLine(_ text: String) -> Int? {
        let bytes = Array(text.utf8)
        guard bytes.contains(UInt8(ascii: "&")) else { return nil }
        var line = 1
        var nodeStart = true
        var afterSpace = true
        var quote: UInt8?
        var i = 0
        func isBlank(_ j: Int) -> Bool { j >= bytes.count || bytes[j] == 0x20 || bytes[j] == 0x09 || bytes[j] == 0x0A || bytes[j] == 0x0D }
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x0A { line += 1 }
            if let q = quote {
                if q == UInt8(ascii: "\""), b == UInt8(ascii: "\\") {
                    i += 2
                    continue
                }
                if b == q {
                    if q == UInt8(ascii: "'"), i + 1 < bytes.count, bytes[i + 1] == q { i += 2; continue }
                    quote = nil
                }
                i += 1
                continue
            }
            switch b {
            case 0x0A, 0x0D:
                nodeStart = true
                afterSpace = true
            case 0x20, 0x09:
                afterSpace = true
            case UInt8(ascii: "#") where afterSpace:
                while i + 1 < bytes.count, bytes[i + 1] != 0x0A { i += 1 }
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                if nodeStart { quote = b }
                nodeStart = false
                afterSpace = false
            case UInt8(ascii: "&"):
                if nodeStart { return line }
                afterSpace = false
            case UInt8(ascii: "["), UInt8(ascii: "{"), UInt8(ascii: ","):
                nodeStart = true
                afterSpace = false
            case UInt8(ascii: ":"):
                // Any colon: in a flow mapping libyaml takes a value right after a quoted key's colon
                // (`{"a":&x …}`), so waiting for a blank would let that anchor through.
                nodeStart = true
            case UInt8(ascii: "-"), UInt8(ascii: "?"):
                nodeStart = isBlank(i + 1) && nodeStart
                afterSpace = false
            case UInt8(ascii: "!") where nodeStart:
                while i + 1 < bytes.count, !isBlank(i + 1) { i += 1 }
            default:
                nodeStart = false
                afterSpace = false
            }
            i += 1
        }
        return nil
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
