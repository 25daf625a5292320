import CHiredis
import NIOCore

/// A RESP2 reply.
enum RedisValue: Sendable, Hashable {
    case simple(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8]?)
    case array([RedisValue]?)

    var int: Int64? {
        switch self {
        case .integer(let i): return i
        case .bulk(let b?): return Int64(String(decoding: b, as: UTF8.self))
        default: return nil
        }
    }

    var string: String? {
        switch self {
        case .simple(let s): return s
        case .bulk(let b?): return String(decoding: b, as: UTF8.self)
        case .integer(let i): return String(i)
        default: return nil
        }
    }

    var array: [RedisValue]? { if case .array(let a?) = self { return a } else { return nil } }

    /// The reply, or the server's error reply thrown as `RedisError.server`.
    func checked() throws -> RedisValue {
        if case .error(let e) = self { throw RedisError.server(e) }
        return self
    }

    /// Converts a hiredis reply tree (and leaves freeing it to the caller).
    init(reply: UnsafePointer<redisReply>) {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            self = .bulk(r.str.map { Array(UnsafeRawBufferPointer(start: $0, count: r.len).bindMemory(to: UInt8.self)) } ?? [])
        case REDIS_REPLY_STATUS:
            self = .simple(r.str.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: r.len), as: UTF8.self) } ?? "")
        case REDIS_REPLY_ERROR:
            self = .error(r.str.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: r.len), as: UTF8.self) } ?? "")
        case REDIS_REPLY_INTEGER:
            self = .integer(Int64(r.integer))
        case REDIS_REPLY_ARRAY:
            var items: [RedisValue] = []
            items.reserveCapacity(r.elements)
            for i in 0..<r.elements {
                if let e = r.element[i] { items.append(RedisValue(reply: UnsafePointer(e))) }
            }
            self = .array(items)
        default:
            self = .bulk(nil)
        }
    }
}

/// Failures of the shared-state connection. Callers apply the per-class failure policy.
struct RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        case unavailable
        case timeout
        case server
        case protocolError
    }

    let kind: Kind
    let message: String

    static func unavailable(_ m: String) -> Self { .init(kind: .unavailable, message: m) }
    static func timeout() -> Self { .init(kind: .timeout, message: "command timed out") }
    static func server(_ m: String) -> Self { .init(kind: .server, message: m) }

    var description: String { "redis \(kind): \(message)" }
}

/// RESP2 command encoding (an array of bulk strings). hiredis's variadic formatter is not importable
/// from Swift, and encoding straight into a ByteBuffer avoids a copy.
enum RESP {
    static func encode(_ args: [String], into buffer: inout ByteBuffer) {
        buffer.writeString("*\(args.count)\r\n")
        for a in args {
            buffer.writeString("$\(a.utf8.count)\r\n")
            buffer.writeString(a)
            buffer.writeString("\r\n")
        }
    }
}

/// Feeds bytes to hiredis's reader and yields complete replies.
final class HiredisReader {
    private let reader: UnsafeMutablePointer<redisReader>

    init() { reader = redisReaderCreate() }
    deinit { redisReaderFree(reader) }

    func feed(_ buffer: ByteBuffer) throws {
        let rc = buffer.withUnsafeReadableBytes { raw in
            redisReaderFeed(reader, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count)
        }
        guard rc == REDIS_OK else { throw RedisError(kind: .protocolError, message: "reader refused input") }
    }

    /// The next complete reply, or nil when more bytes are needed.
    func next() throws -> RedisValue? {
        var raw: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &raw) == REDIS_OK else {
            throw RedisError(kind: .protocolError, message: "malformed reply")
        }
        guard let raw else { return nil }
        defer { freeReplyObject(raw) }
        return RedisValue(reply: raw.assumingMemoryBound(to: redisReply.self))
    }
}
