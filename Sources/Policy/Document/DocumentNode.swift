/// A parsed configuration or policy document, independent of the YAML library that produced it.
///
/// Keeping the tree neutral lets `Policy` compile documents without importing a parser, and lets every
/// error name the exact field path (`roles.scraper.rules[2].quota.limit`).
public indirect enum DocumentNode: Sendable, Hashable {
    case null
    /// A scalar's text and whether it was quoted (a quoted `"30"` is a string, never a number).
    case scalar(String, quoted: Bool)
    case sequence([DocumentNode])
    case mapping([MappingEntry])

    public struct MappingEntry: Sendable, Hashable {
        public var key: String
        public var value: DocumentNode
        public init(key: String, value: DocumentNode) {
            self.key = key
            self.value = value
        }
    }
}

/// A document error that names the field path, e.g. `tools.openai.timeout: expected a duration like 30s`.
public struct DocumentError: Error, Sendable, Hashable, CustomStringConvertible {
    public let path: String
    public let message: String

    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Typed, path-tracking access to a `DocumentNode`. Every accessor throws a `DocumentError` naming the
/// field, and `checkKeys` rejects unknown keys so a typo never silently becomes a default.
public struct DocumentReader: Sendable {
    public let node: DocumentNode?
    public let path: String

    public init(_ node: DocumentNode?, path: String = "") {
        self.node = node
        self.path = path
    }

    public var isPresent: Bool {
        guard let node else { return false }
        return node != .null
    }

    public func error(_ message: String) -> DocumentError { DocumentError(path: path, message: message) }

    public subscript(key: String) -> DocumentReader {
        let childPath = path.isEmpty ? key : "\(path).\(key)"
        guard case .mapping(let entries)? = node else { return DocumentReader(nil, path: childPath) }
        return DocumentReader(entries.last(where: { $0.key == key })?.value, path: childPath)
    }

    /// The entries of a mapping, in document order (empty when absent).
    public func entries() throws(DocumentError) -> [(key: String, value: DocumentReader)] {
        switch node {
        case nil, .null?: return []
        case .mapping(let entries)?:
            var seen = Set<String>()
            var out: [(String, DocumentReader)] = []
            for e in entries {
                guard seen.insert(e.key).inserted else { throw DocumentError(path: path, message: "duplicate key '\(e.key)'") }
                out.append((e.key, DocumentReader(e.value, path: path.isEmpty ? e.key : "\(path).\(e.key)")))
            }
            return out.map { (key: $0.0, value: $0.1) }
        default: throw error("expected a mapping")
        }
    }

    /// The elements of a sequence (empty when absent).
    public func elements() throws(DocumentError) -> [DocumentReader] {
        switch node {
        case nil, .null?: return []
        case .sequence(let items)?: return items.enumerated().map { DocumentReader($1, path: "\(path)[\($0)]") }
        default: throw error("expected a list")
        }
    }

    /// Fails on any key not in `allowed`.
    public func checkKeys(_ allowed: Set<String>) throws(DocumentError) {
        for (key, value) in try entries() where !allowed.contains(key) {
            throw DocumentError(path: value.path, message: "unknown field (allowed: \(allowed.sorted().joined(separator: ", ")))")
        }
    }

    public func string() throws(DocumentError) -> String? {
        switch node {
        case nil, .null?: return nil
        case .scalar(let s, _)?: return s
        default: throw error("expected a string")
        }
    }

    public func string(default value: String) throws(DocumentError) -> String { try string() ?? value }

    public func requiredString() throws(DocumentError) -> String {
        guard let s = try string(), !s.isEmpty else { throw error("is required") }
        return s
    }

    public func int() throws(DocumentError) -> Int? {
        switch node {
        case nil, .null?: return nil
        case .scalar(let s, let quoted)?:
            guard !quoted, let v = Int(s.replacingUnderscores()) else { throw error("expected an integer, got '\(s)'") }
            return v
        default: throw error("expected an integer")
        }
    }

    public func int(default value: Int, range: ClosedRange<Int>) throws(DocumentError) -> Int {
        let v = try int() ?? value
        guard range.contains(v) else { throw error("must be between \(range.lowerBound) and \(range.upperBound)") }
        return v
    }

    public func double() throws(DocumentError) -> Double? {
        switch node {
        case nil, .null?: return nil
        case .scalar(let s, let quoted)?:
            guard !quoted, let v = Double(s.replacingUnderscores()) else { throw error("expected a number, got '\(s)'") }
            return v
        default: throw error("expected a number")
        }
    }

    public func bool() throws(DocumentError) -> Bool? {
        switch node {
        case nil, .null?: return nil
        case .scalar("true", false)?: return true
        case .scalar("false", false)?: return false
        default: throw error("expected true or false")
        }
    }

    public func bool(default value: Bool) throws(DocumentError) -> Bool { try bool() ?? value }

    /// A duration: `250ms`, `30s`, `5m`, `2h`, `1d`, or a bare number of seconds.
    public func duration() throws(DocumentError) -> Duration? {
        guard let s = try string() else { return nil }
        guard let d = DocumentReader.parseDuration(s) else { throw error("expected a duration like 30s, 250ms or 5m, got '\(s)'") }
        return d
    }

    public func duration(default value: Duration) throws(DocumentError) -> Duration { try duration() ?? value }

    /// A list of strings; a single scalar counts as a one-element list.
    public func strings() throws(DocumentError) -> [String]? {
        switch node {
        case nil, .null?: return nil
        case .scalar(let s, _)?: return [s]
        case .sequence?:
            var out: [String] = []
            for e in try elements() {
                guard let s = try e.string() else { throw e.error("expected a string") }
                out.append(s)
            }
            return out
        default: throw error("expected a list of strings")
        }
    }

    public static func parseDuration(_ raw: String) -> Duration? {
        let s = raw.trimmingSpaces()
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        for (suffix, ms) in units where s.hasSuffix(suffix) {
            let number = s.dropLast(suffix.count)
            if suffix == "s", number.hasSuffix("m") { continue }
            // Bounded in milliseconds, not in units: "999999999999d" must be refused, not overflow Int64
            // (agents reach this parser through X-Request-Timeout).
            guard let v = Double(number), v >= 0, v.isFinite, v * Double(ms) < 1e15 else { return nil }
            return .milliseconds(Int64((v * Double(ms)).rounded()))
        }
        guard let v = Double(s), v >= 0, v.isFinite, v < 1e9 else { return nil }
        return .milliseconds(Int64((v * 1000).rounded()))
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String { String(self.filter { $0 != "_" }) }
    fileprivate func trimmingSpaces() -> String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
