#if canImport(Glibc)
import Glibc
#endif
import NIOHTTP1

/// UTC timestamps as RFC 3339 (`2026-11-22T21:35:13Z`), without Foundation's formatter.
enum RFC3339 {
    static func format(_ unixSeconds: Int64) -> String {
        var t = time_t(unixSeconds)
        var tm = tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ w: Int) -> String {
            let s = String(v)
            return s.count >= w ? s : String(repeating: "0", count: w - s.count) + s
        }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2))Z"
    }
}

extension HTTPHeaders: HTTPHeadersLike {}
