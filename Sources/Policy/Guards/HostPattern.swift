/// A host allow/block pattern: an exact name (`example.com`) or a leading wildcard (`*.example.com`,
/// which matches any subdomain but not the apex). Nothing else: no suffix matching, so `evilexample.com`
/// never matches `example.com`, and a pattern never matches across a dot it does not name.
public struct HostPattern: Sendable, Hashable, CustomStringConvertible {
    let suffix: String
    let wildcard: Bool

    public init?(_ text: String) {
        var t = text.lowercased()
        if t.hasSuffix(".") { t.removeLast() }
        if t.hasPrefix("*.") {
            let rest = String(t.dropFirst(2))
            guard HostPattern.isHostName(rest), rest.contains(".") else { return nil }
            suffix = rest
            wildcard = true
        } else {
            guard !t.contains("*"), HostPattern.isHostName(t) || HostPattern.isIPLiteral(t) else { return nil }
            suffix = t
            wildcard = false
        }
    }

    public func matches(_ host: String) -> Bool {
        var h = host.lowercased()
        if h.hasSuffix(".") { h.removeLast() }
        if !wildcard { return h == suffix }
        guard h.count > suffix.count + 1, h.hasSuffix(suffix) else { return false }
        return h[h.index(h.endIndex, offsetBy: -(suffix.count + 1))] == "."
    }

    public var description: String { wildcard ? "*.\(suffix)" : suffix }

    static func isHostName(_ s: String) -> Bool {
        guard !s.isEmpty, s.count <= 253 else { return false }
        for label in s.split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.count <= 63, !label.hasPrefix("-"), !label.hasSuffix("-"),
                label.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") })
            else { return false }
        }
        return true
    }

    static func isIPLiteral(_ s: String) -> Bool { s.contains(":") && s.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." } }
}
