/// One address of an RFC 5322 address list: the local part as written (a quoted one keeps its quotes)
/// and the domain, lowercased. The domain is what recipient-domain guards judge, so it is taken from
/// the parse — never from "whatever follows the last @", which `"<a@ok.test>"@evil.test` would fool.
public struct MailAddress: Sendable, Hashable, CustomStringConvertible {
    public var local: String
    public var domain: String
    public var description: String { "\(local)@\(domain)" }
}

/// A strict reader of RFC 5322 §3.4 address lists (`To`, `Cc`, `Bcc`, `Resent-*`): mailboxes, name-addrs
/// with display names (quoted, or atoms including RFC 2047 encoded words), groups, comments (nested,
/// with quoted pairs), quoted local parts and domain literals.
///
/// It answers nil for anything that is not clearly a list of addresses — an item without an addr-spec
/// (an encoded word where the address should be), two `@` outside quotes, unbalanced brackets or
/// quotes, an encoded word in a domain — because a recipient guard that skips what it cannot read lets
/// through whatever the mail system makes of it.
enum AddressList {
    enum Token: Equatable {
        case atom(String)
        case quoted(String)
        case domainLiteral(String)
        case special(UInt8)
    }

    static func parse(_ value: String) -> [MailAddress]? {
        guard let tokens = tokenize(Array(value.utf8)) else { return nil }
        var out: [MailAddress] = []
        var i = 0
        while i < tokens.count {
            // One address: up to a top-level ',' (a group runs to its ';').
            var j = i
            var angle = 0
            var group = false
            while j < tokens.count {
                let t = tokens[j]
                if t == .special(UInt8(ascii: "<")) { angle += 1 }
                if t == .special(UInt8(ascii: ">")) { angle -= 1 }
                if angle == 0, t == .special(UInt8(ascii: ":")) { group = true }
                if angle == 0, group, t == .special(UInt8(ascii: ";")) { j += 1; break }
                if angle == 0, !group, t == .special(UInt8(ascii: ",")) { break }
                j += 1
            }
            guard angle == 0 else { return nil }
            let item = Array(tokens[i..<j])
            i = j < tokens.count && tokens[j] == .special(UInt8(ascii: ",")) ? j + 1 : j
            if item.isEmpty { continue }  // obs-addr-list: empty items between commas
            if group {
                guard let colon = item.firstIndex(of: .special(UInt8(ascii: ":"))), item.last == .special(UInt8(ascii: ";")) else { return nil }
                for member in split(Array(item[(colon + 1)..<(item.count - 1)])) where !member.isEmpty {
                    guard let address = mailbox(member) else { return nil }
                    out.append(address)
                }
            } else {
                guard let address = mailbox(item) else { return nil }
                out.append(address)
            }
        }
        return out
    }

    /// Splits a group's mailbox list on top-level commas.
    private static func split(_ tokens: [Token]) -> [[Token]] {
        var parts: [[Token]] = [[]]
        var angle = 0
        for t in tokens {
            if t == .special(UInt8(ascii: "<")) { angle += 1 }
            if t == .special(UInt8(ascii: ">")) { angle -= 1 }
            if angle == 0, t == .special(UInt8(ascii: ",")) { parts.append([]) } else { parts[parts.count - 1].append(t) }
        }
        return parts
    }

    /// `display-name <addr-spec>` or a bare addr-spec.
    private static func mailbox(_ tokens: [Token]) -> MailAddress? {
        guard let open = tokens.firstIndex(of: .special(UInt8(ascii: "<"))) else { return addrSpec(tokens) }
        guard let close = tokens.lastIndex(of: .special(UInt8(ascii: ">"))), close == tokens.count - 1, close > open else { return nil }
        // The display name: words only (atoms, quoted strings, dots of obs-phrase).
        for t in tokens[..<open] {
            switch t {
            case .atom, .quoted: continue
            default: return nil
            }
        }
        return addrSpec(Array(tokens[(open + 1)..<close]))
    }

    /// `local-part "@" domain`, exactly one `@` outside quotes.
    private static func addrSpec(_ tokens: [Token]) -> MailAddress? {
        guard tokens.count == 3, tokens[1] == .special(UInt8(ascii: "@")) else { return nil }
        let local: String
        switch tokens[0] {
        case .atom(let a): local = a
        case .quoted(let q): local = "\"" + q + "\""
        default: return nil
        }
        let domain: String
        switch tokens[2] {
        case .atom(let d):
            guard d.utf8.first != UInt8(ascii: "."), d.utf8.last != UInt8(ascii: "."), !adjacent(".", ".", in: d), !adjacent("=", "?", in: d)
            else { return nil }
            domain = d
        case .domainLiteral(let d): domain = "[" + d + "]"
        default: return nil
        }
        guard !local.isEmpty, !domain.isEmpty else { return nil }
        return MailAddress(local: local.lowercased(), domain: domain.lowercased())
    }

    /// Whether `a` is directly followed by `b` somewhere in `s`, over bytes: Foundation's `contains` (a
    /// `range(of:)` through NSString) was most of the time a send spent reading its recipients.
    private static func adjacent(_ a: Unicode.Scalar, _ b: Unicode.Scalar, in s: String) -> Bool {
        var previous: UInt8 = 0
        for c in s.utf8 {
            if previous == UInt8(ascii: a), c == UInt8(ascii: b) { return true }
            previous = c
        }
        return false
    }

    /// RFC 5322's specials (`()<>[]:;@\,"`), by a switch: a `Set` hashed every byte of every atom.
    @inline(__always) static func isSpecial(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "["), UInt8(ascii: "]"),
            UInt8(ascii: ":"), UInt8(ascii: ";"), UInt8(ascii: "@"), UInt8(ascii: "\\"), UInt8(ascii: ","), UInt8(ascii: "\""):
            return true
        default: return false
        }
    }

    /// Atoms (dot-atoms included: `.` is kept inside), quoted strings and domain literals with their
    /// quoted pairs resolved, comments dropped, and the specials as tokens. nil when a quote, comment or
    /// literal is not closed.
    static func tokenize(_ b: [UInt8]) -> [Token]? {
        var tokens: [Token] = []
        var i = 0
        while i < b.count {
            let c = b[i]
            switch c {
            case 0x20, 0x09, 0x0D, 0x0A:
                i += 1
            case UInt8(ascii: "("):
                var depth = 0
                repeat {
                    guard i < b.count else { return nil }
                    if b[i] == UInt8(ascii: "\\") { i += 2; continue }
                    if b[i] == UInt8(ascii: "(") { depth += 1 }
                    if b[i] == UInt8(ascii: ")") { depth -= 1 }
                    i += 1
                } while depth > 0
            case UInt8(ascii: "\""), UInt8(ascii: "["):
                let close = c == UInt8(ascii: "\"") ? UInt8(ascii: "\"") : UInt8(ascii: "]")
                var text: [UInt8] = []
                i += 1
                while true {
                    guard i < b.count else { return nil }
                    if b[i] == UInt8(ascii: "\\") {
                        guard i + 1 < b.count else { return nil }
                        text.append(b[i + 1])
                        i += 2
                        continue
                    }
                    if b[i] == close { break }
                    text.append(b[i])
                    i += 1
                }
                i += 1
                let s = String(decoding: text, as: UTF8.self)
                tokens.append(c == UInt8(ascii: "\"") ? .quoted(s) : .domainLiteral(s))
            case _ where isSpecial(c):
                guard c != UInt8(ascii: ")"), c != UInt8(ascii: "]"), c != UInt8(ascii: "\\") else { return nil }
                tokens.append(.special(c))
                i += 1
            default:
                let start = i
                while i < b.count, !isSpecial(b[i]), b[i] != 0x20, b[i] != 0x09, b[i] != 0x0D, b[i] != 0x0A { i += 1 }
                tokens.append(.atom(String(decoding: b[start..<i], as: UTF8.self)))
            }
        }
        return tokens
    }
}
