import Foundation

/// Consecutive events of one run as the embedded store keeps them: one row of `run_event_blocks` per run
/// per write (at most `capacity` events), the events packed in one blob.
///
/// Why: a row per event cost a B-tree insert into the table and one into its key per call of a run —
/// the writer's SQLite work was the largest single cost a run id added to a call. A block is one insert
/// per run per write, however many calls the write carries; reading a stream back decodes whole blocks
/// and skips what the reader has seen.
///
/// Layout, per event, little-endian: sequence number (8 bytes), time in unix ms (8), type length (2),
/// type, data length (4), data (the event's JSON text).
struct RunEventBlock {
    /// Events per block at most: a write of a long backlog is cut into blocks a resuming reader can
    /// decode without reading megabytes.
    static let capacity = 512

    private(set) var first: Int64 = 0
    private(set) var last: Int64 = 0
    private(set) var count = 0
    private(set) var bytes: [UInt8] = []

    init() {}

    init<Events: Sequence<RunEvent>>(_ events: Events) {
        for e in events { append(e) }
    }

    var isFull: Bool { count >= Self.capacity }

    /// Appends an event; events must come in increasing sequence. An event whose id is not a sequence
    /// number (never made by the store) is skipped.
    mutating func append(_ e: RunEvent) {
        guard let seq = Int64(e.id) else { return }
        if count == 0 {
            first = seq
            bytes.reserveCapacity(64 + e.json.utf8.count)
        }
        last = seq
        count += 1
        Self.put(UInt64(bitPattern: seq), 8, into: &bytes)
        Self.put(UInt64(bitPattern: e.at), 8, into: &bytes)
        Self.put(UInt64(e.type.utf8.count), 2, into: &bytes)
        bytes.append(contentsOf: e.type.utf8)
        Self.put(UInt64(e.json.utf8.count), 4, into: &bytes)
        bytes.append(contentsOf: e.json.utf8)
    }

    private static func put(_ v: UInt64, _ width: Int, into out: inout [UInt8]) {
        for k in 0..<width { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(k)))) }
    }

    /// The events of a stored block numbered after `after`, in order (those before are read past, not
    /// made); nil when the bytes are not a block (a damaged row: the reader reports it rather than guess).
    static func decode(_ data: Data, after: Int64 = .min) -> [RunEvent]? {
        data.withUnsafeBytes { raw -> [RunEvent]? in
            var out: [RunEvent] = []
            var i = 0
            func take(_ width: Int) -> UInt64? {
                guard raw.count - i >= width else { return nil }
                var v: UInt64 = 0
                for k in 0..<width { v |= UInt64(raw[i + k]) << (8 * UInt64(k)) }
                i += width
                return v
            }
            func text(_ length: UInt64) -> String? {
                guard UInt64(raw.count - i) >= length else { return nil }
                let s = String(decoding: UnsafeRawBufferPointer(rebasing: raw[i..<(i + Int(length))]), as: UTF8.self)
                i += Int(length)
                return s
            }
            while i < raw.count {
                guard let seq = take(8), let at = take(8), let typeLength = take(2), let type = text(typeLength), let dataLength = take(4),
                    let json = text(dataLength)
                else { return nil }
                let number = Int64(bitPattern: seq)
                if number > after { out.append(RunEvent(id: String(number), type: type, at: Int64(bitPattern: at), json: json)) }
            }
            return out
        }
    }
}
