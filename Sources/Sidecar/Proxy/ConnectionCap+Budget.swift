import Foundation

extension ConnectionCap {
    /// How many connections each listener may hold, from the file descriptors the process may open.
    struct Budget: Equatable {
        var proxy: Int
        var admin: Int
        /// Set when configured caps need more descriptors than the process has: said at start, not refused.
        var warning: String?
    }

    /// Descriptors kept for what is not an agent's connection: the listeners, the log, SQLite, Redis,
    /// key and CA files, name lookups.
    static let reservedDescriptors = 128

    /// Each agent connection may hold an upstream connection too (a call in flight, a tunnel), so the
    /// proxy's share counts two descriptors per connection. Without settings, the admin port gets an
    /// eighth of what is left (16 to 1 024: probes, scrapes, run event streams) and the proxy half the rest.
    static func budget(descriptors: Int, proxy: Int?, admin: Int?) -> Budget {
        let usable = Swift.max(0, descriptors - reservedDescriptors)
        let admin = admin ?? Swift.min(1024, Swift.max(16, usable / 8))
        let proxy = proxy ?? Swift.max(16, (usable - admin) / 2)
        let needed = 2 * proxy + admin + reservedDescriptors
        let warning =
            needed > descriptors
            ? "limits.max_connections \(proxy) and admin.max_connections \(admin) need about \(needed) file descriptors; this process may open \(descriptors) (ulimit -n): past it, connections fail to be accepted"
            : nil
        return Budget(proxy: proxy, admin: admin, warning: warning)
    }

    /// Raises the soft limit on open files to the hard one (as Go's runtime and nginx's
    /// `worker_rlimit_nofile` do: the soft limit is often 1 024, far below what a proxy needs and what
    /// it is allowed), and returns the limit now in force.
    static func raiseDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        let wanted = Swift.min(limit.rlim_max, 1 << 20)
        if limit.rlim_cur < wanted {
            var raised = limit
            raised.rlim_cur = wanted
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return Int(clamping: limit.rlim_cur)
    }
}
