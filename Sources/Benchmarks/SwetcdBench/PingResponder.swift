import NIOCore
import NIOHTTP2

/// Splits an inbound HTTP/2 byte stream (server to client, after the handshake) into what
/// passes on to the HTTP/2 handler and the server's PING requests, which are taken out.
///
/// Why: grpc-go servers (etcd) send a PING to estimate the bandwidth-delay product after
/// nearly every burst of request data they receive, so a client doing unary calls one after
/// another gets about one PING per call. NIO's HTTP/2 handler counts every inbound PING as a
/// control frame and closes the connection after 200 in 30 s (its denial-of-service limit,
/// which grpc-swift does not let a client change): etcd then logs "transport is closing" and
/// the client's calls fail with "Stream unexpectedly closed". Answering the PINGs before they
/// reach NIO keeps the server's estimator working and the connection open.
struct PingFrameFilter {
    /// What came out of one read.
    struct Output {
        /// Bytes for the HTTP/2 handler, in order (slices of the input where possible).
        var forward: [ByteBuffer] = []
        /// The 8-byte payloads of PING frames to acknowledge.
        var pings: [UInt64] = []
    }

    static let frameHeaderSize = 9
    static let pingType: UInt8 = 0x6
    static let ackFlag: UInt8 = 0x1

    /// Bytes left of the frame being passed through.
    private var remainingInFrame = 0
    /// A frame header (and a PING's payload) split across reads.
    private var partial = ByteBuffer()

    init() {}

    mutating func process(_ input: ByteBuffer) -> Output {
        var input = input
        var out = Output()
        while input.readableBytes > 0 {
            if remainingInFrame > 0 {
                let n = min(remainingInFrame, input.readableBytes)
                if let slice = input.readSlice(length: n) { out.forward.append(slice) }
                remainingInFrame -= n
                continue
            }
            // At a frame boundary: the 9-byte header, and for a PING its 8-byte payload.
            let wanted = partial.readableBytes < Self.frameHeaderSize
                ? Self.frameHeaderSize : Self.frameHeaderSize + 8
            let take = min(wanted - partial.readableBytes, input.readableBytes)
            if var slice = input.readSlice(length: take) { partial.writeBuffer(&slice) }
            guard partial.readableBytes >= Self.frameHeaderSize else { break }
            let start = partial.readerIndex
            guard let b0 = partial.getInteger(at: start, as: UInt8.self),
                  let b1 = partial.getInteger(at: start + 1, as: UInt8.self),
                  let b2 = partial.getInteger(at: start + 2, as: UInt8.self),
                  let type = partial.getInteger(at: start + 3, as: UInt8.self),
                  let flags = partial.getInteger(at: start + 4, as: UInt8.self) else { break }
            let length = Int(b0) << 16 | Int(b1) << 8 | Int(b2)
            let isPingRequest = type == Self.pingType && flags & Self.ackFlag == 0 && length == 8
            if isPingRequest {
                guard partial.readableBytes >= Self.frameHeaderSize + 8 else { continue }
                if let payload = partial.getInteger(at: start + Self.frameHeaderSize, as: UInt64.self) {
                    out.pings.append(payload)
                }
                partial.clear()
            } else {
                // Anything else (a malformed PING included) is the HTTP/2 handler's business.
                out.forward.append(partial)
                partial = ByteBuffer()
                remainingInFrame = length
            }
        }
        return out
    }

    /// A PING frame with the ACK flag carrying `payload`, on stream 0.
    static func ack(_ payload: UInt64, allocator: ByteBufferAllocator) -> ByteBuffer {
        var b = allocator.buffer(capacity: frameHeaderSize + 8)
        b.writeInteger(UInt8(0)); b.writeInteger(UInt8(0)); b.writeInteger(UInt8(8))
        b.writeInteger(pingType)
        b.writeInteger(ackFlag)
        b.writeInteger(UInt32(0))
        b.writeInteger(payload)
        return b
    }
}

/// Sits between the socket (or TLS) and NIO's HTTP/2 handler on a client connection and
/// acknowledges the server's PINGs itself (see ``PingFrameFilter``).
final class PingResponder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var filter = PingFrameFilter()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let out = filter.process(unwrapInboundIn(data))
        if !out.pings.isEmpty {
            for payload in out.pings {
                context.write(wrapOutboundOut(PingFrameFilter.ack(payload, allocator: context.channel.allocator)),
                              promise: nil)
            }
            context.flush()
        }
        for bytes in out.forward { context.fireChannelRead(wrapInboundOut(bytes)) }
    }

    /// Installs a responder in front of the HTTP/2 handler of a new client connection.
    static func install(on channel: any Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            let ops = channel.pipeline.syncOperations
            let http2 = try ops.handler(type: NIOHTTP2Handler.self)
            try ops.addHandler(PingResponder(), position: .before(http2))
        }
    }
}
