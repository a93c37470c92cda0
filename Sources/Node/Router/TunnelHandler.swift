import NIOCore

/// Relays raw bytes to a peer channel (WebSocket and other upgraded connections), with backpressure both ways:
/// while the peer cannot take more, this side stops reading. Either side closing closes the other.
final class TunnelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let peer: Channel
    private let onClose: () -> Void
    private var closed = false

    init(peer: Channel, onClose: @escaping () -> Void = {}) {
        self.peer = peer
        self.onClose = onClose
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        peer.writeAndFlush(buffer, promise: nil)
        if !peer.isWritable {
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
        }
    }

    /// The channel this handler writes *to* has drained: the peer's tunnel may read again.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        peer.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenFailure { _ in }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish()
        peer.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        finish()
        context.close(promise: nil)
        peer.close(promise: nil)
    }

    private func finish() {
        guard !closed else { return }
        closed = true
        onClose()
    }
}
