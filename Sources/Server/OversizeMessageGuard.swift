import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2

/// The first handler of each gRPC stream on the client port: reads the 5-byte prefix of every
/// request message (compression flag, big-endian length) as the bytes arrive and, when a
/// message declares more than `limit` bytes, ends the call at once with etcd's (grpc-go's)
/// status, ResourceExhausted "grpc: received message larger than max (N vs. M)", without
/// buffering the message: its bytes are dropped as they come and the stream is closed.
///
/// The handlers behind it would otherwise keep reading the message up to their own limit
/// (the same value). Compressed requests are refused by ``GRPCStreamBridge``.
final class OversizeMessageGuard: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload
    typealias OutboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let limit: Int
    /// Prefix bytes of the next message seen so far (0...4).
    private var prefix: [UInt8] = []
    /// Bytes of the current message body still to come.
    private var remaining = 0
    /// The server has sent its response headers (a status must then go out as trailers).
    private var sentHeaders = false
    /// The server has ended its side of the stream.
    private var sentEnd = false
    private var rejected = false

    init(limit: Int) {
        self.limit = limit
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if rejected { return }
        guard case .data(let payload) = unwrapInboundIn(data), case .byteBuffer(let bytes) = payload.data else {
            context.fireChannelRead(data)
            return
        }
        if let declared = scan(bytes) {
            reject(context: context, declared: declared)
            return
        }
        context.fireChannelRead(data)
    }

    /// Advances the message framing over `bytes`; returns a declared length over the limit.
    private func scan(_ bytes: ByteBuffer) -> Int? {
        var view = bytes.readableBytesView[...]
        while !view.isEmpty {
            if remaining > 0 {
                let taken = min(remaining, view.count)
                remaining -= taken
                view = view.dropFirst(taken)
                continue
            }
            let needed = 5 - prefix.count
            prefix.append(contentsOf: view.prefix(needed))
            view = view.dropFirst(needed)
            guard prefix.count == 5 else { break }
            let length = Int(prefix[1]) << 24 | Int(prefix[2]) << 16 | Int(prefix[3]) << 8 | Int(prefix[4])
            prefix.removeAll(keepingCapacity: true)
            if length > limit { return length }
            remaining = length
        }
        return nil
    }

    private func reject(context: ChannelHandlerContext, declared: Int) {
        rejected = true
        if !sentEnd {
            let status = RPCError(code: .resourceExhausted, message: "grpc: received message larger than max (\(declared) vs. \(limit))")
            let headers = GRPCFrames.trailers(status, headersSent: sentHeaders)
            sentEnd = true
            context.write(wrapOutboundOut(.headers(.init(headers: headers, endStream: true))), promise: nil)
            context.flush()
        }
        // Closing resets the stream: the client stops sending, the bridge behind us sees the
        // stream end and cancels the call.
        context.close(promise: nil)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if rejected {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        switch unwrapOutboundIn(data) {
        case .headers(let headers):
            sentHeaders = true
            if headers.endStream { sentEnd = true }
        case .data(let data):
            if data.endStream { sentEnd = true }
        default:
            break
        }
        context.write(data, promise: promise)
    }
}
