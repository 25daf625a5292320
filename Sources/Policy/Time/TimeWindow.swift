import Foundation

/// Allowed days and hours in an IANA time zone. Evaluated with Foundation's calendar in that zone, so
/// it is right across DST changes (a 09:00–17:00 window is 09:00–17:00 local time on both sides).
public struct TimeWindow: Sendable, Hashable {
    public let timeZone: TimeZone
    /// ISO weekdays allowed, 1 = Monday … 7 = Sunday.
    public let days: Set<Int>
    /// Minute-of-day ranges [start, end); a range with end <= start wraps past midnight.
    public let ranges: [Range]

    public struct Range: Sendable, Hashable {
        public let start: Int
        public let end: Int
    }

    public init(timeZone: TimeZone, days: Set<Int>, ranges: [Range]) {
        self.timeZone = timeZone
        self.days = days
        self.ranges = ranges
    }

    public func contains(_ date: Date) -> Bool {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let c = calendar.dateComponents([.weekday, .hour, .minute], from: date)
        let isoDay = ((c.weekday! + 5) % 7) + 1  // Sunday=1 → 7, Monday=2 → 1
        let minute = c.hour! * 60 + c.minute!
        for r in ranges {
            if r.start < r.end {
                if days.contains(isoDay), (r.start..<r.end).contains(minute) { return true }
            } else {
                // Wraps midnight: the late part belongs to today, the early part to the previous day.
                let previous = isoDay == 1 ? 7 : isoDay - 1
                if days.contains(isoDay), minute >= r.start { return true }
                if days.contains(previous), minute < r.end { return true }
            }
        }
        return ranges.isEmpty && days.contains(isoDay)
    }

    static let dayNames = ["mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7]

    /// `HH:MM-HH:MM`
    static func parseRange(_ s: String) -> Range? {
        let parts = s.split(separator: "-")
        guard parts.count == 2, let a = minuteOfDay(parts[0]), let b = minuteOfDay(parts[1]), a != b || a == 0 else { return nil }
        return Range(start: a, end: b == 0 && a > 0 ? 0 : b)
    }

    static func minuteOfDay<S: StringProtocol>(_ s: S) -> Int? {
        let p = s.split(separator: ":")
        guard p.count == 2, p[0].count == 2, p[1].count == 2, let h = Int(p[0]), let m = Int(p[1]), (0...24).contains(h), (0..<60).contains(m),
            h < 24 || m == 0
        else { return nil }
        return (h % 24) * 60 + m
    }
}
