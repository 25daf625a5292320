import Crypto
import NIOCore
import NIOHTTP1
import Synchronization

/// A stored upstream answer.
public struct CachedResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: ByteBuffer
    /// Unix ms.
    public var storedAt: Int64
    public var expiresAt: Int64
    /// Until when it may still be served stale (breaker open or upstream failing).
    public var staleUntil: Int64

    public init(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer, storedAt: Int64, expiresAt: Int64, staleUntil: Int64) {
        self.status = status
        self.headers = headers
        self.body = body
        self.storedAt = storedAt
        self.expiresAt = expiresAt
        self.staleUntil = staleUntil
    }

    public var bytes: Int { body.readableBytes + headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count } + 64 }
}

/// A byte-bounded LRU of upstream answers with per-entry expiry and single-flight: concurrent misses for
/// one key make a single upstream call, the others wait for its result. Time is passed in.
public final class ResponseCache: Sendable {
    private struct State {
        /// Least recently used first out, in O(1): a full cache of small answers evicts one per insert,
        /// and a scan of every entry for the oldest cost more than the call it cached.
        var entries: LRUCache<String, CachedResponse>
        var bytes = 0
        var inFlight: [String: [CheckedContinuation<CachedResponse?, Never>]] = [:]
    }

    public let maxBytes: Int
    public let maxEntryBytes: Int
    private let state: Mutex<State>

    public init(maxBytes: Int, maxEntryBytes: Int) {
        self.maxBytes = maxBytes
        self.maxEntryBytes = maxEntryBytes
        // Every entry counts at least 64 bytes (`CachedResponse.bytes`): the byte bound binds first.
        state = Mutex(State(entries: LRUCache(capacity: max(1, maxBytes / 64 + 1))))
    }

    public var totalBytes: Int { state.withLock { $0.bytes } }
    public var count: Int { state.withLock { $0.entries.count } }

    public enum Lookup: Sendable {
        case fresh(CachedResponse)
        /// Expired but within its stale window (only served when the upstream cannot answer).
        case stale(CachedResponse)
        case miss
    }

    public func lookup(_ key: String, now: Int64) -> Lookup {
        state.withLock { s in
            guard let e = s.entries.get(key) else { return .miss }
            if e.expiresAt > now { return .fresh(e) }
            if e.staleUntil > now { return .stale(e) }
            s.bytes -= e.bytes
            s.entries.remove(key)
            return .miss
        }
    }

    /// Single flight: returns true when the caller should fetch (it is the leader); false when another
    /// call for the key is already in flight — then `wait(for:)` returns its result.
    public func beginFetch(_ key: String) -> Bool {
        state.withLock { s in
            if s.inFlight[key] != nil { return false }
            s.inFlight[key] = []
            return true
        }
    }

    /// Waits for the leader; nil when its answer was not cacheable (the caller then fetches itself).
    public func wait(for key: String) async -> CachedResponse? {
        await withCheckedContinuation { (c: CheckedContinuation<CachedResponse?, Never>) in
            let resumeNow: Bool = state.withLock { s in
                guard s.inFlight[key] != nil else { return true }
                s.inFlight[key]!.append(c)
                return false
            }
            if resumeNow { c.resume(returning: nil) }
        }
    }

    /// How many callers wait for the fetch of `key` (tests use it to end a flight only once every
    /// follower has joined it, instead of guessing with a sleep).
    func waiterCount(for key: String) -> Int { state.withLock { $0.inFlight[key]?.count ?? 0 } }

    /// Ends a fetch: stores the answer (when given and small enough) and wakes the waiters.
    public func endFetch(_ key: String, storing response: CachedResponse?) {
        let waiters: [CheckedContinuation<CachedResponse?, Never>] = state.withLock { s in
            if let response, response.bytes <= maxEntryBytes {
                if let old = s.entries.remove(key) { s.bytes -= old.bytes }
                if let evicted = s.entries.set(key, response) { s.bytes -= evicted.value.bytes }
                s.bytes += response.bytes
                while s.bytes > maxBytes, let victim = s.entries.removeLeastRecent() { s.bytes -= victim.value.bytes }
            }
            return s.inFlight.removeValue(forKey: key) ?? []
        }
        let shared = response.flatMap { $0.bytes <= maxEntryBytes ? $0 : nil }
        for w in waiters { w.resume(returning: shared) }
    }

    // MARK: Keys and freshness

    /// SHA-256 of the parts, so a key never carries a query value (or anything secret) in clear.
    public static func key(_ parts: [String]) -> String {
        Digest.sha256Hex(parts)
    }

    /// SerpAPI: the path and the query exactly as they are forwarded (the agent's `api_key` already
    /// removed; order kept). A key built from the sidecar's own reading of the query could map two
    /// requests the upstream reads differently to one entry, and let one agent plant another's answer.
    public static func serpAPIKey(_ call: ToolCall) -> String {
        key(["serpapi", call.request.path, call.request.query.encoded])
    }

    /// How long an `http_fetch` answer may be cached, from its `Cache-Control` / `Expires` (capped), or
    /// nil when it must not be stored.
    public static func freshness(_ headers: HTTPHeaders, now: Int64, cap: Int64) -> Int64? {
        let cc = headers["cache-control"].joined(separator: ",").lowercased()
        let directives = cc.split(separator: ",").map { $0.trimmedOWS }
        if directives.contains(where: { $0 == "no-store" || $0 == "private" || $0 == "no-cache" }) { return nil }
        if headers.contains(name: "set-cookie") || headers["vary"].contains(where: { $0.contains("*") }) { return nil }
        for d in directives {
            for prefix in ["s-maxage=", "max-age="] where d.hasPrefix(prefix) {
                // Compared in seconds: `max-age=9223372036854775807` must cap, not overflow.
                if let v = Int64(d.dropFirst(prefix.count)), v > 0 { return v >= cap / 1000 ? cap : v * 1000 }
                return nil
            }
        }
        if let expires = headers.first(name: "expires"), let date = HTTPDate.parse(expires) {
            let ttl = date * 1000 - now
            return ttl > 0 ? min(ttl, cap) : nil
        }
        return nil
    }
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) → unix seconds.
enum HTTPDate {
    static let months = ["Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "May": 5, "Jun": 6, "Jul": 7, "Aug": 8, "Sep": 9, "Oct": 10, "Nov": 11, "Dec": 12]

    static func parse(_ s: String) -> Int64? {
        let p = s.split(separator: " ")
        // Every field in its calendar range (a year is four digits), so no arithmetic below can overflow.
        guard p.count == 6, p[5] == "GMT", let day = Int(p[1]), (1...31).contains(day), let month = months[String(p[2])],
            let year = Int(p[3]), (0...9999).contains(year)
        else { return nil }
        let t = p[4].split(separator: ":").compactMap { Int($0) }
        guard t.count == 3, (0...23).contains(t[0]), (0...59).contains(t[1]), (0...60).contains(t[2]) else { return nil }
        // Days from civil (Howard Hinnant's algorithm).
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return Int64(days * 86400 + t[0] * 3600 + t[1] * 60 + t[2])
    }
}
