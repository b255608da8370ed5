import NIOCore

/// Sits in front of a gRPC connection's HTTP/2 handler and merges flushes: a flush is held for
/// at most `maxDelay` (100 µs) so that answers finishing close together (calls answered from
/// the Raft apply, one by one) leave in one socket write; `maxBytes` (64 KiB) pending, the
/// socket turning unwritable, or a close flushes at once. grpc-swift's transport, which this
/// one replaced, did the same with the same defaults.
final class FlushCoalescer: ChannelOutboundHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    static let maxDelay = TimeAmount.microseconds(100)
    static let maxBytes = 64 * 1024

    private var pendingBytes = 0
    private var flushRequested = false
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .byteBuffer(let buffer) = unwrapOutboundIn(data) {
            pendingBytes += buffer.readableBytes
        }
        context.write(data, promise: promise)
        if flushRequested && pendingBytes >= Self.maxBytes { flushNow(context) }
    }

    func flush(context: ChannelHandlerContext) {
        flushRequested = true
        if pendingBytes >= Self.maxBytes || !context.channel.isWritable {
            flushNow(context)
            return
        }
        guard timer == nil else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: Self.maxDelay) {
            let coalescer = bound.value
            coalescer.timer = nil
            if let context = coalescer.context, coalescer.flushRequested { coalescer.flushNow(context) }
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if flushRequested { flushNow(context) }
        context.close(mode: mode, promise: promise)
    }

    private func flushNow(_ context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        flushRequested = false
        pendingBytes = 0
        context.flush()
    }
}
