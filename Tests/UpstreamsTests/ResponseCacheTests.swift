import NIOCore
import NIOHTTP1
import Synchronization
import Testing

@testable import Upstreams

@Suite("Response cache: LRU by bytes, expiry, single flight, freshness")
struct ResponseCacheTests {
    static func entry(_ body: String, at t: Int64 = 0, ttl: Int64 = 1000, stale: Int64 = 1000) -> CachedResponse {
        CachedResponse(status: .ok, headers: ["Content-Type": "text/plain"], body: ByteBuffer(string: body), storedAt: t, expiresAt: t + ttl, staleUntil: t + ttl + stale)
    }

    static func store(_ c: ResponseCache, _ key: String, _ e: CachedResponse) {
        #expect(c.beginFetch(key))
        c.endFetch(key, storing: e)
    }

    @Test func freshThenStaleThenGone() {
        let c = ResponseCache(maxBytes: 10_000, maxEntryBytes: 1000)
        Self.store(c, "k", Self.entry("v", at: 0, ttl: 1000, stale: 500))
        guard case .fresh = c.lookup("k", now: 999) else { Issue.record("fresh before expiry"); return }
        guard case .stale = c.lookup("k", now: 1000) else { Issue.record("stale after expiry"); return }
        guard case .stale = c.lookup("k", now: 1499) else { Issue.record("stale inside the window"); return }
        guard case .miss = c.lookup("k", now: 1500) else { Issue.record("gone after the stale window"); return }
        #expect(c.count == 0 && c.totalBytes == 0)
    }

    @Test func evictsTheLeastRecentlyUsedToStayUnderTheByteBound() {
        let one = Self.entry(String(repeating: "x", count: 100)).bytes
        let c = ResponseCache(maxBytes: one * 3, maxEntryBytes: one)
        for k in ["a", "b", "c"] { Self.store(c, k, Self.entry(String(repeating: "x", count: 100))) }
        _ = c.lookup("a", now: 0)  // a is now more recent than b
        Self.store(c, "d", Self.entry(String(repeating: "x", count: 100)))
        #expect(c.count == 3)
        #expect(c.totalBytes <= one * 3)
        guard case .miss = c.lookup("b", now: 0) else { Issue.record("b was least recently used"); return }
        for k in ["a", "c", "d"] {
            guard case .fresh = c.lookup(k, now: 0) else { Issue.record("\(k) must survive"); return }
        }
    }

    @Test func entriesOverTheEntryLimitAreNotStored() {
        let c = ResponseCache(maxBytes: 100_000, maxEntryBytes: 200)
        Self.store(c, "big", Self.entry(String(repeating: "x", count: 500)))
        guard case .miss = c.lookup("big", now: 0) else { Issue.record("too big to cache"); return }
        #expect(c.totalBytes == 0)
    }

    @Test func replacingAnEntryKeepsTheByteCountExact() {
        let c = ResponseCache(maxBytes: 100_000, maxEntryBytes: 10_000)
        Self.store(c, "k", Self.entry(String(repeating: "x", count: 100)))
        Self.store(c, "k", Self.entry(String(repeating: "x", count: 300)))
        #expect(c.totalBytes == Self.entry(String(repeating: "x", count: 300)).bytes)
    }

    @Test func concurrentMissesShareOneFetch() async {
        let c = ResponseCache(maxBytes: 100_000, maxEntryBytes: 10_000)
        final class Counter: Sendable { let n = Mutex(0) }
        let fetches = Counter()
        let results = await withTaskGroup(of: String?.self) { group in
            for _ in 0..<20 {
                group.addTask {
                    if c.beginFetch("q") {
                        fetches.n.withLock { $0 += 1 }
                        // Ends the flight once the 19 others joined it (a fixed sleep was a guess that a
                        // loaded machine could lose: a caller arriving after the end would lead a second
                        // fetch, as there is no cache lookup in this test).
                        for _ in 0..<1000 where c.waiterCount(for: "q") < 19 { try? await Task.sleep(for: .milliseconds(5)) }
                        c.endFetch("q", storing: Self.entry("answer"))
                        return "answer"
                    }
                    return await c.wait(for: "q").map { String(buffer: $0.body) }
                }
            }
            var out: [String?] = []
            for await r in group { out.append(r) }
            return out
        }
        #expect(fetches.n.withLock { $0 } == 1)
        #expect(results.count == 20 && results.allSatisfy { $0 == "answer" })
    }

    @Test func waitersOfAnUncacheableAnswerFetchThemselves() async {
        let c = ResponseCache(maxBytes: 100_000, maxEntryBytes: 10_000)
        #expect(c.beginFetch("q"))
        async let waiter = c.wait(for: "q")
        try? await Task.sleep(for: .milliseconds(20))
        c.endFetch("q", storing: nil)
        #expect(await waiter == nil)
        #expect(c.beginFetch("q"))  // the flight is over: the next caller leads
        c.endFetch("q", storing: nil)
        #expect(await c.wait(for: "q") == nil)  // nothing in flight: returns at once
    }

    @Test func serpAPIKeysAreTheForwardedQueryWithoutTheAgentsKey() throws {
        let adapter = SerpAPIAdapter()
        func key(_ q: String) throws -> String {
            ResponseCache.serpAPIKey(try adapter.interpret(ToolRequest(method: .GET, path: "/search", query: QueryString(parsing: q))))
        }
        let a = try key("q=coffee&engine=google&num=10&api_key=AGENT-KEY")
        #expect(a == (try key("q=coffee&engine=google&num=10")))
        #expect(a == (try key("q=coffee&api_key=OTHER&engine=google&num=10")))
        // Exactly the bytes forwarded, order kept: another order is another upstream request.
        #expect(a != (try key("engine=google&num=10&q=coffee")))
        #expect(a != (try key("q=tea&engine=google&num=10")))
        #expect(a != (try key("q=coffee&engine=bing&num=10")))
        #expect(!a.contains("coffee") && !a.contains("AGENT") && a.count == 64)
        // What the upstream could read as other parameters never gets a key at all: it is refused.
        for ambiguous in ["q=cats&q=dogs", "num=5&n%75m=100", "q=x;num=100", "num[]=100", "api_key=a&api%5Fkey=b"] {
            do {
                _ = try key(ambiguous)
                Issue.record("\(ambiguous) was accepted")
            } catch let e as ToolRequestError {
                #expect(e.kind == .ambiguousParameter, "\(ambiguous)")
            } catch {
                Issue.record("\(error)")
            }
        }
    }

    @Test(arguments: [
        ([("Cache-Control", "max-age=60")], 60_000 as Int64?),
        ([("Cache-Control", "public, max-age=600")], 300_000),
        ([("Cache-Control", "max-age=60, s-maxage=30")], 60_000),
        ([("Cache-Control", "s-maxage=30, max-age=60")], 30_000),
        ([("Cache-Control", "no-store, max-age=60")], nil),
        ([("Cache-Control", "private, max-age=60")], nil),
        ([("Cache-Control", "no-cache")], nil),
        ([("Cache-Control", "max-age=0")], nil),
        ([("Cache-Control", "max-age=abc")], nil),
        ([("Cache-Control", "max-age=60"), ("Set-Cookie", "s=1")], nil),
        ([("Cache-Control", "max-age=60"), ("Vary", "*")], nil),
        ([("Expires", "Thu, 01 Jan 1970 00:01:40 GMT")], 40_000),
        ([("Expires", "Thu, 01 Jan 1970 00:00:30 GMT")], nil),
        ([("Expires", "not a date")], nil),
        // An upstream (any web page http_fetch reads) once crashed the sidecar with these: overflow in ms.
        ([("Cache-Control", "max-age=9223372036854775807")], 300_000),
        ([("Cache-Control", "max-age=9223372036854775")], 300_000),
        ([("Expires", "Thu, 01 Jan 999999999999999 00:01:40 GMT")], nil),
        ([("Expires", "Thu, 01 Jan 1970 99999999999999:00:00 GMT")], nil),
        ([] as [(String, String)], nil),
    ] as [([(String, String)], Int64?)])
    func httpFreshness(_ headers: [(String, String)], _ expected: Int64?) {
        // now = 60 s after the epoch; cap 300 s.
        #expect(ResponseCache.freshness(HTTPHeaders(headers), now: 60_000, cap: 300_000) == expected)
    }

    @Test func httpDates() {
        #expect(HTTPDate.parse("Sun, 06 Nov 1994 08:49:37 GMT") == 784_111_777)
        #expect(HTTPDate.parse("Thu, 29 Feb 2024 12:00:00 GMT") == 1_709_208_000)
        #expect(HTTPDate.parse("Sunday, 06-Nov-94 08:49:37 GMT") == nil)
        for hostile in ["Thu, 01 Jan 9223372036854775807 00:00:00 GMT", "Thu, 99999999999 Jan 1970 00:00:00 GMT",
                        "Thu, 01 Jan 1970 00:00:9223372036854775807 GMT", "Thu, 01 Jan 1970 24:00:00 GMT", "Thu, 01 Jan -5 00:00:00 GMT"] {
            #expect(HTTPDate.parse(hostile) == nil, "\(hostile)")
        }
    }
}
