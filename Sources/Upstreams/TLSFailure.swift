import NIOSSL

/// A TLS failure as an operator reads it: BoringSSL's reason (`CERTIFICATE_VERIFY_FAILED`), or that the
/// certificate names another host — not the nested error values with the library's source paths, and
/// not a bare type name. What failed is the peer's certificate or the handshake; nothing secret is in it.
public enum TLSFailure {
    public static func isTLS(_ error: any Error) -> Bool {
        error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError
    }

    public static func reason(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("failedToValidateHostname") { return "the certificate does not name the host or address" }
        guard let at = text.range(of: "OPENSSL_internal:") else {
            // No BoringSSL reason (a closed connection mid-handshake, an unclean shutdown): the case's name.
            return String(text.prefix { $0 != "(" }.prefix(80))
        }
        return String(text[at.upperBound...].prefix { $0 != " " && $0 != "]" && $0 != ")" }.prefix(80))
    }
}
