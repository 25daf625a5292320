import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One running sidecar per state directory: an exclusive `flock` on `<state.dir>/sidecar.lock`, held for
/// the life of `sidecar run` and released by the kernel when the process ends, however it ends (no stale
/// lock after a crash or `kill -9`).
///
/// Why: the embedded stores keep their working state in memory and write it to SQLite — run events are
/// numbered by the process that appends them, limits and ledgers counted by the process that admits the
/// calls. A second sidecar started on the same directory (two `make run`s in one checkout, two pods on
/// one volume) would overwrite the first one's events and split its limits, silently. The lock turns
/// that into a refusal at start, naming the other process.
///
/// The file holds the holder's pid, for the message only: the lock is the `flock`, not the file.
final class StateDirectoryLock: Sendable {
    private let fd: Int32
    let path: String

    /// What trying the lock found.
    enum Outcome {
        case held(StateDirectoryLock)
        /// Another process holds it (its pid when the file names one).
        case busy(pid: Int32?)
        /// The file system cannot lock (`ENOLCK`, `EOPNOTSUPP`: some network file systems): the caller
        /// goes on without one.
        case unsupported(errno: Int32)
    }

    private init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { close(fd) }

    static func path(in dir: String) -> String { (dir as NSString).appendingPathComponent("sidecar.lock") }

    /// Tries the lock once, without waiting.
    static func acquire(in dir: String) throws -> Outcome {
        let path = path(in: dir)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StartupError("state.dir \(dir): cannot open \(path) (\(String(cString: strerror(errno))))") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            defer { close(fd) }
            if e == EWOULDBLOCK { return .busy(pid: readPID(fd)) }
            return .unsupported(errno: e)
        }
        // The holder's pid, for the next one's message.
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        return .held(StateDirectoryLock(fd: fd, path: path))
    }

    private static func readPID(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 16)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        let digits = buffer[..<n].prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        return Int32(String(decoding: digits, as: UTF8.self)).flatMap { $0 > 0 ? $0 : nil }
    }
}
