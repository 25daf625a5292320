import Testing
import Upstreams

@testable import Sidecar

/// Credentials from the environment as operators set them: pasted from files and Secrets with a trailing
/// newline (trimmed), or broken inside (start-up stops, naming the variable and never the value).
@Suite("Credentials from the environment")
struct EnvironmentCredentialTests {
    static func live() -> SidecarConfig {
        var c = SidecarConfig()
        for tool in Tool.allCases { c.tools[tool]?.mode = .live }
        return c
    }

    @Test(arguments: [
        ("sk-REAL-0123456789abcdef", "sk-REAL-0123456789abcdef"), ("sk-REAL-0123456789abcdef\n", "sk-REAL-0123456789abcdef"),
        ("  sk-REAL-0123456789abcdef\r\n", "sk-REAL-0123456789abcdef"), ("\t\n", nil), ("", nil),
    ] as [(String, String?)])
    func surroundingWhiteSpaceIsTrimmed(_ value: String, _ expected: String?) throws {
        let out = try SidecarApp.credentialsFromEnvironment(Self.live(), ["OPENAI_API_KEY": value])
        #expect(out[.openai]?.reveal() == expected)
    }

    @Test(arguments: ["sk-REAL-0123 456789", "sk-REAL-0123\n456789", "sk-REAL-\u{7F}x", "sk-REAL-é"])
    func aValueNoHeaderCanCarryStopsTheStartNamingTheVariable(_ value: String) {
        do {
            _ = try SidecarApp.credentialsFromEnvironment(Self.live(), ["OPENAI_API_KEY": value])
            Issue.record("accepted \(value.debugDescription)")
        } catch {
            #expect(error.description.hasPrefix("OPENAI_API_KEY: the openai credential"))
            #expect(!error.description.contains("sk-REAL"))
        }
    }
}
