extension String {
    /// Whether the bytes of `needle` occur in the string. A plain byte scan: Foundation's `contains`
    /// and the generic `firstRange(of:)` each cost more than the rest of a request's query handling.
    func containsBytes(_ needle: StaticString) -> Bool {
        let n = needle.utf8CodeUnitCount
        guard n > 0 else { return true }
        var copy = self
        return copy.withUTF8 { hay in
            guard hay.count >= n else { return false }
            let first = needle.utf8Start[0]
            var i = 0
            while i <= hay.count - n {
                if hay[i] == first {
                    var j = 1
                    while j < n, hay[i + j] == needle.utf8Start[j] { j += 1 }
                    if j == n { return true }
                }
                i += 1
            }
            return false
        }
    }
}
