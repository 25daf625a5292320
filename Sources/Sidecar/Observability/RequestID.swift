#if canImport(Glibc)
import Glibc
#endif
import NIOHTTP1
import Upstreams

/// The id that ties an access log line, the upstream request and the agent's response together.
enum RequestID {
    /// Taken from `X-Request-Id` (if it is 1–128 safe characters, so it cannot forge log fields), else
    /// from a W3C `traceparent`'s trace id, else generated (128 random bits, hex).
    static func from(_ headers: HTTPHeaders) -> String {
        if let given = headers.first(name: "x-request-id"), isSafe(given) { return given }
        if let tp = headers.first(name: "traceparent") {
            let parts = tp.split(separator: "-")
            if parts.count == 4, parts[1].count == 32, parts[1].allSatisfy(\.isHexDigit), parts[1] != String(repeating: "0", count: 32) {
                return String(parts[1]).lowercased()
            }
        }
        return generate()
    }

    /// 128 bits from a per-thread generator seeded from the system CSPRNG: request ids must not collide
    /// or be guessable across requests, but need not cost two `getrandom` calls each.
    static func generate() -> String {
        let (a, b) = withFastRandom { g in (g.next(), g.next()) }
        return String(unsafeUninitializedCapacity: 32) { out in
            let digits: StaticString = "0123456789abcdef"
            for i in 0..<16 {
                out[i] = digits.utf8Start[Int((a >> UInt64(60 - 4 * i)) & 0xF)]
                out[16 + i] = digits.utf8Start[Int((b >> UInt64(60 - 4 * i)) & 0xF)]
            }
            return 32
        }
    }

    static func isSafe(_ s: String) -> Bool { HeaderRules.isSafeID(s) }
}

/// xoshiro256** seeded once per thread from `SystemRandomNumberGenerator`.
struct FastRandom: RandomNumberGenerator {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    init() {
        var seed = SystemRandomNumberGenerator()
        s = (seed.next(), seed.next(), seed.next(), seed.next())
    }

    mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }
}

private final class FastRandomBox { var generator = FastRandom() }

private let fastRandom = PerThread { FastRandomBox() }

func withFastRandom<T>(_ body: (inout FastRandom) -> T) -> T { body(&fastRandom.value.generator) }
