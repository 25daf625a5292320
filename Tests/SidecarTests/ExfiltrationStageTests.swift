import Testing
import Upstreams

@testable import Sidecar

/// The exfiltration stage's view of a SerpAPI target: the `api_key` the adapter overwrites is left out
/// of the search, read from the parsed query the adapter reads — a target without it is searched as it
/// came, and must mean what the full parse-and-remove gives.
@Suite struct ExfiltrationStageTests {
    /// The full path: parse, remove, re-encode (what the stage did for every call).
    static func parsed(_ name: String, _ uri: String) -> String {
        guard let q = uri.firstIndex(of: "?") else { return uri }
        var query = QueryString(parsing: String(uri[uri.index(after: q)...]))
        query.removeAll(named: name)
        let rest = query.encoded
        return String(uri[..<q]) + (rest.isEmpty ? "" : "?" + rest)
    }

    @Test(arguments: [
        "/search?q=coffee&num=2",
        "/search?q=coffee&api_key=SECRET",
        "/search?api_key=SECRET&q=x",
        "/search?q=x&api%5Fkey=SECRET",
        "/search?q=x&%61pi_key=SECRET",
        "/search?q=x&api_key",
        "/search?q=api_keyring",
        "/search?q=x&my_api_key=1",
        "/search?q=x+y&API_KEY=1",
        "/search?q=aapi_key",
        "/search?",
        "/search",
        "/search?api_ke",
        "/search?q=é&api_key=1",
    ])
    func theShortcutRemovesWhatTheParseRemoves(_ uri: String) {
        let fast = Pipeline.target(uri, without: "api_key", query: Self.query(uri))
        let full = Self.parsed("api_key", uri)
        // Equal, or (nothing to remove) the target as it came, which the full path re-encodes to the same
        // parameters (only an empty query's `?` differs).
        let sameParameters = Self.query(fast) == Self.query(full)
        #expect(fast == full || (fast == uri && sameParameters), "\(fast) vs \(full)")
        #expect(!fast.contains("SECRET"))
    }

    static func query(_ uri: String) -> QueryString {
        guard let q = uri.firstIndex(of: "?") else { return QueryString(parsing: nil) }
        return QueryString(parsing: String(uri[uri.index(after: q)...]))
    }
}
