import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2
import SwiftProtobuf

/// Unary calls the client port answers without grpc-swift's per-call machinery (see
/// ``FastUnaryHandler``): gets the request message, returns the serialized response message
/// or the error to send as the call's status.
protocol FastUnaryService: Sendable {
    /// Whether calls to `path` (`/package.Service/Method`) are served here.
    func serves(_ path: String) -> Bool
    /// Serves one call. `token` is the call's `token` metadata; `commonName` the verified
    /// client certificate's common name of its connection, if any.
    func call(path: String, message: [UInt8], token: String?, commonName: String?) async -> Result<[UInt8], RPCError>
    /// Starts the call without a task where it can (on the event loop): returns true once
    /// `done` is taken, which then runs exactly once, on any thread; `onLoop` runs work on the
    /// call's event loop. Returns false (without calling `done`) when the call must run as a
    /// task through ``call(path:message:token:commonName:)``.
    func start(path: String, message: [UInt8], token: String?, commonName: String?,
               onLoop: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void,
               done: @escaping @Sendable (Result<[UInt8], RPCError>) -> Void) -> Bool
}

/// The gRPC status a fast-path call's error is sent as: a gRPC status as it is, anything else
/// as etcd's error (``EtcdError/from(_:)``), as the grpc-swift services send it.
func grpcStatus(of error: any Error) -> RPCError {
    if let e = error as? RPCError { return e }
    return EtcdError.from(error).rpcError
}

/// A fast-path request message; one that does not parse gets grpc-go's status and text.
func decodeRequest<M: SwiftProtobuf.Message>(_ bytes: [UInt8]) throws -> M {
    do {
        return try M(serializedBytes: bytes)
    } catch {
        throw RPCError(code: .internalError, message: "grpc: error unmarshalling request: \(error)")
    }
}

/// Sits on each HTTP/2 stream of the client port, behind ``OversizeMessageGuard``. A stream
/// whose request headers name a method of the ``FastUnaryService`` (a plain, uncompressed gRPC
/// POST) is served here: its single request message is collected, the service called, and the
/// response written as gRPC frames (headers, message, trailers). Any other stream is handed on
/// untouched to a ``GRPCStreamBridge`` put behind this one then, which serves it through
/// grpc-swift (a stream served here never gets one: one handler fewer to make per call).
///
/// Why: for the hot unary calls (Range, Put, Txn, DeleteRange) grpc-swift's per-call work (an
/// async channel bridge, a request and a response async sequence, interceptors, a task per
/// call and several hops between the event loop and the task pool) cost more CPU than the
/// call itself (docs/BENCHMARKS.md). Here a write is proposed from the event loop and answered
/// from the Raft loop's apply with one hop back (a read the same way after its barrier, or at
/// once when serializable); only a call that must wait (no leader yet, a refused quota, a
/// large range) runs as a task. The bridge behind never sees such a stream's frames, so it
/// costs no task, async channel or promise there.
final class FastUnaryHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private enum State {
        /// Before the request headers.
        case idle
        /// Serving: collecting the request body of a call to `path`.
        case collecting(path: String, token: String?)
        /// The request is complete and the call runs (or has answered).
        case running
        /// The stream went away.
        case closed
    }

    static let keepAlivePath = "/etcdserverpb.Lease/LeaseKeepAlive"

    private let service: any FastUnaryService
    private let keepAlive: (any FastKeepAliveService)?
    private let limit: Int
    /// Makes the handler a stream not served here goes to.
    private let fallback: () -> any ChannelHandler
    private var state = State.idle
    private var body: ByteBuffer?

    init(service: any FastUnaryService, keepAlive: (any FastKeepAliveService)? = nil, limit: Int,
         fallback: @escaping () -> any ChannelHandler) {
        self.service = service
        self.keepAlive = keepAlive
        self.limit = limit
        self.fallback = fallback
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload = unwrapInboundIn(data)
        switch state {
        case .idle:
            if case .headers(let h) = payload, let keepAlive, Self.isPlainGRPC(h.headers, path: Self.keepAlivePath) {
                // A keep-alive stream: its own handler takes over from here.
                state = .closed
                let sync = context.pipeline.syncOperations
                do {
                    try sync.addHandler(FastKeepAliveHandler(service: keepAlive, limit: limit), position: .after(self))
                } catch {
                    handOn(context: context, data)
                    return
                }
                context.fireChannelRead(data)
                sync.removeHandler(context: context, promise: nil)
                return
            }
            guard case .headers(let h) = payload, let path = Self.servedPath(h.headers, service) else {
                handOn(context: context, data)
                return
            }
            state = .collecting(path: path, token: h.headers.first(name: "token"))
            if h.endStream { finish(context: context) }
        case .collecting:
            switch payload {
            case .data(let d):
                guard case .byteBuffer(var bytes) = d.data else { return }
                if body == nil {
                    body = bytes
                } else {
                    body!.writeBuffer(&bytes)
                }
                if body!.readableBytes > limit + 5 {
                    // The guard in front ends oversize messages first; this bounds the rest.
                    answer(context: context, .failure(RPCError(code: .resourceExhausted, message: "grpc: received message larger than max (\(body!.readableBytes - 5) vs. \(limit))")))
                    return
                }
                if d.endStream { finish(context: context) }
            case .headers(let h):
                // Request trailers end the request.
                if h.endStream { finish(context: context) }
            default:
                break
            }
        case .running, .closed:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        state = .closed
        context.fireChannelInactive()
    }

    /// Not ours: this frame and everything after it go to the bridge to grpc-swift.
    private func handOn(context: ChannelHandlerContext, _ data: NIOAny) {
        let sync = context.pipeline.syncOperations
        do {
            try sync.addHandler(fallback(), position: .after(self))
        } catch {
            // Only a pipeline already torn down refuses a handler: the stream is gone.
            state = .closed
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
        sync.removeHandler(context: context, promise: nil)
    }

    /// The path of a request this handler serves, or nil.
    private static func servedPath(_ headers: HPACKHeaders, _ service: any FastUnaryService) -> String? {
        guard let path = headers.first(name: ":path"), service.serves(path), isPlainGRPC(headers, path: path) else { return nil }
        return path
    }

    /// Whether `headers` open an uncompressed protobuf gRPC call to `path` (also asked by the
    /// peer port's `PeerMessagesHandler`).
    static func isPlainGRPC(_ headers: HPACKHeaders, path: String) -> Bool {
        guard headers.first(name: ":path") == path, headers.first(name: ":method") == "POST",
              let type = headers.first(name: "content-type"), type.hasPrefix("application/grpc"),
              !type.hasPrefix("application/grpc+") || type == "application/grpc+proto" else { return false }
        if let encoding = headers.first(name: "grpc-encoding"), encoding != "identity" { return false }
        return true
    }

    /// The request is complete: checks its framing and runs the call.
    private func finish(context: ChannelHandlerContext) {
        guard case .collecting(let path, let token) = state else { return }
        state = .running
        var bytes = body ?? ByteBuffer()
        body = nil
        let message: [UInt8]
        switch GRPCMessageFraming.unaryMessage(&bytes) {
        case .failure(let error):
            answer(context: context, .failure(error))
            return
        case .success(let m):
            message = m
        }
        let commonName = ClientCertificateNames.shared.name(of: context.channel)
        let service = self.service
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let reply: @Sendable (Result<[UInt8], RPCError>) -> Void = { result in
            if loop.inEventLoop {
                let (handler, context) = bound.value
                handler.answer(context: context, result)
            } else {
                EventLoopHandoff.execute({
                    let (handler, context) = bound.value
                    handler.answer(context: context, result)
                }, on: loop)
            }
        }
        if service.start(path: path, message: message, token: token, commonName: commonName,
                         onLoop: { work in EventLoopHandoff.execute(work, on: loop) }, done: reply) {
            return
        }
        Task {
            reply(await service.call(path: path, message: message, token: token, commonName: commonName))
        }
    }

    /// Writes the call's answer and ends the stream (nothing if the stream is gone).
    private func answer(context: ChannelHandlerContext, _ result: Result<[UInt8], RPCError>) {
        if case .closed = state { return }
        state = .closed
        switch result {
        case .success(let message):
            context.write(wrapOutboundOut(.headers(.init(headers: Self.responseHeaders()))), promise: nil)
            context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(Self.framed(message, context.channel.allocator))))), promise: nil)
            context.write(wrapOutboundOut(.headers(.init(headers: Self.trailers(nil, headersSent: true), endStream: true))), promise: nil)
        case .failure(let error):
            // Trailers-only response.
            context.write(wrapOutboundOut(.headers(.init(headers: Self.trailers(error, headersSent: false), endStream: true))), promise: nil)
        }
        context.flush()
    }

    /// The response headers of a gRPC call.
    static func responseHeaders() -> HPACKHeaders {
        [":status": "200", "content-type": "application/grpc"]
    }

    /// The trailers ending a call with `error`'s status (nil: OK); before any response headers
    /// (`headersSent` false) they carry those too, as a trailers-only response.
    static func trailers(_ error: RPCError?, headersSent: Bool) -> HPACKHeaders {
        var headers = headersSent ? HPACKHeaders() : responseHeaders()
        headers.add(name: "grpc-status", value: String(error?.code.rawValue ?? 0))
        if let error, !error.message.isEmpty {
            headers.add(name: "grpc-message", value: percentEncoded(error.message))
        }
        return headers
    }

    /// `message` as one gRPC length-prefixed message (uncompressed).
    static func framed(_ message: [UInt8], _ allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: message.count + 5)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(message.count))
        buffer.writeBytes(message)
        return buffer
    }

    /// gRPC's grpc-message encoding: bytes outside printable ASCII, and '%', as %XX.
    static func percentEncoded(_ message: String) -> String {
        var out = ""
        out.reserveCapacity(message.utf8.count)
        for byte in message.utf8 {
            if byte >= 0x20 && byte <= 0x7E && byte != UInt8(ascii: "%") {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = Array("0123456789ABCDEF".utf8)
                out.unicodeScalars.append(Unicode.Scalar(UInt8(ascii: "%")))
                out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte >> 4)]))
                out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte & 0xF)]))
            }
        }
        return out
    }
}
