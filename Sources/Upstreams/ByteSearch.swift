#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Substring search over bytes: `memchr` for the needle's first byte, then `memcmp`. Foundation's
/// `contains` and the generic `firstRange(of:)` each cost more than the rest of a request's query
/// handling, and the scrubber runs this over every answer body.
enum ByteSearch {
    static func contains(_ needle: UnsafeRawBufferPointer, in haystack: UnsafeRawBufferPointer) -> Bool {
        needle.isEmpty || firstIndex(of: needle, in: haystack, from: 0) != nil
    }

    /// The offset of the first occurrence of `needle` in `haystack` at `start` or later, or nil.
    static func firstIndex(of needle: UnsafeRawBufferPointer, in haystack: UnsafeRawBufferPointer, from start: Int) -> Int? {
        guard let n = needle.baseAddress, needle.count > 0 else { return start }
        guard let base = haystack.baseAddress, start >= 0, needle.count <= haystack.count - start else { return nil }
        let end = base + (haystack.count - needle.count + 1)
        var p = base + start
        while p < end {
            guard let hit = memchr(p, Int32(needle[0]), end - p) else { return nil }
            if memcmp(hit, n, needle.count) == 0 { return base.distance(to: UnsafeRawPointer(hit)) }
            p = UnsafeRawPointer(hit) + 1
        }
        return nil
    }

    /// The offset of the last occurrence of `needle` in `haystack` that starts at `start` or later and
    /// ends by `end` (default: the whole haystack), or nil.
    static func lastIndex(of needle: [UInt8], in haystack: [UInt8], startingAt start: Int = 0, endingBy end: Int? = nil) -> Int? {
        let end = min(end ?? haystack.count, haystack.count)
        guard !needle.isEmpty, needle.count <= end else { return nil }
        var i = end - needle.count
        while i >= start {
            if haystack[i] == needle[0], haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i -= 1
        }
        return nil
    }
}

extension String {
    /// Whether the bytes of `needle` occur in the string.
    func containsBytes(_ needle: StaticString) -> Bool {
        var copy = self
        return copy.withUTF8 { hay in
            ByteSearch.contains(UnsafeRawBufferPointer(start: needle.utf8Start, count: needle.utf8CodeUnitCount), in: UnsafeRawBufferPointer(hay))
        }
    }
}
