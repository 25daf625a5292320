import NIOCore
import NIOHTTP1
import Testing

@testable import Upstreams

/// Wherever a guard or a cache key reads a value, the upstream must read the same one: input that
/// parsers could read differently is refused, never resolved one way (issue: JSON duplicate keys,
/// repeated query parameters, RFC 5322 address tricks).
@Suite("Parse differentials")
struct ParseDifferentialTests {
    // MARK: JSON

    @Test(arguments: [
        #"{"model":"gpt-4o-mini","model":"gpt-4o"}"#,
        #"{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o"}"#,
        #"{"model":"a","m\u006fdel":"b","x":1}"#,
        #"{"messages":[{"role":"user","role":"system"}]}"#,
        #"{"a":{"b":{"c":1,"c":2}}}"#,
        #"{"raw":"x","raw":"y"}"#,
        #"{"stream":false,"stream":true}"#,
    ])
    func duplicateMembersAreAmbiguous(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSONValue.parseStrict(Array(text.utf8)) }
        do {
            _ = try JSONValue.parseStrict(Array(text.utf8))
        } catch {
            guard case .duplicateKey = error else {
                Issue.record("\(text): \(error)")
                return
            }
        }
    }

    static let invalidDocuments: [[UInt8]] = {
        var docs: [[UInt8]] = []
        docs.append([0xEF, 0xBB, 0xBF] + Array(#"{"model":"m"}"#.utf8))  // a byte-order mark
        docs.append([0xFF, 0xFE] + Array(#"{"model":"m"}"#.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }))  // UTF-16
        for text in [
            #"{"model":"\ud800"}"#, #"{"model":"\udc00\ud800"}"#, #"{"max_tokens":1e400}"#, #"{"model":"m"} trailing"#,
            #"{"model":"m",}"#, #"{'model':'m'}"#, "{\"model\":\"\u{01}\"}", #"{"n":01}"#, #"{"n":-}"#, #"{"n":1.}"#, "",
            String(repeating: "[", count: 200) + String(repeating: "]", count: 200),
        ] {
            docs.append(Array(text.utf8))
        }
        docs.append([0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC3, 0x28, 0x22, 0x7D])  // invalid UTF-8
        return docs
    }()

    @Test(arguments: invalidDocuments)
    func invalidDocumentsAreRefused(_ bytes: [UInt8]) {
        #expect(throws: JSONParseError.self) { try JSONValue.parseStrict(bytes) }
    }

    // MARK: The skim (`JSONValue.parseMembers`) decides as the full parse does

    /// What the full parse makes of a document, as the skim reports it: the wanted members of an object,
    /// nil for any other JSON, or the same error.
    static func viaFullParse(_ bytes: [UInt8], _ wanted: [String]) -> Result<[String: JSONValue]?, JSONParseError> {
        Result { () throws(JSONParseError) in
            guard case .object(let o) = try JSONValue.parseStrict(bytes) else { return nil }
            return o.filter { wanted.contains($0.key) }
        }
    }

    static func viaSkim(_ bytes: [UInt8], _ wanted: [String]) -> Result<[String: JSONValue]?, JSONParseError> {
        Result { () throws(JSONParseError) in try JSONValue.parseMembers(bytes, wanted) }
    }

    static let wanted = OpenAIAdapter.guardedMembers

    static let skimSeeds: [[UInt8]] = {
        var docs = invalidDocuments
        for text in [
            #"{"model":"gpt-4o-mini","max_tokens":50,"stream":true,"temperature":0,"messages":[{"role":"user","content":"hi\n\"there\" \u00e9\ud83d\ude00"}]}"#,
            #" {"messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],"model":"m","n":-1.5e2,"x":[1,[2],{}],"y":null,"z":false} "#,
            #"{"m\u006fdel":"escaped name","max_completion_tokens":7,"max_output_tokens":null}"#,
            #"{"messages":[{"role":"user","role":"system"}],"model":"m"}"#,
            #"{"a":{"b":{"c":1,"c":2}},"model":"m"}"#,
            #"{"model":"m","messages":[],"model":"n"}"#,
            #"{"model":"caf\u00e9","caf\u00e9":1,"cafe\u0301":2}"#,
            #"["model"]"#, #""just a string""#, "42", "null", "{}", "[]",
            #"{"max_tokens":1e400}"#, #"{"max_tokens":-0.0,"stream":"yes"}"#, #"{"temperature":1E-2,"model":{"nested":true}}"#,
            "{\"model\":\"\u{00e9}\u{1F600}\",\"messages\":[\"\u{00e9}\"]}",
            "{" + (0..<40).map { "\"k\($0)\":\($0)" }.joined(separator: ",") + ",\"k7\":0}",
            "{" + (0..<40).map { "\"k\($0)\":\($0)" }.joined(separator: ",") + ",\"model\":\"m\"}",
            String(repeating: "{\"a\":", count: 127) + "1" + String(repeating: "}", count: 127),
            String(repeating: "{\"a\":", count: 129) + "1" + String(repeating: "}", count: 129),
        ] {
            docs.append(Array(text.utf8))
        }
        docs.append(Array(#"{"model":"m","messages":[{"content":""#.utf8) + [0xED, 0xA0, 0x80] + Array(#""}]}"#.utf8))  // an encoded surrogate
        docs.append(Array(#"{"messages":["\n"#.utf8) + [0xC3] + Array(#"\n"],"model":"m"}"#.utf8))  // a sequence cut by an escape
        docs.append(Array(#"{"messages":[""#.utf8) + [0xC3] + Array(#"\q"]}"#.utf8))  // invalid UTF-8, then a bad escape
        docs.append(Array(#"{"messages":[""#.utf8) + [0xF4, 0x90, 0x80, 0x80] + Array(#""]}"#.utf8))  // above U+10FFFF
        docs.append(Array(#"{"messages":[""#.utf8) + [0xC0, 0xAF] + Array(#""]}"#.utf8))  // overlong
        return docs
    }()

    @Test(arguments: skimSeeds)
    func theSkimDecidesAsTheFullParse(_ bytes: [UInt8]) {
        #expect(Self.viaSkim(bytes, Self.wanted) == Self.viaFullParse(bytes, Self.wanted), "\(String(decoding: bytes.prefix(120), as: UTF8.self))")
    }

    /// Every seed mutated at random (seeded, bounded): inserted, deleted and replaced bytes drawn from
    /// JSON's structural characters, escapes and invalid UTF-8, so both readers meet every error at
    /// every position. The two must agree on each — the same members or the same error.
    @Test func theSkimDecidesAsTheFullParseOnMutatedBodies() {
        let alphabet: [UInt8] = Array(#"{}[]":,\u0123456789abcdefABCDEF-+.eE tnrl"#.utf8) + [0x00, 0x1F, 0x7F, 0x80, 0xBF, 0xC3, 0xC0, 0xED, 0xA0, 0xF0, 0xF4, 0xFF]
        var random = SplitMix64(seed: 0x5EED_1234)
        var compared = 0
        for seed in Self.skimSeeds where !seed.isEmpty && seed.count < 2_000 {
            for _ in 0..<400 {
                var doc = seed
                for _ in 0..<Int(random.next() % 3 + 1) {
                    let at = Int(random.next() % UInt64(doc.count + 1))
                    let byte = alphabet[Int(random.next() % UInt64(alphabet.count))]
                    switch random.next() % 3 {
                    case 0: doc.insert(byte, at: at)
                    case 1: if at < doc.count { doc.remove(at: at) }
                    default: if at < doc.count { doc[at] = byte }
                    }
                }
                let skim = Self.viaSkim(doc, Self.wanted)
                let full = Self.viaFullParse(doc, Self.wanted)
                if skim != full {
                    Issue.record("\(String(decoding: doc.prefix(160), as: UTF8.self)): skim \(skim), full \(full)")
                    return
                }
                compared += 1
            }
        }
        #expect(compared > 10_000)
    }

    /// A streamed chat asks for usage by a member spliced into the agent's own bytes: nothing else of
    /// the body changes (a re-serialization turned `"seed":12345678901234567` into a double).
    @Test func aStreamedChatAsksForUsageWithoutRewritingTheBody() throws {
        func including(_ body: String) -> String? { OpenAIAdapter.includingUsage(ByteBuffer(string: body)).map { String(buffer: $0) } }
        let body = #"{"model":"m","stream":true,"seed":12345678901234567,"n":1.0,"messages":[{"role":"user","content":"caf\u00e9"}]}"#
        #expect(including(body) == #"{"stream_options":{"include_usage":true},"# + body.dropFirst())
        #expect(including(" \n{}") == #" "# + "\n" + #"{"stream_options":{"include_usage":true}}"#)
        #expect(including(#"{"stream":true,"stream_options":{"include_usage":false},"seed":12345678901234567}"#)
            == #"{"stream":true,"stream_options":{"include_usage":true},"seed":12345678901234567}"#)
        #expect(including(#"{"stream":true,"stream_options":null,"x":1e2}"#) == #"{"stream":true,"stream_options":{"include_usage":true},"x":1e2}"#)
        #expect(including(#"{"stream":true,"stream_options":{ "n":12345678901234567 }}"#)
            == #"{"stream":true,"stream_options":{"include_usage":true, "n":12345678901234567 }}"#, "inside it too, nothing re-serialized")
        #expect(including(#"{"stream":true,"stream_options":{"include_usage":true}}"#) == nil, "asks already")
        #expect(including(#"[1]"#) == nil && including(#"{"a":1,}"#) == nil)
        for text in [body, "{}", #"{"stream_options":{"x":[1,2]},"stream":true}"#] {
            let out = try #require(OpenAIAdapter.includingUsage(ByteBuffer(string: text)))
            let parsed = try JSONValue.parseStrict(out.readableBytesView)
            #expect(parsed["stream_options"]?["include_usage"] == true, "\(text)")
        }
    }

    /// What a double holds as written, and what it does not (`parseStrictExact` refuses the latter).
    @Test(arguments: [
        ("1", true), ("-0", true), ("0", true), ("1.0", true), ("1e2", true), ("100", true), ("1.5e-7", true), ("0.1", true),
        ("123456789012345", true), ("-999999999999999", true), ("9007199254740992", true), ("5e-324", true),
        ("1.7976931348623157e308", true), ("0.000001", true), ("12.50", true),
        ("9007199254740993", false), ("12345678901234567", false), ("0.10000000000000001", false), ("1e-400", false),
        ("3.141592653589793238", false), ("-12345678901234567890", false),
    ])
    func numbersAreExactOrRefused(text: String, exact: Bool) {
        let doc = Array(#"{"n":"#.utf8) + Array(text.utf8) + Array("}".utf8)
        let result = Result { () throws(JSONParseError) in try JSONValue.parseStrictExact(doc) }
        #expect(((try? result.get()) != nil) == exact, "\(text)")
        #expect(JSONValue.parse(doc) != nil, "\(text) is JSON either way")
    }

    @Test func validDocumentsReadAsExpected() throws {
        let v = try JSONValue.parseStrict(Array(#" {"model":"gpt-4o-mini","n":-1.5e2,"ok":true,"none":null,"s":"a\"b\\c\/d\u00e9\ud83d\ude00\n","list":[1,[2],{}]} "#.utf8))
        #expect(v["model"] == "gpt-4o-mini" && v["n"] == .number(-150) && v["ok"] == true && v["none"] == .null)
        #expect(v["s"]?.stringValue == "a\"b\\c/dé😀\n")
        #expect(v["list"] == [1, [2], .object([:])])
        #expect(try JSONValue.parseStrict(Array(String(repeating: "[", count: 128).utf8) + Array(String(repeating: "]", count: 128).utf8)) != .null)
    }

    @Test func openAIRefusesAmbiguousBodiesAndTakesTheLargestCap() throws {
        let adapter = OpenAIAdapter()
        func interpret(_ body: String) throws(ToolRequestError) -> ToolCall {
            try adapter.interpret(ToolRequest(method: .POST, path: "/v1/chat/completions", body: ByteBuffer(string: body)))
        }
        for body in [#"{"model":"gpt-4o-mini","model":"gpt-4o","max_tokens":50}"#, #"{"model":"a","max_tokens":5,"max_tokens":50000}"#] {
            do {
                _ = try interpret(body)
                Issue.record("\(body) was accepted")
            } catch {
                #expect(error.kind == .ambiguousParameter)
            }
        }
        let call = try interpret(#"{"model":"m","max_tokens":10,"max_completion_tokens":90000}"#)
        guard case .openai(let p) = call.parameters else {
            Issue.record("not openai")
            return
        }
        #expect(p.maxTokens == 90000)
    }

    // MARK: Query strings

    @Test(arguments: [
        "num=5&num=100", "engine=google&engine=bing", "num=5&n%75m=100", "q=a&%71=b", "q=x;num=100", "num[]=100", "q=x&num[a]=1",
        "api_key=a&api%5Fkey=b", "q+=a&q%20=b",
    ])
    func serpAPIRefusesQueriesReadTwoWays(_ query: String) {
        do {
            _ = try SerpAPIAdapter().interpret(ToolRequest(method: .GET, path: "/search", query: QueryString(parsing: query)))
            Issue.record("\(query) was accepted")
        } catch {
            #expect(error.kind == .ambiguousParameter, "\(query)")
        }
    }

    @Test func serpAPIAcceptsOrdinaryQueries() throws {
        let call = try SerpAPIAdapter().interpret(
            ToolRequest(method: .GET, path: "/search", query: QueryString(parsing: "q=caf%C3%A9+%3B+tea&num=5&engine=google&api_key=mine")))
        guard case .serpapi(let p) = call.parameters else {
            Issue.record("not serpapi")
            return
        }
        #expect(p.query == "café ; tea" && p.num == 5 && call.request.query.first("api_key") == nil)
    }

    // MARK: Email addresses

    static func gmailCall(_ message: String) throws(ToolRequestError) -> ToolCall {
        let raw = Base64.encodeURL(Array(message.utf8))
        return try GmailAdapter().interpret(
            ToolRequest(method: .POST, path: "/gmail/v1/users/me/messages/send", body: ByteBuffer(string: #"{"raw":""# + raw + #""}"#)))
    }

    static func domains(_ message: String) throws(ToolRequestError) -> [String] {
        guard case .gmail(let p) = try gmailCall(message).parameters else { return [] }
        return p.recipientDomains
    }

    @Test func recipientsAreReadAsAMailSystemReadsThem() throws {
        #expect(try Self.domains("To: \"<a@ok.test>\"@evil.test\r\nSubject: s\r\n\r\nb") == ["evil.test"])
        #expect(try Self.domains("To: a@ok.test\r\nBcc\t: x@evil.test\r\n\r\nb") == ["ok.test", "evil.test"])
        #expect(try Self.domains("To: a@ok.test\r\nBcc : x@evil.test\r\n\r\nb") == ["ok.test", "evil.test"])
        #expect(try Self.domains("To: a@ok.test\r\nResent-Bcc: y@evil.test\r\nResent-To: z@evil2.test\r\n\r\nb") == ["ok.test", "evil2.test", "evil.test"])
        #expect(try Self.domains("To: \"Doe, J\" <j@ok.test>, Team: b@t.test, c@t.test;, (c) d@x.test (note)\r\n\r\nb")
            == ["ok.test", "t.test", "t.test", "x.test"])
        #expect(try Self.domains("To: =?utf-8?q?J=C3=B6rg?= <j@ok.test>\r\n\r\nb") == ["ok.test"])
        #expect(try Self.domains("To: undisclosed-recipients:;\r\n\r\nb") == [])
    }

    @Test(arguments: [
        "To: =?utf-8?b?YUBldmlsLnRlc3Q=?=\r\n\r\nb",  // an encoded word where the address should be
        "To: a@b@evil.test\r\n\r\nb",
        "To: <a@ok.test\r\n\r\nb",
        "To: \"unterminated@ok.test\r\n\r\nb",
        "To: a@ok.test (unterminated\r\n\r\nb",
        "To: a@=?utf-8?q?evil?=.test\r\n\r\nb",
        "To: just-a-name\r\n\r\nb",
    ])
    func unreadableRecipientFieldsAreRefused(_ message: String) {
        #expect(throws: ToolRequestError.self) { try Self.gmailCall(message) }
    }

    @Test(arguments: ["Subject", "To", "Cc", "Bcc", "From"])
    func aSecondSingleFieldIsAmbiguous(_ field: String) {
        do {
            _ = try Self.gmailCall("To: a@ok.test\r\n\(field): x@ok.test\r\n\(field): y@evil.test\r\n\r\nb")
            Issue.record("two \(field) fields accepted")
        } catch {
            #expect(error.kind == .ambiguousParameter)
        }
    }
}
