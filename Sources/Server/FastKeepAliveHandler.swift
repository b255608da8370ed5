import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2

/// etcd's LeaseKeepAlive stream as ``FastKeepAliveHandler`` serves it.
protocol FastKeepAliveService: Sendable {
    /// Renews the lease of one request message; `done` gets the response message or the
    /// status that ends the stream, exactly once, on any thread.
    func renew(message: [UInt8], done: @escaping @Sendable (Result<[UInt8], RPCError>) -> Void)
    /// Runs `body` once when the server stops (nil: it is stopping already).
    func onStop(_ body: @escaping @Sendable () -> Void) -> UInt64?
    func cancelOnStop(_ id: UInt64)
}

/// Serves one LeaseKeepAlive stream on its HTTP/2 stream (put in place by
/// ``StreamDispatchHandler`` when the request headers name it): each request message renews its
/// lease and gets its response message, in order, one at a time; the client ending its side
/// ends the call with status OK; an error, or the server stopping, ends it with that status.
///
/// Bounds: at most ``maxPending`` requests wait for their turn (a client that sends more
/// without reading answers gets ResourceExhausted), and no request is started while the
/// stream cannot take more output (HTTP/2 flow control), so a client that stops reading holds
/// at most one answer per queued request.
final class FastKeepAliveHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    static let maxPending = 64

    private let service: any FastKeepAliveService
    private let limit: Int
    private var buffer = ByteBuffer()
    private var pending: [[UInt8]] = []
    private var busy = false
    private var requestEnded = false
    private var sentHeaders = false
    private var closed = false
    private var stopRegistration: UInt64?
    private var context: ChannelHandlerContext?

    init(service: any FastKeepAliveService, limit: Int) {
        self.service = service
        self.limit = limit
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        stopRegistration = service.onStop {
            loop.execute { bound.value.end(EtcdError.stopped.rpcError) }
        }
        if stopRegistration == nil { end(EtcdError.stopped.rpcError) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        closed = true
        release()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        release()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        pump()
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if closed { return }
        switch unwrapInboundIn(data) {
        case .headers(let h):
            if h.endStream { requestEnded = true }
        case .data(let d):
            if case .byteBuffer(var bytes) = d.data { buffer.writeBuffer(&bytes) }
            if d.endStream { requestEnded = true }
            if let error = takeMessages() {
                end(error)
                return
            }
        default:
            break
        }
        pump()
    }

    /// Moves complete messages from the buffer to the queue; an error ends the stream.
    private func takeMessages() -> RPCError? {
        while true {
            do {
                guard let message = try GRPCMessageFraming.next(from: &buffer, limit: limit) else { break }
                pending.append(Array(message.readableBytesView))
            } catch {
                return error
            }
            if pending.count > Self.maxPending {
                return RPCError(code: .resourceExhausted, message: "too many keep-alive requests waiting for their answers")
            }
        }
        buffer.discardReadBytes()
        return nil
    }

    /// Starts the next request when none runs and the stream can take its answer; ends the call
    /// once the client has ended its side and everything is answered.
    private func pump() {
        guard !closed, !busy, let context else { return }
        if pending.isEmpty {
            if requestEnded { end(nil) }
            return
        }
        guard context.channel.isWritable else { return }
        busy = true
        let message = pending.removeFirst()
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        service.renew(message: message) { result in
            if loop.inEventLoop {
                bound.value.answered(result)
            } else {
                loop.execute { bound.value.answered(result) }
            }
        }
    }

    private func answered(_ result: Result<[UInt8], RPCError>) {
        busy = false
        guard !closed, let context else { return }
        switch result {
        case .success(let message):
            if !sentHeaders {
                sentHeaders = true
                context.write(wrapOutboundOut(.headers(.init(headers: GRPCFrames.responseHeaders()))), promise: nil)
            }
            let out = GRPCFrames.framed(message, context.channel.allocator)
            context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(out)))), promise: nil)
            pump()
        case .failure(let error):
            end(error)
        }
    }

    /// Ends the call with `error`'s status (nil: OK) and closes the stream.
    private func end(_ error: RPCError?) {
        guard !closed, let context else { return }
        closed = true
        release()
        let trailers = GRPCFrames.trailers(error, headersSent: sentHeaders)
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
        // The client may still be sending: closing resets its side once our side has ended.
        if !requestEnded || error != nil { context.close(promise: nil) }
    }

    private func release() {
        if let id = stopRegistration {
            stopRegistration = nil
            service.cancelOnStop(id)
        }
    }
}
