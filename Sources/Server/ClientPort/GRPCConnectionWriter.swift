import NIOCore

/// Sits in front of a gRPC connection's HTTP/2 handler (on the plaintext side of TLS) and
/// does two things with what the connection writes:
///
/// - Merges flushes: a flush is held for at most `maxDelay` (100 µs) so that answers finishing
///   close together (calls answered from the Raft apply, one by one) leave in one socket write;
///   `maxBytes` (64 KiB) pending, an unwritable socket, or a close flushes at once.
///   grpc-swift's transport, which this one replaced, did the same with the same defaults.
/// - Follows the HTTP/2 frame headers in the bytes written and tells ``GRPCConnectionManager``
///   when a HEADERS or DATA frame goes out: as in grpc-go (which resets its ping strikes for
///   each data frame it writes), the client's next ping is then not a strike. grpc-go clients
///   send a flow-control (BDP) ping per round trip while a large response arrives.
final class GRPCConnectionWriter: ChannelOutboundHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    static let maxDelay = TimeAmount.microseconds(100)
    static let maxBytes = 64 * 1024

    private let manager: GRPCConnectionManager?
    private var pendingBytes = 0
    private var flushRequested = false
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    // The frame being written: header bytes seen (0..<9), its length and type so far, and the
    // payload bytes still to skip.
    private var headerFill = 0
    private var frameLength = 0
    private var frameType: UInt8 = 0
    private var payloadLeft = 0

    init(manager: GRPCConnectionManager?) {
        self.manager = manager
    }

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
            if scan(buffer) { manager?.wroteHeadersOrData() }
        }
        context.write(data, promise: promise)
        if flushRequested && pendingBytes >= Self.maxBytes { flushNow(context) }
    }

    /// Advances over `buffer`'s frames; true if a HEADERS or DATA frame header was in it.
    private func scan(_ buffer: ByteBuffer) -> Bool {
        var found = false
        buffer.withUnsafeReadableBytes { bytes in
            var i = 0
            let n = bytes.count
            while i < n {
                if payloadLeft > 0 {
                    let skipped = min(payloadLeft, n - i)
                    payloadLeft -= skipped
                    i += skipped
                    continue
                }
                let byte = bytes[i]
                i += 1
                if headerFill < 3 {
                    frameLength = frameLength << 8 | Int(byte)
                } else if headerFill == 3 {
                    frameType = byte
                }
                headerFill += 1
                if headerFill == 9 {
                    // DATA is type 0, HEADERS type 1.
                    if frameType <= 1 { found = true }
                    payloadLeft = frameLength
                    frameLength = 0
                    headerFill = 0
                }
            }
        }
        return found
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
            let writer = bound.value
            writer.timer = nil
            if let context = writer.context, writer.flushRequested { writer.flushNow(context) }
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
