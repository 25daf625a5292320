import Foundation
import Testing

@testable import Sidecar

/// One sidecar per state directory (`StateDirectoryLock`): a second holder is refused and told the
/// first one's pid; the lock goes with its holder, and the file left behind locks nothing.
@Suite("State directory lock")
struct StateDirectoryLockTests {
    private static func directory() throws -> String {
        let dir = NSTemporaryDirectory() + "sidecar-lock-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    private static func held(_ outcome: StateDirectoryLock.Outcome) -> StateDirectoryLock? {
        if case .held(let lock) = outcome { return lock }
        return nil
    }

    @Test func aSecondHolderIsRefusedUntilTheFirstLetsGo() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var first = Self.held(try StateDirectoryLock.acquire(in: dir))
        #expect(first != nil)
        // flock locks belong to the open file: a second open, even in this process, is another holder.
        if case .busy(let pid) = try StateDirectoryLock.acquire(in: dir) {
            #expect(pid == getpid())
        } else {
            Issue.record("a second holder got the lock")
        }
        #expect(first?.path == StateDirectoryLock.path(in: dir))
        first = nil
        #expect(Self.held(try StateDirectoryLock.acquire(in: dir)) != nil, "the lock was not released with its holder")
    }

    @Test func aFileLeftBehindLocksNothing() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // What a crashed sidecar leaves: the file with its pid, no lock.
        try "4242\n".write(toFile: StateDirectoryLock.path(in: dir), atomically: true, encoding: .utf8)
        guard case .held = try StateDirectoryLock.acquire(in: dir) else {
            Issue.record("a stale file blocked the lock")
            return
        }
        let text = try String(contentsOfFile: StateDirectoryLock.path(in: dir), encoding: .utf8)
        #expect(text == "\(getpid())\n")
    }

    @Test func aDirectoryThatCannotHoldTheFileIsAStartupError() throws {
        #expect(throws: StartupError.self) { try StateDirectoryLock.acquire(in: "/proc/no-such-dir-\(UUID().uuidString)") }
    }
}
