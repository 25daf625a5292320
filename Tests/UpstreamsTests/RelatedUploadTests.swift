import NIOCore
import NIOHTTP1
import Testing

@testable import Upstreams

/// Gmail multipart uploads (`uploadType=multipart`, `multipart/related`): the recipients the guards read
/// are the message Gmail sends, whichever line ends the client wrote, and a body two parsers could read
/// differently is refused.
@Suite("Gmail multipart uploads")
struct RelatedUploadTests {
    static let message = "To: a@example.com\r\nCc: b@partner.example\r\nSubject: re: q3\r\n\r\nsee attached\r\n"

    /// What google-api-python-client writes (Python's email generator: bare LF, MIME-Version on each part).
    static func pythonStyle(boundary: String = "===============0123456789==", metadata: String = #"{"threadId": "t1"}"#, message: String = message) -> String {
        "--\(boundary)\nContent-Type: application/json\nMIME-Version: 1.0\n\n\(metadata)\n--\(boundary)\nContent-Type: message/rfc822\nMIME-Version: 1.0\nContent-Transfer-Encoding: binary\n\n\(message)\n--\(boundary)--"
    }

    static func send(_ body: String, type: String = #"multipart/related; boundary="===============0123456789==""#) throws -> ToolCall {
        try GmailAdapter().interpret(ToolRequest(
            method: .POST, path: "/upload/gmail/v1/users/me/messages/send", query: QueryString(parsing: "uploadType=multipart"),
            headers: ["Content-Type": type], body: ByteBuffer(string: body)))
    }

    static func recipients(_ call: ToolCall) -> [String] {
        guard case .gmail(let p) = call.parameters else { return [] }
        return p.recipients
    }

    @Test func theMessageIsTheSecondPartWhateverTheLineEnds() throws {
        #expect(Self.recipients(try Self.send(Self.pythonStyle())) == ["a@example.com", "b@partner.example"])
        let crlf = Self.pythonStyle().replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\n", with: "\r\n") + "\r\n"
        #expect(Self.recipients(try Self.send(crlf)) == ["a@example.com", "b@partner.example"])
        #expect(try Self.send(Self.pythonStyle(), type: "Multipart/Related; boundary=\"===============0123456789==\"; type=\"application/json\"").action == "send")
    }

    @Test(arguments: [
        // Not two parts, or in the other order, or not the types they must be.
        "--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B--",
        "--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B\nContent-Type: application/json\n\n{}\n--B--",
        "--B\nContent-Type: application/json\n\n{}\n--B\nContent-Type: text/plain\n\nTo: a@example.com\n\nhi\n--B--",
        "--B\nContent-Type: application/json\n\n{}\n--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B\nContent-Type: message/rfc822\n\nTo: b@example.com\n\nhi\n--B--",
        // A second message in the metadata; metadata that is not an object; a transfer encoding that recodes.
        "--B\nContent-Type: application/json\n\n{\"raw\": \"VG86IGV2aWxAeC5leGFtcGxlCgpoaQ\"}\n--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B--",
        "--B\nContent-Type: application/json\n\n[1]\n--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B--",
        "--B\nContent-Type: application/json\n\n{}\n--B\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nVG86IGFAZXhhbXBsZS5jb20KCmhp\n--B--",
        // Two Content-Types, none, a header that is not one, no closing boundary, bytes after it, a preamble.
        "--B\nContent-Type: application/json\nContent-Type: message/rfc822\n\n{}\n--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B--",
        "--B\n\n{}\n--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B--",
        "--B\nContent-Type application/json\n\n{}\n--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B--",
        "--B\nContent-Type: application/json\n\n{}\n--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n",
        "--B\nContent-Type: application/json\n\n{}\n--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B--\nTo: evil@attacker.example",
        "preamble\n--B\nContent-Type: application/json\n\n{}\n--B\nContent-Type: message/rfc822\n\nTo: a@example.com\n\nhi\n--B--",
    ])
    func aBodyTwoParsersCouldReadDifferentlyIsRefused(_ body: String) {
        #expect(throws: ToolRequestError.self) { try Self.send(body, type: "multipart/related; boundary=B") }
    }

    @Test func anotherContentTypeOrABadBoundaryIsRefused() {
        #expect(throws: ToolRequestError.self) { try Self.send(Self.pythonStyle(), type: "multipart/form-data; boundary=\"===============0123456789==\"") }
        #expect(throws: ToolRequestError.self) { try Self.send(Self.pythonStyle(), type: "multipart/related") }
        #expect(throws: ToolRequestError.self) { try Self.send(Self.pythonStyle(), type: "multipart/related; boundary=a; boundary=b") }
    }

    @Test func theSameUploadUnderAnotherBoundaryDigestsAlike() {
        func digest(_ body: String, _ boundary: String) -> String? {
            RelatedUpload.canonicalDigest(ByteBuffer(string: body), contentType: "multipart/related; boundary=\"\(boundary)\"", media: "message/rfc822")
        }
        let a = digest(Self.pythonStyle(boundary: "===============1111==") , "===============1111==")
        let b = digest(Self.pythonStyle(boundary: "===============2222==", metadata: #"{ "threadId" : "t1" }"#), "===============2222==")
        #expect(a != nil && a == b)
        #expect(a != digest(Self.pythonStyle(boundary: "x", metadata: #"{"threadId": "t2"}"#), "x"))
        #expect(a != digest(Self.pythonStyle(boundary: "x", message: "To: c@example.com\r\n\r\nhi"), "x"))
        #expect(digest("not a body", "x") == nil)
    }
}
