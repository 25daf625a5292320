import Foundation

/// The embedded ledger's form of a kept answer: length-prefixed fields behind a version byte, written
/// and read without `JSONEncoder` (which cost a Gmail send more than its SQLite statements). Rows
/// written as JSON by earlier versions (they start with `{`) still read.
extension StoredAnswer {
    private static let version: UInt8 = 1

    var bytes: [UInt8] {
        var out: [UInt8] = [Self.version]
        out.reserveCapacity(16 + (body?.count ?? 0) + headers.reduce(0) { $0 + $1.reduce(8) { $0 + $1.utf8.count } })
        Self.put(UInt32(clamping: status), into: &out)
        Self.put(UInt32(headers.count), into: &out)
        for pair in headers {
            Self.put(UInt32(pair.count), into: &out)
            for s in pair { Self.put(Array(s.utf8), into: &out) }
        }
        if let body {
            out.append(1)
            Self.put([UInt8](body), into: &out)
        } else {
            out.append(0)
        }
        return out
    }

    /// The answer in `data` (this form or the JSON of earlier versions), or nil if it is neither.
    init?(bytes data: Data) {
        guard let first = data.first else { return nil }
        if first == UInt8(ascii: "{") {
            guard let decoded = try? JSONDecoder().decode(StoredAnswer.self, from: data) else { return nil }
            self = decoded
            return
        }
        guard first == Self.version else { return nil }
        var reader = Reader(bytes: [UInt8](data), at: 1)
        guard let status = reader.u32(), let count = reader.u32(), count <= 1024 else { return nil }
        var headers: [[String]] = []
        for _ in 0..<count {
            guard let n = reader.u32(), n <= 16 else { return nil }
            var pair: [String] = []
            for _ in 0..<n {
                guard let s = reader.chunk() else { return nil }
                pair.append(String(decoding: s, as: UTF8.self))
            }
            headers.append(pair)
        }
        guard let flag = reader.byte() else { return nil }
        var body: Data?
        if flag == 1 {
            guard let b = reader.chunk() else { return nil }
            body = Data(b)
        }
        guard reader.atEnd else { return nil }
        self.init(status: Int(status), headers: headers, body: body)
    }

    private static func put(_ v: UInt32, into out: inout [UInt8]) {
        out.append(UInt8(v >> 24 & 0xFF))
        out.append(UInt8(v >> 16 & 0xFF))
        out.append(UInt8(v >> 8 & 0xFF))
        out.append(UInt8(v & 0xFF))
    }

    private static func put(_ bytes: [UInt8], into out: inout [UInt8]) {
        put(UInt32(bytes.count), into: &out)
        out.append(contentsOf: bytes)
    }

    private struct Reader {
        let bytes: [UInt8]
        var at: Int
        var atEnd: Bool { at == bytes.count }

        mutating func byte() -> UInt8? {
            guard at < bytes.count else { return nil }
            defer { at += 1 }
            return bytes[at]
        }

        mutating func u32() -> UInt32? {
            guard bytes.count - at >= 4 else { return nil }
            defer { at += 4 }
            return UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
        }

        mutating func chunk() -> ArraySlice<UInt8>? {
            guard let n = u32(), bytes.count - at >= Int(n) else { return nil }
            defer { at += Int(n) }
            return bytes[at..<at + Int(n)]
        }
    }
}
