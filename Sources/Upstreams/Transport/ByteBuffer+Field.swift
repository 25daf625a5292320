import NIOCore

extension ByteBuffer {
    /// Writes `name: value\r\n` with one capacity check and one pass, where four separate writes would
    /// each check capacity and uniqueness again (both encoders write every field of every message, and
    /// those small writes were a visible share of the CPU per request). The caller has checked the
    /// field's syntax (`FieldSyntax`).
    public mutating func writeField(_ name: String, _ value: String) {
        var name = name
        var value = value
        name.withUTF8 { n in value.withUTF8 { v in writeField(n, v) } }
    }

    /// Writes `name: value\r\n` if the name is a token and the value carries no control character
    /// (`FieldSyntax`), checked on the same bytes that are then copied; otherwise writes nothing and
    /// returns false. One visit of each string instead of one to check and one to write.
    @discardableResult
    public mutating func writeFieldIfValid(_ name: String, _ value: String) -> Bool {
        var name = name
        var value = value
        return name.withUTF8 { n in
            value.withUTF8 { v in
                guard FieldSyntax.isToken(n), FieldSyntax.isValue(v) else { return false }
                writeField(n, v)
                return true
            }
        }
    }

    private mutating func writeField(_ n: UnsafeBufferPointer<UInt8>, _ v: UnsafeBufferPointer<UInt8>) {
        let total = n.count + v.count + 4
        writeWithUnsafeMutableBytes(minimumWritableBytes: total) { out in
            var at = 0
            func put(_ bytes: UnsafeBufferPointer<UInt8>) {
                UnsafeMutableRawBufferPointer(rebasing: out[at..<at + bytes.count]).copyMemory(from: UnsafeRawBufferPointer(bytes))
                at += bytes.count
            }
            put(n)
            out[at] = UInt8(ascii: ":")
            out[at + 1] = UInt8(ascii: " ")
            at += 2
            put(v)
            out[at] = UInt8(ascii: "\r")
            out[at + 1] = UInt8(ascii: "\n")
            return total
        }
    }
}
