import NIOCore

/// The application protocols a TLS ClientHello offers (ALPN, RFC 7301), read before any TLS is spoken.
///
/// An intercepted tunnel speaks HTTP/1.x only. A client that offers ALPN without either would otherwise
/// finish the handshake with no protocol agreed (BoringSSL's server ignores a failed match) and then
/// send HTTP/2 frames into an HTTP/1.1 reader: a 400 after a successful handshake, which such a client
/// reads as a broken server. RFC 7301 §3.2 says to answer `no_application_protocol` instead.
enum ClientHelloProtocols {
    enum Reading: Equatable {
        /// The first record is not complete yet.
        case needMore
        /// Decided: the names offered (nil: no ALPN extension, or not a ClientHello this reader can see
        /// whole — the TLS stack judges those).
        case offered([String]?)
    }

    /// Reads the first TLS record of `bytes`.
    static func read(_ bytes: ByteBufferView) -> Reading {
        let b = Array(bytes.prefix(5 + 16_384 + 256))
        guard b.count >= 5 else { return b.isEmpty || b[0] == 22 ? .needMore : .offered(nil) }
        guard b[0] == 22 else { return .offered(nil) }  // not a handshake record: the TLS stack refuses it
        let length = Int(b[3]) << 8 | Int(b[4])
        guard b.count >= 5 + length else { return length > 16_384 + 256 ? .offered(nil) : .needMore }
        return .offered(alpn(in: b[5..<(5 + length)]))
    }

    /// The ALPN names of a ClientHello handshake message (as far as this record holds it).
    static func alpn(in record: ArraySlice<UInt8>) -> [String]? {
        var r = Reader(bytes: record)
        guard r.u8() == 1, r.skip(3), r.skip(2 + 32),  // type, length, legacy_version, random
            let session = r.u8(), r.skip(Int(session)),
            let suites = r.u16(), r.skip(suites),
            let compression = r.u8(), r.skip(Int(compression)),
            let extensionsLength = r.u16(), var extensions = r.take(extensionsLength)
        else { return nil }
        while let type = extensions.u16(), let length = extensions.u16(), var data = extensions.take(length) {
            guard type == 16 else { continue }
            guard let listLength = data.u16(), var list = data.take(listLength) else { return nil }
            var names: [String] = []
            while let n = list.u8(), n > 0, let name = list.take(Int(n)) {
                names.append(String(decoding: name.bytes, as: UTF8.self))
            }
            return names
        }
        return nil
    }

    /// Whether an HTTP/1.x reader can serve a client that offered `names`.
    static func speaksHTTP1(_ names: [String]?) -> Bool {
        guard let names, !names.isEmpty else { return true }
        return names.contains("http/1.1") || names.contains("http/1.0")
    }

    private struct Reader {
        var bytes: ArraySlice<UInt8>

        mutating func u8() -> UInt8? { bytes.popFirst() }

        mutating func u16() -> Int? {
            guard bytes.count >= 2 else { return nil }
            defer { bytes = bytes.dropFirst(2) }
            return Int(bytes[bytes.startIndex]) << 8 | Int(bytes[bytes.startIndex + 1])
        }

        mutating func skip(_ n: Int) -> Bool {
            guard bytes.count >= n else { return false }
            bytes = bytes.dropFirst(n)
            return true
        }

        mutating func take(_ n: Int) -> Reader? {
            guard bytes.count >= n else { return nil }
            defer { bytes = bytes.dropFirst(n) }
            return Reader(bytes: bytes.prefix(n))
        }
    }
}

/// Holds an intercepted tunnel's first bytes until its ClientHello's ALPN offer is read; a client that
/// offers only protocols other than HTTP/1.x gets the `no_application_protocol` alert, any other is
/// passed on whole to the ClientHello's server-name check and the TLS handshake.
final class ClientHelloProtocolCheck: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var buffered: ByteBuffer?
    /// Refused: whatever still arrives is dropped, never passed on to the handshake.
    private var refused = false
    private let refuse: (String) -> Void

    /// `refuse`: ends the tunnel with the alert (the `TunnelGuard`'s), given the offered names.
    init(refuse: @escaping (String) -> Void) { self.refuse = refuse }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        var chunk = unwrapInboundIn(data)
        if buffered == nil { buffered = chunk } else { buffered!.writeBuffer(&chunk) }
        guard let all = buffered else { return }
        switch ClientHelloProtocols.read(all.readableBytesView) {
        case .needMore:
            return
        case .offered(let names) where !ClientHelloProtocols.speaksHTTP1(names):
            buffered = nil
            refused = true
            refuse((names ?? []).prefix(8).map { String($0.prefix(32)) }.joined(separator: ","))
        case .offered:
            buffered = nil
            context.fireChannelRead(wrapInboundOut(all))
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        buffered = nil
        context.fireChannelInactive()
    }
}
