/// RFC 3986 reference resolution (§5.2): a `Location` (absolute, scheme-relative `//host/path`,
/// absolute-path, relative, with `.` and `..` segments, query-only, fragment-only) against the URL it
/// came from. One resolver for every form, so `//other-host:port/path` names `other-host` — never a path
/// on the original host — and the result is checked by the egress guard and the policy like any hop.
public enum URIReference {
    /// The five components of RFC 3986 §3 (Appendix B's regular expression): nil when absent, which is
    /// not the same as empty (`?` alone is an empty query).
    struct Components: Equatable {
        var scheme: String?
        var authority: String?
        var path: String
        var query: String?
        var fragment: String?

        init(_ s: Substring) {
            var rest = s
            if let hash = rest.firstIndex(of: "#") {
                fragment = String(rest[rest.index(after: hash)...])
                rest = rest[..<hash]
            }
            if let q = rest.firstIndex(of: "?") {
                query = String(rest[rest.index(after: q)...])
                rest = rest[..<q]
            }
            // A scheme is letters, digits, + - . before the first ':' that precedes any '/'.
            if let colon = rest.firstIndex(of: ":"), !rest[..<colon].isEmpty, rest[..<colon].first!.isLetter,
                rest[..<colon].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "+" || $0 == "-" || $0 == ".") })
            {
                scheme = rest[..<colon].lowercased()
                rest = rest[rest.index(after: colon)...]
            }
            if rest.hasPrefix("//") {
                rest = rest.dropFirst(2)
                let end = rest.firstIndex(of: "/") ?? rest.endIndex
                authority = String(rest[..<end])
                rest = rest[end...]
            }
            path = String(rest)
        }

        var recomposed: String {
            var out = ""
            if let scheme { out += scheme + ":" }
            if let authority { out += "//" + authority }
            out += path
            if let query { out += "?" + query }
            if let fragment { out += "#" + fragment }
            return out
        }
    }

    /// The target URI of `reference` against `base` (RFC 3986 §5.2.2, strict: a reference with a scheme
    /// is absolute even when it is the base's scheme).
    public static func resolve(_ reference: String, against base: String) -> String {
        let r = Components(Substring(reference))
        let b = Components(Substring(base))
        var t = Components(Substring(""))
        if let scheme = r.scheme {
            t.scheme = scheme
            t.authority = r.authority
            t.path = removeDotSegments(r.path)
            t.query = r.query
        } else {
            if r.authority != nil {
                t.authority = r.authority
                t.path = removeDotSegments(r.path)
                t.query = r.query
            } else {
                if r.path.isEmpty {
                    t.path = b.path
                    t.query = r.query ?? b.query
                } else {
                    t.path = r.path.hasPrefix("/") ? removeDotSegments(r.path) : removeDotSegments(merge(base: b, r.path))
                    t.query = r.query
                }
                t.authority = b.authority
            }
            t.scheme = b.scheme
        }
        t.fragment = r.fragment
        return t.recomposed
    }

    /// §5.2.3: the reference's path after the base path's last segment.
    static func merge(base: Components, _ path: String) -> String {
        if base.authority != nil, base.path.isEmpty { return "/" + path }
        guard let slash = base.path.lastIndex(of: "/") else { return path }
        return String(base.path[...slash]) + path
    }

    /// §5.2.4.
    public static func removeDotSegments(_ path: String) -> String {
        var input = Substring(path)
        var output: [Substring] = []
        while !input.isEmpty {
            if input.hasPrefix("../") {
                input = input.dropFirst(3)
            } else if input.hasPrefix("./") {
                input = input.dropFirst(2)
            } else if input.hasPrefix("/./") {
                input = input.dropFirst(2)
            } else if input == "/." {
                input = "/"
            } else if input.hasPrefix("/../") {
                input = input.dropFirst(3)
                if !output.isEmpty { output.removeLast() }
            } else if input == "/.." {
                input = "/"
                if !output.isEmpty { output.removeLast() }
            } else if input == "." || input == ".." {
                input = ""
            } else {
                // The first segment, with its leading "/" if any, up to (not including) the next "/".
                let start = input.hasPrefix("/") ? input.index(after: input.startIndex) : input.startIndex
                let end = input[start...].firstIndex(of: "/") ?? input.endIndex
                output.append(input[..<end])
                input = input[end...]
            }
        }
        return output.joined()
    }
}

extension TargetURL {
    /// Where a redirect's `Location` points, resolved against this URL (RFC 3986 §5); nil when the result
    /// is not an `http`/`https` URL the sidecar can go to.
    public func resolving(_ location: String) -> TargetURL? {
        try? TargetURL.parse(URIReference.resolve(location, against: description))
    }
}
