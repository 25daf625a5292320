#if canImport(Glibc)
import Glibc
#endif
import Logging

/// Hands the start-up's code pages back to the page cache once the sidecar is up.
///
/// The binary's code is ~36 MB (Swift's runtime, Foundation and BoringSSL linked in). Start-up runs
/// code from all over it — configuration, key and CA generation, migrations, every module's metadata —
/// and Linux maps the 64 KiB around each page faulted, so ~30 MB of code stays resident, counted in RSS,
/// though requests never run most of it again. `madvise(MADV_DONTNEED)` on the clean code mappings
/// unmaps them from this process only: the page cache keeps the file's pages, and the code requests
/// run faults back in at the cost of a minor fault per 64 KiB, once. Measured: idle RSS 49 → 23 MB, and
/// under load the resident code is what the load runs (README "Benchmarks").
enum CodePages {
    /// Releases the executable's clean code mappings; the kB that were resident in them, or nil when
    /// nothing could be read (not Linux, no `/proc`).
    static func release(logger: Logger) -> Int? {
        #if os(Linux)
        guard let smaps = read("/proc/self/smaps"), let executable = executablePath() else { return nil }
        var released = 0
        for mapping in releasable(smaps: smaps[...], executable: executable) {
            guard let address = UnsafeMutableRawPointer(bitPattern: mapping.start) else { continue }
            if madvise(address, mapping.length, MADV_DONTNEED) == 0 { released += mapping.residentKB }
        }
        logger.debug("released start-up code pages", metadata: ["kB": "\(released)"])
        return released
        #else
        return nil
        #endif
    }

    /// After `delay` (start-up's last work — listeners, first connections — done), once.
    static func releaseAfterStart(delay: Duration = .seconds(2), logger: Logger) async {
        try? await Task.sleep(for: delay)
        if Task.isCancelled { return }
        _ = release(logger: logger)
    }

    #if os(Linux)
    private static func executablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A `/proc` file's text, read until the end: its size is not known ahead, and Foundation's readers
    /// (`String(contentsOfFile:)`) stop after the first read — 3.7 of 28 kB of `smaps` here.
    private static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            bytes.append(contentsOf: chunk[..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
    #endif
}
