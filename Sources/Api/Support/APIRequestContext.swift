import Foundation
import Hummingbird
import NIOCore

/// The request context of the node's HTTP API: Hummingbird's core storage plus the peer address (for the
/// failed-login throttle).
public struct APIRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// The client as the throttle sees it: the peer address, or the first `X-Forwarded-For` hop when the peer
    /// is a loopback router (the API routed through the failover IP).
    func client(_ request: Request) -> String {
        let peer = remoteAddress?.ipAddress ?? "unknown"
        if peer == "127.0.0.1" || peer == "::1", let forwarded = request.headers.value(named: "x-forwarded-for") {
            return forwarded.split(separator: ",").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? peer
        }
        return peer
    }
}
