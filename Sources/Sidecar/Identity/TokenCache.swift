import Crypto
import Policy
import Synchronization

/// Verified tokens by SHA-256 digest until they expire, so the RSA decryption (~0.7 ms) happens once per
/// token and not per request. Failures are cached briefly too, so replaying garbage cannot make the
/// sidecar spend an RSA operation per request. Bounded: past `capacity`, expired entries go first, then
/// arbitrary ones.
final class TokenCache: Sendable {
    struct Digest: Hashable, Sendable {
        let a: UInt64, b: UInt64, c: UInt64, d: UInt64
        init(_ token: String) {
            var token = token
            let h = token.withUTF8 { SHA256.hash(data: $0) }
            var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
            withUnsafeMutableBytes(of: &words) { dst in h.withUnsafeBytes { src in dst.copyMemory(from: src) } }
            (a, b, c, d) = words
        }
    }

    enum Entry: Sendable {
        case verified(VerifiedToken)
        case failed(TokenFailure, until: Int64)
    }

    private let entries = Mutex<[Digest: Entry]>([:])
    private let capacity: Int

    init(capacity: Int = 100_000) { self.capacity = capacity }

    func lookup(_ digest: Digest, now: Int64) -> Entry? {
        entries.withLock { map in
            switch map[digest] {
            case .verified(let v)? where v.claims.exp > now - 30: return .verified(v)
            case .failed(let f, let until)? where until > now: return .failed(f, until: until)
            case nil: return nil
            default:
                map[digest] = nil
                return nil
            }
        }
    }

    func store(_ digest: Digest, _ entry: Entry, now: Int64) {
        entries.withLock { map in
            if map.count >= capacity {
                map = map.filter { _, e in
                    switch e {
                    case .verified(let v): return v.claims.exp > now
                    case .failed(_, let until): return until > now
                    }
                }
                if map.count >= capacity { map.removeAll(keepingCapacity: true) }
            }
            map[digest] = entry
        }
    }

    /// Drops every cached token of a revoked token id or a disabled agent.
    func evict(where predicate: (TokenClaims) -> Bool) {
        entries.withLock { map in
            map = map.filter { _, e in
                if case .verified(let v) = e { return !predicate(v.claims) }
                return true
            }
        }
    }

    var count: Int { entries.withLock { $0.count } }
}
