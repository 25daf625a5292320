import Testing

@testable import Sidecar

/// Which mappings `CodePages` hands back to the page cache: only the executable's own code, and only
/// while it is a clean copy of the file — never data, never a library, never a mapping written to.
@Suite("Code pages released after start")
struct CodePagesTests {
    static let exe = "/opt/sidecar/bin/sidecar"

    /// One mapping's block as `/proc/self/smaps` prints it.
    static func block(_ range: String, _ perms: String, path: String, rss: Int, privateDirty: Int = 0, anonymous: Int = 0) -> String {
        """
        \(range) \(perms) 00000000 fe:00 5393099                    \(path)
        Size:              54944 kB
        KernelPageSize:        4 kB
        Rss:               \(rss) kB
        Pss:               \(rss) kB
        Shared_Clean:          0 kB
        Shared_Dirty:          0 kB
        Private_Clean:     \(rss - privateDirty) kB
        Private_Dirty:     \(privateDirty) kB
        Anonymous:         \(anonymous) kB
        Swap:                  0 kB
        VmFlags: rd ex mr mw me

        """
    }

    @Test func theExecutablesCleanCodeIsChosen() {
        let smaps =
            Self.block("556df06a5000-556df3c4d000", "r-xp", path: Self.exe, rss: 35076)
            + Self.block("556df3c4d000-556df3daf000", "r--p", path: Self.exe, rss: 1416)
            + Self.block("556df3daf000-556df637c000", "rw-p", path: Self.exe, rss: 4396, privateDirty: 4396, anonymous: 4396)
            + Self.block("7f34b8244000-7f34b839a000", "r-xp", path: "/usr/lib/x86_64-linux-gnu/libc.so.6", rss: 1228)
            + Self.block("7f34b5000000-7f34b5800000", "rw-p", path: "", rss: 2256, privateDirty: 2256, anonymous: 2256)
        let chosen = CodePages.releasable(smaps: smaps[...], executable: Self.exe)
        #expect(chosen == [.init(start: 0x556d_f06a_5000, end: 0x556d_f3c4_d000, residentKB: 35076)])
        #expect(chosen[0].length == 0x556d_f3c4_d000 - 0x556d_f06a_5000)
    }

    /// Code with pages of its own (text relocations, a debugger's breakpoints: private copies, counted
    /// `Anonymous`): dropping them would lose what was written, so it is left alone.
    @Test(arguments: [(8, 8), (0, 8)])
    func writtenCodeIsLeftAlone(privateDirty: Int, anonymous: Int) {
        let smaps = Self.block("55760c9b0000-55760f857000", "r-xp", path: Self.exe, rss: 32540, privateDirty: privateDirty, anonymous: anonymous)
        #expect(CodePages.releasable(smaps: smaps[...], executable: Self.exe).isEmpty)
    }

    /// A binary linked a moment ago: its page-cache pages are dirty until written back, and smaps counts
    /// them `Private_Dirty` in every process that maps them. They are the file's, not this process's
    /// (nothing `Anonymous`), so the mapping is chosen.
    @Test func aFreshlyWrittenBinarysCodeIsChosen() {
        let smaps = Self.block("55760c9b0000-55760f857000", "r-xp", path: Self.exe, rss: 32540, privateDirty: 32540)
        #expect(CodePages.releasable(smaps: smaps[...], executable: Self.exe).count == 1)
    }

    @Test func anotherFileOrNoFileIsNeverChosen() {
        let smaps =
            Self.block("1000-2000", "r-xp", path: Self.exe + ".old", rss: 4)
            + Self.block("3000-4000", "r-xp", path: "", rss: 4)
            + Self.block("5000-6000", "r-xp", path: "[vdso]", rss: 4)
        #expect(CodePages.releasable(smaps: smaps[...], executable: Self.exe).isEmpty)
    }

    /// A path with spaces is one path; a malformed header or range is skipped, not trusted.
    @Test func pathsWithSpacesAndMalformedLines() {
        let spaced = "/srv/my tools/sidecar"
        let smaps =
            Self.block("1000-9000", "r-xp", path: spaced, rss: 32)
            + Self.block("9000-1000", "r-xp", path: spaced, rss: 32)
            + "zz-yy r-xp 00000000 fe:00 1 \(spaced)\nRss: 4 kB\n"
        #expect(CodePages.releasable(smaps: smaps[...], executable: spaced) == [.init(start: 0x1000, end: 0x9000, residentKB: 32)])
    }

    /// The real process: whatever it chooses is its own code, and releasing it leaves the process running
    /// the same code (the test goes on after it).
    @Test func releasingInThisProcessIsHarmless() {
        let released = CodePages.release(logger: .init(label: "test"))
        #expect(released == nil || released! >= 0)
    }
}
