import NIOCore
import NIOHTTP1
import Testing

@testable import Upstreams

/// The strict `multipart/form-data` reader behind OpenAI uploads: SDK-shaped bodies are read, and every
/// body two parsers could split differently is refused — so a `model` guard reads what OpenAI reads.
@Suite struct MultipartFormTests {
    static let b = "----boundary7MA4YWxk"

    /// A body as httpx writes it: each part `--b CRLF headers CRLF CRLF content CRLF`, then `--b--CRLF`.
    static func body(_ parts: [String], close: String = "--\(b)--\r\n") -> [UInt8] {
        Array((parts.map { "--\(b)\r\n\($0)\r\n" }.joined() + close).utf8)
    }

    static func field(_ name: String, _ value: String) -> String { "Content-Disposition: form-data; name=\"\(name)\"\r\n\r\n\(value)" }
    static let file = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--not-the-boundary\r\n"

    @Test func anSDKShapedBodyIsRead() throws {
        let form = try MultipartForm.parse(
            Self.body([Self.file, Self.field("model", "whisper-1"), Self.field("language", "en"), Self.field("stream", "true")]), boundary: Self.b,
            names: ["model", "stream"])
        #expect(form.fields == ["model": "whisper-1", "stream": "true"])
        #expect(form.files == 1 && form.textBytes == "whisper-1".utf8.count + 2 + 4)
        // An empty value, a value holding CRLFs and dashes, no trailing CRLF after the close.
        let odd = try MultipartForm.parse(
            Self.body([Self.field("prompt", "a\r\n--b\r\n"), Self.field("model", "")], close: "--\(Self.b)--"), boundary: Self.b, names: ["model", "prompt"])
        #expect(odd.fields == ["model": "", "prompt": "a\r\n--b\r\n"])
    }

    @Test(arguments: [
        ("multipart/form-data; boundary=abc", "abc"),
        ("Multipart/Form-Data;boundary=\"a b'c\"", "a b'c"),
        ("multipart/form-data; boundary=\"a:b/c=d?\"", "a:b/c=d?"),
        ("multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW", "----WebKitFormBoundary7MA4YWxkTrZu0gW"),
        ("multipart/form-data; charset=utf-8; boundary=x", "x"),
    ])
    func boundaries(type: String, boundary: String) throws {
        #expect(try MultipartForm.boundary(ofContentType: type) == boundary)
    }

    @Test func otherTypesAndBadBoundaries() {
        #expect((try? MultipartForm.boundary(ofContentType: "application/json")) == .some(nil))
        for bad in [
            "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=" + String(repeating: "a", count: 71), "multipart/form-data; boundary=a\"b",
            "multipart/form-data; boundary=\"abc", "multipart/form-data; boundary=\"a\\\"b\"", "multipart/form-data; boundary=a<b",
            "multipart/form-data; boundary=a b", "multipart/form-data; boundary=a:b", "multipart/form-data; boundary=a/b=",
        ] {
            #expect(throws: MultipartForm.Failure.self, "\(bad)") { try MultipartForm.boundary(ofContentType: bad) }
        }
    }

    /// Each is refused: one reader could take `model` from it where another takes something else.
    @Test(arguments: [
        ("preamble", Array("hello\r\n".utf8) + body([field("model", "m")])),
        ("no close", Array("--\(b)\r\n\(field("model", "m"))\r\n".utf8)),
        ("bytes after close", body([field("model", "m")], close: "--\(b)--\r\nmore")),
        ("transport padding", Array("--\(b) \r\n\(field("model", "m"))\r\n--\(b)--\r\n".utf8)),
        ("model twice", body([field("model", "a"), field("model", "b")])),
        ("model as a file", body(["Content-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\ngpt-4o"])),
        ("rfc 2231 name", body(["Content-Disposition: form-data; name*=UTF-8''model\r\n\r\nm"])),
        ("backslash in name", body(["Content-Disposition: form-data; name=\"mo\\del\"\r\n\r\nm"])),
        ("name twice", body(["Content-Disposition: form-data; name=\"x\"; name=\"model\"\r\n\r\nm"])),
        ("transfer encoding", body(["Content-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: base64\r\n\r\nbQ=="])),
        ("two dispositions", body(["Content-Disposition: form-data; name=\"x\"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm"])),
        ("no disposition", body(["Content-Type: text/plain\r\n\r\nm"])),
        ("not form-data", body(["Content-Disposition: attachment; name=\"model\"\r\n\r\nm"])),
        ("no name", body(["Content-Disposition: form-data\r\n\r\nm"])),
        ("header without colon", body(["Content-Disposition: form-data; name=\"model\"\r\nbroken\r\n\r\nm"])),
        ("bare LF in a header", body(["Content-Disposition: form-data; name=\"model\"\nX: y\r\n\r\nm"])),
        ("folded header", body(["Content-Disposition: form-data;\r\n name=\"model\"\r\n\r\nm"])),
        ("no headers", body(["\r\nm"])),
        ("headers run into the boundary", Array("--\(b)\r\nContent-Disposition: form-data; name=\"model\"\r\n--\(b)--\r\n\r\n".utf8)),
        ("model not UTF-8", Array("--\(b)\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n".utf8) + [0xFF, 0xFE] + Array("\r\n--\(b)--\r\n".utf8)),
        ("unquoted odd value", body(["Content-Disposition: form-data; name=mo\"del\r\n\r\nm"])),
    ] as [(String, [UInt8])])
    func ambiguousBodiesAreRefused(name: String, body: [UInt8]) {
        #expect(throws: MultipartForm.Failure.self, "\(name)") { try MultipartForm.parse(body, boundary: Self.b, names: ["model"]) }
    }

    @Test func partsAreBounded() throws {
        let parts = (0..<MultipartForm.maxParts).map { Self.field("f\($0)", "") }
        #expect(try MultipartForm.parse(Self.body(parts), boundary: Self.b, names: []).textBytes == 0)
        #expect(throws: MultipartForm.Failure("more than 1000 parts")) {
            try MultipartForm.parse(Self.body(parts + [Self.field("one", "more")]), boundary: Self.b, names: [])
        }
    }

    @Test func aDuplicateIsAmbiguousNotMalformed() {
        do {
            _ = try MultipartForm.parse(Self.body([Self.field("model", "a"), Self.field("model", "b")]), boundary: Self.b, names: ["model"])
            Issue.record("accepted")
        } catch {
            #expect(error.duplicate)
        }
        // A field the policy does not read may repeat (an SDK's `image[]`, `timestamp_granularities[]`).
        #expect((try? MultipartForm.parse(Self.body([Self.field("image[]", "a"), Self.field("image[]", "b")]), boundary: Self.b, names: ["model"])) != nil)
    }

    /// Through the adapter: the upload actions read `model` and `stream` from the form; another content
    /// type is 415; a duplicate is ambiguous; no token cap; the input estimated from the text fields only.
    @Test func openAIUploadsAreInterpreted() throws {
        let adapter = OpenAIAdapter()
        func upload(_ path: String, _ parts: [String], type: String = "multipart/form-data; boundary=\(Self.b)") -> ToolRequest {
            ToolRequest(method: .POST, path: path, headers: ["Content-Type": type], body: ByteBuffer(bytes: Self.body(parts)))
        }
        let call = try adapter.interpret(upload("/v1/audio/transcriptions", [Self.file, Self.field("model", "gpt-4o-transcribe"), Self.field("stream", "true")]))
        guard case .openai(let p) = call.parameters else { Issue.record("wrong parameters"); return }
        #expect(call.action == "transcriptions" && p.model == "gpt-4o-transcribe" && p.stream && p.maxTokens == 0 && p.estimatedInputTokens == 5)
        #expect(try adapter.interpret(upload("/v1/audio/translations", [Self.file, Self.field("model", "whisper-1")])).action == "translations")
        #expect(try adapter.interpret(upload("/images/edits", [Self.file, Self.field("prompt", "x")])).action == "image_edits")
        #expect(try adapter.interpret(upload("/v1/images/variations", [Self.file])).action == "image_variations")
        #expect(throws: ToolRequestError.unsupportedMediaType("send multipart/form-data (a file upload)")) {
            try adapter.interpret(upload("/v1/audio/transcriptions", [], type: "application/json"))
        }
        #expect(throws: ToolRequestError.ambiguousParameter("model is given more than once")) {
            try adapter.interpret(upload("/v1/audio/transcriptions", [Self.field("model", "a"), Self.field("model", "b")]))
        }
        #expect(throws: ToolRequestError.invalidParameter("stream must be true or false")) {
            try adapter.interpret(upload("/v1/audio/transcriptions", [Self.field("stream", "yes")]))
        }
        #expect(throws: ToolRequestError.self) { try adapter.compatRequest(action: "transcriptions", params: ["model": "whisper-1"]) }
        // The mock answers as OpenAI does: JSON by default, plain text on request, a stream of events.
        let json = adapter.mockResponse(for: try adapter.interpret(upload("/v1/audio/transcriptions", [Self.file, Self.field("model", "whisper-1")])))
        #expect(json.status == .ok && JSONValue.parse(json.body.bufferedBytes!.readableBytesView)?["text"]?.stringValue?.hasPrefix("Mock transcription") == true)
        let text = adapter.mockResponse(
            for: try adapter.interpret(upload("/v1/audio/transcriptions", [Self.file, Self.field("model", "whisper-1"), Self.field("response_format", "srt")])))
        #expect(text.headers.first(name: "content-type")?.hasPrefix("text/plain") == true)
        let stream = adapter.mockResponse(
            for: try adapter.interpret(upload("/v1/audio/transcriptions", [Self.file, Self.field("model", "gpt-4o-transcribe"), Self.field("stream", "true")])))
        #expect(HeaderRules.isEventStream(stream.headers))
        let edit = adapter.mockResponse(for: try adapter.interpret(upload("/v1/images/edits", [Self.file, Self.field("prompt", "x"), Self.field("n", "2")])))
        #expect(JSONValue.parse(edit.body.bufferedBytes!.readableBytesView)?["data"]?.arrayValue?.count == 2)
        #expect(adapter.mockResponse(for: try adapter.interpret(upload("/v1/audio/transcriptions", [Self.field("model", "whisper-1")]))).status == .badRequest)
    }
}
