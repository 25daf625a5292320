/// A JSON value that satisfies a JSON Schema, as far as the mock needs one: the arguments of a function
/// the mocked model calls, or a structured-output answer (`response_format` / `text.format` of type
/// `json_schema`). An SDK that parses either into its own types (pydantic models, zod schemas) then gets
/// a value it accepts, so an agent's tool loop and typed outputs run against the embedded default.
///
/// Covered: `type` (one or a list; `null` is taken last), `properties` (every one, as strict schemas
/// require), `items` with `minItems`/`maxItems`, `enum`, `const`, `anyOf`/`oneOf`/`allOf` (the first non-null
/// branch), `$ref` into `#/$defs/…` or `#/definitions/…` (pydantic's nested models), string `format`s
/// and `minLength`, number bounds. Anything else is the simplest value of its type. Recursion (a
/// self-referencing model) stops at a fixed depth with `null`, and the whole value at a fixed number of
/// nodes — the schema is the agent's, and arrays of arrays (or a `$ref` used everywhere) would otherwise
/// multiply into a value larger than memory.
enum MockSchemaInstance {
    static let maxDepth = 12
    static let maxNodes = 2_000

    static func instance(of schema: JSONValue, name: String = "value") -> JSONValue {
        var budget = maxNodes
        return instance(of: schema, root: schema, name: name, depth: 0, budget: &budget)
    }

    private static func instance(of schema: JSONValue, root: JSONValue, name: String, depth: Int, budget: inout Int) -> JSONValue {
        guard depth < maxDepth, budget > 0, case .object(let s) = schema else { return .null }
        budget -= 1
        if let ref = s["$ref"]?.stringValue {
            return resolve(ref, in: root).map { instance(of: $0, root: root, name: name, depth: depth + 1, budget: &budget) } ?? .null
        }
        if let value = s["const"] { return value }
        if let first = s["enum"]?.arrayValue?.first { return first }
        for key in ["anyOf", "oneOf", "allOf"] {
            guard let branches = s[key]?.arrayValue, !branches.isEmpty else { continue }
            let branch = branches.first { $0["type"]?.stringValue != "null" } ?? branches[0]
            return instance(of: branch, root: root, name: name, depth: depth + 1, budget: &budget)
        }
        var type = s["type"]?.stringValue
        if case .array(let types)? = s["type"] {
            type = types.compactMap(\.stringValue).first { $0 != "null" } ?? "null"
        }
        if type == nil { type = s["properties"] != nil ? "object" : (s["items"] != nil ? "array" : nil) }
        switch type {
        case "object":
            var out: [String: JSONValue] = [:]
            if case .object(let properties)? = s["properties"] {
                for (key, property) in properties { out[key] = instance(of: property, root: root, name: key, depth: depth + 1, budget: &budget) }
            }
            return .object(out)
        case "array":
            // One item (as many as minItems asks, up to 8), none when maxItems is 0.
            let count = min(max(1, min(s["minItems"]?.intValue ?? 1, 8)), max(0, s["maxItems"]?.intValue ?? 8))
            var items: [JSONValue] = []
            for _ in 0..<count where budget > 0 {
                items.append(instance(of: s["items"] ?? [:], root: root, name: name, depth: depth + 1, budget: &budget))
            }
            return .array(items)
        case "string":
            return .string(string(s, name: name))
        case "integer", "number":
            // 1, moved into the bounds (an exclusive bound one past it), whole for an integer.
            let integer = type == "integer"
            var value = 1.0
            if let low = s["minimum"]?.doubleValue ?? s["exclusiveMinimum"]?.doubleValue.map({ $0 + 1 }), value < low {
                value = integer ? low.rounded(.up) : low
            }
            if let high = s["maximum"]?.doubleValue ?? s["exclusiveMaximum"]?.doubleValue.map({ $0 - 1 }), value > high {
                value = integer ? high.rounded(.down) : high
            }
            return .number(value)
        case "boolean":
            return .bool(true)
        case "null":
            return .null
        default:
            return .string("mock \(name)")
        }
    }

    private static func string(_ s: [String: JSONValue], name: String) -> String {
        var text: String
        switch s["format"]?.stringValue {
        case "date"?: text = "2025-01-01"
        case "date-time"?: text = "2025-01-01T00:00:00Z"
        case "time"?: text = "00:00:00Z"
        case "email"?: text = "mock@example.com"
        case "uri"?, "url"?: text = "https://example.com/"
        case "uuid"?: text = "00000000-0000-4000-8000-000000000000"
        default: text = "mock \(name)"
        }
        if let maxLength = s["maxLength"]?.intValue, text.count > maxLength { text = String(text.prefix(max(0, maxLength))) }
        if let minLength = s["minLength"]?.intValue, text.count < minLength {
            text += String(repeating: "x", count: min(minLength - text.count, 4096))
        }
        return text
    }

    /// `#/$defs/Name` or `#/definitions/Name` (JSON Pointer, `~1` and `~0` unescaped).
    private static func resolve(_ ref: String, in root: JSONValue) -> JSONValue? {
        guard ref.hasPrefix("#/") else { return nil }
        var node: JSONValue? = root
        for token in ref.dropFirst(2).split(separator: "/", omittingEmptySubsequences: false) {
            var key = ""
            var escaped = false
            for c in token {
                if escaped { key.append(c == "1" ? "/" : "~"); escaped = false } else if c == "~" { escaped = true } else { key.append(c) }
            }
            node = node?[key]
        }
        return node
    }
}
