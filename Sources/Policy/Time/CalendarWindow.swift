import Foundation
import Synchronization

/// A calendar window for quotas and budgets: hour, day, week (ISO, from Monday) or month, in an IANA
/// time zone. A "day" is the local calendar day, so it is 23 or 25 hours long on DST changes.
public enum CalendarPeriod: String, Sendable, Hashable, CaseIterable {
    case hour, day, week, month
}

public struct CalendarWindow: Sendable, Hashable {
    public let period: CalendarPeriod
    public let timeZone: TimeZone

    public init(period: CalendarPeriod, timeZone: TimeZone) {
        self.period = period
        self.timeZone = timeZone
    }

    /// The window containing `date`: a stable id (`d2026-11-22`) and its [start, end) in unix milliseconds.
    public func window(containing date: Date) -> (id: String, start: Int64, end: Int64) {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = timeZone
        let component: Calendar.Component
        switch period {
        case .hour: component = .hour
        case .day: component = .day
        case .week: component = .weekOfYear
        case .month: component = .month
        }
        let interval = calendar.dateInterval(of: component, for: date)!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .yearForWeekOfYear, .weekOfYear], from: interval.start)
        func pad(_ v: Int, _ w: Int = 2) -> String { String(repeating: "0", count: max(0, w - String(v).count)) + String(v) }
        let id: String
        switch period {
        case .hour: id = "h\(pad(c.year!, 4))-\(pad(c.month!))-\(pad(c.day!))T\(pad(c.hour!))"
        case .day: id = "d\(pad(c.year!, 4))-\(pad(c.month!))-\(pad(c.day!))"
        case .week: id = "w\(pad(c.yearForWeekOfYear!, 4))-\(pad(c.weekOfYear!))"
        case .month: id = "m\(pad(c.year!, 4))-\(pad(c.month!))"
        }
        return (id, Int64((interval.start.timeIntervalSince1970 * 1000).rounded()), Int64((interval.end.timeIntervalSince1970 * 1000).rounded()))
    }

    public typealias Window = (id: String, start: Int64, end: Int64)

    /// The window containing `date` and the one after it (so a shared store can pick by its own clock).
    ///
    /// Remembered per window kind until `date` leaves the current window: the calendar arithmetic
    /// (ICU time-zone offsets, two intervals) cost about 3 µs per quota check on every request, and its
    /// answer only depends on which window `date` falls in.
    public func windows(around date: Date) -> (current: Window, next: Window) {
        let ms = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        if let known = Self.recent.withLock({ $0[self] }), known.current.start <= ms, ms < known.current.end { return known }
        let current = window(containing: date)
        let next = window(containing: Date(timeIntervalSince1970: Double(current.end) / 1000 + 0.001))
        Self.recent.withLock { recent in
            // A policy names a handful of kinds; the bound only guards against a pathological one.
            if recent.count >= 256 { recent.removeAll() }
            recent[self] = (current, next)
        }
        return (current, next)
    }

    /// The last windows computed per kind (a memo of a pure function: no clock is read here).
    private static let recent = Mutex<[CalendarWindow: (current: Window, next: Window)]>([:])
}
