/// Which of the process's mappings `CodePages` may hand back to the page cache, read from the text of
/// `/proc/self/smaps`: pure, so the choice is table-tested on recorded text.
extension CodePages {
    /// A mapping of the executable's code, with what is resident of it.
    struct Mapping: Equatable {
        var start: UInt
        var end: UInt
        var residentKB: Int

        var length: Int { Int(end - start) }
    }

    /// The executable's code mappings (`r-xp`, the file `executable`) that hold no page of their own:
    /// nothing anonymous, nothing swapped. A page this process wrote (text relocations, a debugger's
    /// breakpoint) is a private copy, counted `Anonymous`; without one the mapping shows only the file's
    /// pages, so dropping it loses nothing — a later fault maps the same page again from the page cache.
    /// `Private_Dirty` is not the test: it also counts the file's own page-cache pages not yet written
    /// back (every page of a binary linked a moment ago), which are not this process's. Any other
    /// mapping (data, the relocated read-only data, a library's code) is never chosen.
    static func releasable(smaps: Substring, executable: String) -> [Mapping] {
        var out: [Mapping] = []
        var current: Mapping?
        var clean = true
        func close() {
            if let m = current, clean { out.append(m) }
            current = nil
        }
        for line in smaps.split(separator: "\n", omittingEmptySubsequences: true) {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let name = fields.first, name.last == ":" else {
                // A mapping's first line (a field's name ends with a colon): one that does not parse
                // starts a mapping all the same, which is then not chosen.
                close()
                clean = true
                if let header = Self.header(line), header.perms == "r-xp", header.path == executable {
                    current = Mapping(start: header.start, end: header.end, residentKB: 0)
                }
                continue
            }
            guard current != nil, fields.count >= 2, let kB = Int(fields[1]) else { continue }
            switch fields[0] {
            case "Rss:": current?.residentKB = kB
            case "Anonymous:", "Swap:": if kB != 0 { clean = false }
            default: break
            }
        }
        close()
        return out
    }

    /// A mapping's first line: `start-end perms offset dev inode [path]`; nil when it does not parse.
    private static func header(_ line: Substring) -> (start: UInt, end: UInt, perms: Substring, path: Substring)? {
        let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
        guard fields.count >= 5, let dash = fields[0].firstIndex(of: "-"),
            let start = UInt(fields[0][..<dash], radix: 16), let end = UInt(fields[0][fields[0].index(after: dash)...], radix: 16),
            end > start
        else { return nil }
        let path = fields.count == 6 ? fields[5].drop(while: { $0 == " " }) : ""
        return (start, end, fields[1], path)
    }
}
