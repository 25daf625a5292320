import Testing

@testable import Policy

@Suite("Document reader")
struct DocumentReaderTests {
    let doc = DocumentNode.mapping([
        .init(key: "tools", value: .mapping([
            .init(key: "openai", value: .mapping([
                .init(key: "timeout", value: .scalar("soon", quoted: false)),
                .init(key: "hosts", value: .sequence([.scalar("a", quoted: false), .mapping([])])),
                .init(key: "port", value: .scalar("80", quoted: true)),
            ]))
        ]))
    ])

    @Test func errorsNameTheFieldPath() {
        let r = DocumentReader(doc)
        #expect(throws: DocumentError(path: "tools.openai.timeout", message: "expected a duration like 30s, 250ms or 5m, got 'soon'")) {
            try r["tools"]["openai"]["timeout"].duration()
        }
        #expect(throws: DocumentError(path: "tools.openai.hosts[1]", message: "expected a string")) {
            try r["tools"]["openai"]["hosts"].strings()
        }
        #expect(throws: DocumentError(path: "tools.openai.port", message: "expected an integer, got '80'")) {
            try r["tools"]["openai"]["port"].int()
        }
        #expect(throws: DocumentError.self) { try r["tools"]["openai"].checkKeys(["timeout"]) }
    }

    @Test(arguments: [
        ("250ms", Duration.milliseconds(250)), ("30s", .seconds(30)), ("5m", .seconds(300)), ("2h", .seconds(7200)),
        ("1d", .seconds(86400)), ("1.5s", .milliseconds(1500)), ("10", .seconds(10)),
    ])
    func parsesDurations(_ text: String, _ expected: Duration) {
        #expect(DocumentReader.parseDuration(text) == expected)
    }

    /// Agents reach this parser (X-Request-Timeout): nothing they send may trap it — not infinity, NaN or a
    /// count of days whose milliseconds overflow Int64.
    @Test(arguments: ["", "abc", "-1s", "5x", "ms", "inf", "NaN", "nan", "-inf", "1e309", "1e308s", "999999999999d",
                      "9223372036854775807ms", "1e9", "+inf", "infinity"])
    func rejectsDurations(_ text: String) {
        #expect(DocumentReader.parseDuration(text) == nil)
    }
}
