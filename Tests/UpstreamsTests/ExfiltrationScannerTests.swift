import Foundation
import Testing

@testable import Upstreams

/// Exact-secret matching: every encoding an agent could hide a key in, a key split in two, a canary in a
/// JSON string with escapes — and nothing else, however key-like.
@Suite("Exfiltration scanner")
struct ExfiltrationScannerTests {
    static let key = "sk-proj-Q7f9Xk2LmN4pR8sT1vW3yZ"
    static let canary = "AKIA7CANARY4QX2LMN9P"
    let scanner = ExfiltrationScanner([
        .init(label: "openai", value: key, canary: false), .init(label: "canary ci", value: canary, canary: true),
        .init(label: "short", value: "abc", canary: false),
    ])

    func found(_ text: String) -> ExfiltrationScanner.Finding? { scanner.scan(text, location: "body") }

    static func base64(_ s: String, prefix: String = "", url: Bool = false) -> String {
        let b = Data((prefix + s + "!").utf8).base64EncodedString()
        return url ? b.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "") : b
    }

    @Test(arguments: [
        ("raw", "token=\(key)&x=1"),
        ("hex", "h=" + Array(key.utf8).map { String(format: "%02x", $0) }.joined()),
        ("hex", "H=" + Array(key.utf8).map { String(format: "%02X", $0) }.joined()),
        ("base64", "b=" + base64(key)), ("base64", "b=" + base64(key, prefix: "x")), ("base64", "b=" + base64(key, prefix: "xy")),
        ("base64", "u=" + base64(key, prefix: "?", url: true)),  // the URL alphabet (this key's encoding has no + or / to tell them apart)
        ("percent-encoded", "k=" + Array(key.utf8).map { String(format: "%%%02X", $0) }.joined()),
        ("JSON-escaped", #"{"m": "\#(key.unicodeScalars.map { String(format: "\\u%04x", $0.value) }.joined())"}"#),
    ])
    func findsTheKeyInEveryForm(form: String, text: String) {
        let f = found(text)
        #expect(f?.label == "openai" && f?.canary == false, "\(form): \(text)")
        #expect(f.map { $0.form.contains(form) } == true, "\(String(describing: f?.form)) for \(form)")
        #expect(f.map { !"\($0)".contains(Self.key) } == true, "a finding never carries the value")
    }

    @Test func aKeySplitInTwoIsFoundInEitherHalf() {
        let half = Self.key.count / 2
        #expect(found(String(Self.key.prefix(half))) != nil)
        #expect(found(String(Self.key.suffix(Self.key.count - half))) != nil)
        #expect(found(String(Self.key.prefix(7))) == nil, "less than a window is not a match")
    }

    @Test func canariesAreNamedAsCanaries() {
        let f = found(#"{"note":"\u0041KIA7CANARY4QX2LMN9P"}"#)
        #expect(f?.canary == true && f?.label == "canary ci" && "\(f!)".hasPrefix("a canary credential"))
    }

    @Test func nothingElseMatches() {
        #expect(found("sk-proj-AAAAAAAAAAAAAAAAAAAAAAAA and AKIAIOSFODNN7EXAMPLE, abc abc abc") == nil)
        var noise = ""
        var x: UInt64 = 42
        for _ in 0..<4000 {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            noise.append(Character(Unicode.Scalar(UInt8(33 + (x >> 33) % 94))))
        }
        #expect(found(noise) == nil)
        #expect(ExfiltrationScanner([.init(label: "short", value: "abc", canary: false)]).isEmpty, "too short to search for")
    }

    @Test func theURLAlphabetIsItsOwnForm() {
        let value = "k>?~>?~>?~>?~>?~x"  // base64 full of + and /
        let std = Data(value.utf8).base64EncodedString()
        #expect(std.contains("+") || std.contains("/"))
        let url = std.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        let s = ExfiltrationScanner([.init(label: "odd", value: value, canary: false)])
        #expect(s.scan("v=" + url, location: "URL")?.form == "base64url")
        #expect(s.scan("v=" + std, location: "URL")?.form == "base64")
    }
}
