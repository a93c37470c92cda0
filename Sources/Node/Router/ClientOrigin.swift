import Foundation

/// Who a connection handed from the fast path to the general router comes from, when the socket the
/// general router sees does not say it: a TLS client whose session stays on the fast path reaches the
/// general router over a socket pair, so its address and its verified client certificate travel here.
public struct ClientOrigin: Sendable {
    public var address: String
    public var port: Int
    /// A verified client certificate: subject in OpenSSL's one-line form (HTTPS_DN) and DER (HTTPS_CC).
    public var tlsSubject: String?
    public var tlsCertificateDER: [UInt8]?

    /// A DER certificate as PEM (HTTPS_CC), the one form both router paths send.
    static func pem(der: [UInt8]) -> String {
        let base64 = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
        return "-----BEGIN CERTIFICATE-----\n\(base64)\n-----END CERTIFICATE-----\n"
    }
}
