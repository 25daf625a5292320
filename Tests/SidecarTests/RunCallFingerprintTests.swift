import Foundation
import NIOCore
import Policy
import Testing
import Upstreams

@testable import Sidecar

/// The loop breaker's fingerprint (`RunCall.fingerprint`, one pass over the body): the same call spelled
/// differently is the same call; any difference in what it asks for is another call; no body harms it.
@Suite("Runs: call fingerprints")
struct RunCallFingerprintTests {
    static func call(_ body: String?, query: String = "q=a&num=2", path: String = "/v1/chat/completions") -> ToolCall {
        call(bytes: body.map { ByteBuffer(string: $0) }, query: query, path: path)
    }

    static func call(bytes body: ByteBuffer?, query: String = "q=a&num=2", path: String = "/v1/chat/completions") -> ToolCall {
        let request = ToolRequest(method: .POST, path: path, query: QueryString(parsing: query), body: body)
        return ToolCall(
            tool: .openai, action: "chat", request: request,
            parameters: .openai(.init(model: "m", maxTokens: nil, stream: false, temperature: nil, estimatedInputTokens: 1)))
    }

    static func print(_ body: String?, query: String = "q=a&num=2", path: String = "/v1/chat/completions") -> CallFingerprint {
        RunCall.fingerprint(call(body, query: query, path: path))
    }

    static func upload(boundary: String, model: String = "whisper-1", audio: String = "RIFF0000", type: String? = nil) -> ToolCall {
        let body = "--\(boundary)\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\(model)\r\n"
            + "--\(boundary)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n\(audio)\r\n--\(boundary)--\r\n"
        let request = ToolRequest(
            method: .POST, path: "/v1/audio/transcriptions", headers: ["Content-Type": type ?? "multipart/form-data; boundary=\(boundary)"],
            body: ByteBuffer(string: body))
        return ToolCall(
            tool: .openai, action: "transcriptions", request: request,
            parameters: .openai(.init(model: model, maxTokens: 0, stream: false, temperature: nil, estimatedInputTokens: 1)))
    }

    /// An SDK draws a new boundary for every upload: the same upload repeated is the same call to the loop
    /// breaker, an approval and the ledger; another model or file is not; nor is a body under a content type
    /// whose boundary does not match (its bytes are taken as they are).
    @Test func uploadsCompareWithoutTheirBoundary() {
        let a = Self.upload(boundary: "a1b2c3"), b = Self.upload(boundary: "zz-9876543210")
        #expect(RunCall.fingerprint(a) == RunCall.fingerprint(b))
        #expect(RunCall.exactDigest(a) == RunCall.exactDigest(b) && RunCall.digest(a) == RunCall.digest(b))
        for other in [Self.upload(boundary: "a1b2c3", model: "gpt-4o-transcribe"), Self.upload(boundary: "a1b2c3", audio: "RIFF0001")] {
            #expect(RunCall.fingerprint(other) != RunCall.fingerprint(a))
            #expect(RunCall.exactDigest(other) != RunCall.exactDigest(a) && RunCall.digest(other) != RunCall.digest(a))
        }
        let mismatched = Self.upload(boundary: "a1b2c3", type: "multipart/form-data; boundary=zz-9876543210")
        #expect(RunCall.uploadDigest(mismatched) == nil && RunCall.exactDigest(mismatched) != RunCall.exactDigest(b))
        // Parts are length-prefixed: moving bytes from a part's headers into its content is another call.
        #expect(MultipartForm.canonicalDigest(ByteBuffer(string: "--b\r\nA: x\r\n\r\nyz\r\n--b--"), contentType: "multipart/form-data; boundary=b")
            != MultipartForm.canonicalDigest(ByteBuffer(string: "--b\r\nA: xy\r\n\r\nz\r\n--b--"), contentType: "multipart/form-data; boundary=b"))
    }

    @Test(arguments: [
        (#"{"a":1,"b":2}"#, #"{ "b": 2, "a": 1 }"#),
        (#"{"a":{"x":[1,2],"y":null}}"#, "{\n\t\"a\" : { \"y\":null , \"x\":[ 1 ,2 ] }\r\n}"),
        (#"{"a":"hi"}"#, #"{"\u0061":"\u0068i"}"#),
        (#"{"s":"é/"}"#, #"{"s":"\u00e9\/"}"#),
        (#"{"s":"😀"}"#, #"{"s":"\ud83d\ude00"}"#),
        (#"[true,false,null]"#, #"[ true , false , null ]"#),
        (#""x""#, #"  "x"  "#),
    ])
    func sameCallSpelledDifferently(_ l: String, _ r: String) {
        #expect(Self.print(l) == Self.print(r))
    }

    @Test(arguments: [
        (#"{"a":1}"#, #"{"a":2}"#),
        (#"{"a":"b","c":"d"}"#, #"{"a":"d","c":"b"}"#),  // values swapped between members
        (#"{"ab":"c"}"#, #"{"a":"bc"}"#),
        (#"[1,2]"#, #"[2,1]"#),
        (#"[[]]"#, #"[[],[]]"#),
        (#"[[1],2]"#, #"[1,[2]]"#),
        (#"{"a":[]}"#, #"{"a":{}}"#),
        (#"{"a":"1"}"#, #"{"a":1}"#),
        (#"{"a":null}"#, #"{}"#),
        (#"{"a":1,"a":1}"#, #"{"a":1}"#),
        (#"{"a":true}"#, #"{"a":false}"#),
        (#"1"#, #"1.0"#),  // numbers by their spelling (documented)
        (#"{"a":1} x"#, #"{"a":1} y"#),  // not JSON: by bytes
        (#"{"a":"\q"}"#, #"{"a":"\r"}"#),
    ])
    func differentCalls(_ l: String, _ r: String) {
        #expect(Self.print(l) != Self.print(r))
    }

    @Test func queryPairsInAnyOrderButNotSwappedValues() {
        #expect(Self.print(nil, query: "q=a&num=2") == Self.print(nil, query: "num=2&q=a"))
        #expect(Self.print(nil, query: "q=2&num=a") != Self.print(nil, query: "q=a&num=2"))
        #expect(Self.print(nil, query: "q=a") != Self.print(nil, query: "q=a&q=a"))
        #expect(Self.print(nil, query: "q=a", path: "/a") != Self.print(nil, query: "q=a", path: "/b"))
        #expect(Self.print(nil) == Self.print(""), "an empty body is no body")
    }

    /// A repeated name's values in another order are another call (an upstream reads the first or the
    /// last): for the loop breaker's fingerprint and for the idempotency ledger's digest alike.
    @Test func repeatedParametersKeepTheirOrder() {
        #expect(Self.print(nil, query: "q=a&q=b") != Self.print(nil, query: "q=b&q=a"))
        #expect(Self.print(nil, query: "q=a&n=1&q=b") == Self.print(nil, query: "n=1&q=a&q=b"))
        let digest = { (query: String) in RunCall.digest(Self.call(nil, query: query)) }
        #expect(digest("q=a&q=b") != digest("q=b&q=a"))
        #expect(digest("q=a&n=1&q=b") == digest("n=1&q=a&q=b"))
        #expect(digest("num=2&q=a") == digest("q=a&num=2"))
    }

    /// Pairs are counted by looking back in a short query and with a table in a long one: both read a
    /// repeated name's values in order and the pairs in any order, and a query grown past the cut by
    /// pairs that are all new is still told apart from its short self.
    @Test(arguments: [3, 16, 17, 40])
    func shortAndLongQueriesCountRepeatsAlike(_ n: Int) {
        let names = (0..<(n - 2)).map { "p\($0)=\($0)" }
        let forward = (names + ["q=a", "q=b"]).joined(separator: "&")
        let shuffled = (["q=a"] + names.reversed() + ["q=b"]).joined(separator: "&")
        let swapped = (names + ["q=b", "q=a"]).joined(separator: "&")
        #expect(Self.print(nil, query: forward) == Self.print(nil, query: shuffled))
        #expect(Self.print(nil, query: forward) != Self.print(nil, query: swapped))
        #expect(Self.print(nil, query: forward) != Self.print(nil, query: forward + "&x=1"))
    }

    /// The idempotency ledger's digest reads a JSON body's numbers as written: two side effects that
    /// differ only in a number a double cannot tell apart are two calls (one was taken for a duplicate
    /// of the other). Member order, white space and escapes still do not count, and for the plain
    /// numbers agents send the canonical text is what the ledger stored before (its digests stay valid).
    @Test func theLedgerDigestReadsNumbersAsWritten() {
        let digest = { (body: String) in RunCall.digest(Self.call(body)) }
        #expect(digest(#"{"amount":12345678901234567}"#) != digest(#"{"amount":12345678901234568}"#))
        #expect(digest(#"{"n":0.1}"#) != digest(#"{"n":0.10000000000000001}"#))
        #expect(digest(#"{"n":1e-400}"#) != digest(#"{"n":0}"#))
        #expect(digest(#"{"a":[1,{"x":"\u00e9"}],"b":2}"#) == digest(#" { "b" : 2 , "a" : [ 1 , { "x" : "é" } ] } "#))
        for text in [
            #"{"to":"a@example.com","n":3,"list":[1,-2,0.5,[],{}],"ok":true,"none":null,"s":"line\nnext \"q\" \\ \u0001"}"#,
            #"[{"b":1,"a":2},"x",12,-7,0.25]"#, #""just text""#, "42", "{}",
        ] {
            #expect(JSONValue.canonicalText(Array(text.utf8)) == JSONValue.parse(Array(text.utf8))?.serialized, "\(text)")
        }
        #expect(JSONValue.canonicalText(Array(#"{"a":1,"a":2}"#.utf8)) == nil, "a duplicate is no canonical JSON (the digest takes the bytes)")
        #expect(JSONValue.canonicalText(Array(#"{"a":1,}"#.utf8)) == nil)
    }

    /// Hostile bodies: no crash, and still a fingerprint (by bytes) that tells them apart.
    @Test func hostileBodies() {
        let deep = String(repeating: "[", count: 200_000)
        let deeper = String(repeating: "[", count: 200_001)
        #expect(Self.print(deep) != Self.print(deeper))
        let nested = String(repeating: "[", count: FingerprintJSON.maxDepth) + String(repeating: "]", count: FingerprintJSON.maxDepth)
        #expect(Self.print(nested) == Self.print(" " + nested))
        for bad in ["{", "[1,", #"{"a""#, #"{"a":}"#, #""\u12"#, "\"\u{1}\"", "nul", "tru", "{\"a\":1,}", "\"\\"] {
            #expect(Self.print(bad) != Self.print(bad + " "), "\(bad) is read as bytes")
        }
        let invalidUTF8 = RunCall.fingerprint(Self.call(bytes: ByteBuffer(bytes: [0x22, 0xff, 0xfe, 0x22])))
        #expect(invalidUTF8 != RunCall.fingerprint(Self.call(bytes: ByteBuffer(bytes: [0x22, 0xff, 0xfd, 0x22]))))
    }

    /// Random documents written in two spellings (member order, whitespace, escapes): one fingerprint;
    /// documents that differ in content: different fingerprints.
    @Test func randomDocumentsAgreeWithTheirContent() {
        var rng = SplitMix(seed: 0x5eed)
        var byContent: [CallFingerprint: String] = [:]
        for _ in 0..<3000 {
            let doc = Doc.random(&rng, depth: 0)
            let a = doc.write(&rng), b = doc.write(&rng)
            let fa = Self.print(a)
            #expect(fa == Self.print(b), "\(a) / \(b)")
            let content = doc.canonical
            if let seen = byContent[fa] { #expect(seen == content, "collision: \(seen) / \(content)") }
            byContent[fa] = content
        }
        #expect(byContent.count > 1000)
    }

    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
    }

    indirect enum Doc {
        case object([(String, Doc)])
        case array([Doc])
        case string(String)
        case number(String)
        case literal(String)

        static let alphabet: [Character] = ["a", "b", "é", "\"", "\\", "/", "\n", "😀", " "]

        static func random(_ rng: inout SplitMix, depth: Int) -> Doc {
            switch Int.random(in: depth > 3 ? 2...4 : 0...4, using: &rng) {
            case 0:
                var names = Set<String>()
                var members: [(String, Doc)] = []
                for _ in 0..<Int.random(in: 0...4, using: &rng) {
                    let name = randomString(&rng)
                    guard names.insert(name).inserted else { continue }
                    members.append((name, random(&rng, depth: depth + 1)))
                }
                return .object(members)
            case 1: return .array((0..<Int.random(in: 0...3, using: &rng)).map { _ in random(&rng, depth: depth + 1) })
            case 2: return .string(randomString(&rng))
            case 3: return .number(["0", "-1", "2.5", "1e3", "42"][Int.random(in: 0...4, using: &rng)])
            default: return .literal(["true", "false", "null"][Int.random(in: 0...2, using: &rng)])
            }
        }

        static func randomString(_ rng: inout SplitMix) -> String {
            String((0..<Int.random(in: 0...3, using: &rng)).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] })
        }

        /// The content: members sorted, strings with one escaping.
        var canonical: String {
            switch self {
            case .object(let m):
                return "{" + m.sorted { $0.0 < $1.0 }.map { Self.quote($0.0) + ":" + $0.1.canonical }.joined(separator: ",") + "}"
            case .array(let e): return "[" + e.map(\.canonical).joined(separator: ",") + "]"
            case .string(let s): return Self.quote(s)
            case .number(let n), .literal(let n): return n
            }
        }

        static func quote(_ s: String) -> String {
            let data = try! JSONSerialization.data(withJSONObject: [s], options: [.fragmentsAllowed])
            return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
        }

        /// One spelling: members shuffled, random whitespace, characters randomly escaped.
        func write(_ rng: inout SplitMix) -> String {
            let ws = [" ", "", "\n", "\t ", ""]
            func space() -> String { ws[Int.random(in: 0..<ws.count, using: &rng)] }
            switch self {
            case .object(let m):
                var parts: [String] = []
                for (name, value) in m.shuffled(using: &rng) {
                    parts.append(space() + Self.spell(name, &rng) + space() + ":" + value.write(&rng) + space())
                }
                return space() + "{" + parts.joined(separator: ",") + space() + "}" + space()
            case .array(let e):
                var parts: [String] = []
                for v in e { parts.append(v.write(&rng)) }
                return space() + "[" + parts.joined(separator: ",") + space() + "]" + space()
            case .string(let s): return space() + Self.spell(s, &rng) + space()
            case .number(let n), .literal(let n): return space() + n + space()
            }
        }

        static func spell(_ s: String, _ rng: inout SplitMix) -> String {
            var out = "\""
            for scalar in s.unicodeScalars {
                let escape = Bool.random(using: &rng)
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += escape ? "\\n" : "\\u000a"
                default:
                    if escape {
                        for unit in String(scalar).utf16 { out += String(format: "\\u%04x", unit) }
                    } else {
                        out.unicodeScalars.append(scalar)
                    }
                }
            }
            return out + "\""
        }
    }
}
