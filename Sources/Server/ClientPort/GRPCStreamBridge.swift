import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOHPACK
import NIOHTTP2

/// What all gRPC streams of the client port share: the server's stream handler, the method
/// descriptors by path, the request size limit, and the queue through which calls reach the
/// transport's task group (see ``ClientPortTransport/listen(streamHandler:)``).
final class GRPCCallRunner: Sendable {
    typealias Bytes = GRPCNIOTransportBytes
    typealias Handler = @Sendable (
        RPCStream<RPCAsyncSequence<RPCRequestPart<Bytes>, any Error>, RPCWriter<RPCResponsePart<Bytes>>.Closable>,
        ServerContext
    ) async -> Void

    let handler: Handler
    let descriptors: [String: MethodDescriptor]
    /// The largest request message accepted.
    let limit: Int
    private let calls: AsyncStream<@Sendable () async -> Void>.Continuation

    init(handler: @escaping Handler, descriptors: [String: MethodDescriptor], limit: Int,
         calls: AsyncStream<@Sendable () async -> Void>.Continuation) {
        self.handler = handler
        self.descriptors = descriptors
        self.limit = limit
        self.calls = calls
    }

    /// Queues a call to run as a task; false when the transport has stopped.
    func run(_ call: @escaping @Sendable () async -> Void) -> Bool {
        if case .enqueued = calls.yield(call) { return true }
        return false
    }

    /// The method a request path names: a registered one, else one parsed from the path (the
    /// server then answers UNIMPLEMENTED); nil when the path is not `/service/method`.
    func descriptor(for path: String) -> MethodDescriptor? {
        if let known = descriptors[path] { return known }
        guard path.first == "/", let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return nil }
        let service = path[path.index(after: path.startIndex)..<slash]
        let method = path[path.index(after: slash)...]
        guard !service.isEmpty, !method.isEmpty else { return nil }
        return MethodDescriptor(fullyQualifiedService: String(service), method: String(method))
    }
}

/// The last handler of each gRPC stream on the client port. A stream that reaches it was not
/// taken by the fast paths (``FastStreamRouter``, ``StreamDispatchHandler``): here it is bridged to grpc-swift's server.
///
/// The request head is checked as grpc-swift's transport checks it (content type: HTTP 415;
/// `:path`, `:scheme`, `:method`: INVALID_ARGUMENT; a `grpc-encoding` other than identity:
/// UNIMPLEMENTED with grpc-go's text, as etcd has no decompressor), then the stream is wrapped
/// in a `NIOAsyncChannel` (its inbound buffer gives backpressure: reads, and so HTTP/2 window
/// updates, stop while it is full) and the server's stream handler runs as a task. Request
/// messages are deframed here (5-byte prefix, at most `limit` bytes); response parts are
/// written as gRPC frames. A fast-path stream only pays for this handler's allocation.
final class GRPCStreamBridge: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = RPCRequestPart<GRPCNIOTransportBytes>
    typealias OutboundIn = RPCResponsePart<GRPCNIOTransportBytes>
    typealias OutboundOut = HTTP2Frame.FramePayload

    private enum State {
        /// Before the request headers.
        case idle
        /// The call runs; request messages are forwarded.
        case open
        /// The request was refused, or the call failed: the rest of the request is dropped.
        case refused
    }

    private let runner: GRPCCallRunner
    private var state = State.idle
    private var buffer: ByteBuffer?
    private var requestEnded = false
    /// Response headers sent (a status then goes out as trailers, not trailers-only).
    private var sentHeaders = false
    private var sentStatus = false
    private var cancellation: ServerContext.RPCCancellationHandle?
    private var cancelled = false

    init(runner: GRPCCallRunner) {
        self.runner = runner
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            switch state {
            case .idle:
                start(context: context, headers.headers, endStream: headers.endStream)
            case .open:
                // Request trailers end the request.
                if headers.endStream { endRequest(context: context) }
            case .refused:
                if headers.endStream { requestEnded = true }
            }
        case .data(let frame):
            guard case .byteBuffer(var bytes) = frame.data else { return }
            switch state {
            case .open:
                if buffer == nil {
                    buffer = bytes
                } else {
                    buffer!.writeBuffer(&bytes)
                }
                deframe(context: context)
                if frame.endStream, case .open = state { endRequest(context: context) }
            case .idle, .refused:
                if frame.endStream { requestEnded = true }
            }
        case .rstStream:
            requestEnded = true
            cancel()
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !sentStatus { cancel() }
        context.fireChannelInactive()
    }

    /// Checks the request head and starts the call.
    private func start(context: ChannelHandlerContext, _ headers: HPACKHeaders, endStream: Bool) {
        if endStream { requestEnded = true }
        guard let type = headers.first(name: "content-type"),
              type == "application/grpc" || type == "application/grpc+proto" else {
            refuse(context: context, [":status": "415"])
            return
        }
        guard let path = headers.first(name: ":path") else {
            refuse(context: context, RPCError(code: .invalidArgument, message: "No :path header has been set."))
            return
        }
        guard let scheme = headers.first(name: ":scheme"), scheme == "http" || scheme == "https" else {
            refuse(context: context, RPCError(code: .invalidArgument, message: ":scheme header must be present and one of \"http\" or \"https\"."))
            return
        }
        guard headers.first(name: ":method") == "POST" else {
            refuse(context: context, RPCError(code: .invalidArgument, message: ":method header is expected to be present and have a value of \"POST\"."))
            return
        }
        let encodings = Array(headers.values(forHeader: "grpc-encoding", canonicalForm: true))
        if encodings.count > 1 {
            refuse(context: context, RPCError(code: .internalError, message: "grpc-encoding must contain no more than one value."))
            return
        }
        if let encoding = encodings.first, encoding != "identity" {
            // etcd (grpc-go) registers no decompressor: its answer, word for word.
            refuse(context: context, RPCError(code: .unimplemented, message: "grpc: Decompressor is not installed for grpc-encoding \"\(encoding)\""))
            return
        }
        guard let descriptor = runner.descriptor(for: path) else {
            refuse(context: context, RPCError(code: .unimplemented, message: "Requested RPC isn't implemented by this server."))
            return
        }

        let channel = context.channel
        let stream: NIOAsyncChannel<RPCRequestPart<GRPCNIOTransportBytes>, RPCResponsePart<GRPCNIOTransportBytes>>
        do {
            stream = try NIOAsyncChannel(wrappingChannelSynchronously: channel)
        } catch {
            refuse(context: context, RPCError(code: .internalError, message: "the call could not be started"))
            return
        }
        let remotePeer = ClientCertificateNames.describe(channel.parent?.remoteAddress ?? channel.remoteAddress,
                                                         fallback: channel.parent?.localAddress ?? channel.localAddress)
        let localPeer = ClientCertificateNames.describe(channel.parent?.localAddress ?? channel.localAddress,
                                                        fallback: channel.parent?.remoteAddress ?? channel.remoteAddress)
        let handler = runner.handler
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        let accepted = runner.run {
            try? await stream.executeThenClose { inbound, outbound in
                await withServerContextRPCCancellationHandle { handle in
                    loop.execute { bound.value.setCancellation(handle) }
                    let rpc = RPCStream(
                        descriptor: descriptor,
                        inbound: RPCAsyncSequence(wrapping: inbound),
                        outbound: RPCWriter.Closable(wrapping: GRPCStreamOutbound(writer: outbound, channel: channel))
                    )
                    let context = ServerContext(descriptor: descriptor, remotePeer: remotePeer, localPeer: localPeer,
                                                cancellation: handle)
                    await handler(rpc, context)
                }
                // Let the status reach the stream before executeThenClose closes it (which
                // would drop writes still queued).
                if !Task.isCancelled {
                    try await channel.closeFuture.get()
                }
            }
        }
        guard accepted else {
            refuse(context: context, RPCError(code: .unavailable, message: "the server is stopping"))
            return
        }
        state = .open
        context.fireChannelRead(wrapInboundOut(.metadata(Self.metadata(headers))))
        if endStream { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
    }

    /// Moves complete request messages on; an oversize or compressed message fails the call.
    private func deframe(context: ChannelHandlerContext) {
        guard var bytes = buffer else { return }
        while true {
            do {
                guard let message = try GRPCMessageFraming.next(from: &bytes, limit: runner.limit) else { break }
                context.fireChannelRead(wrapInboundOut(.message(GRPCNIOTransportBytes(message.readableBytesView))))
            } catch {
                fail(context: context, error)
                return
            }
        }
        buffer = bytes.readableBytes == 0 ? nil : bytes
    }

    private func endRequest(context: ChannelHandlerContext) {
        requestEnded = true
        if let rest = buffer, rest.readableBytes > 0 {
            buffer = nil
            fail(context: context, RPCError(code: .internalError, message: "grpc: the request ended inside a message"))
            return
        }
        context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }

    /// Answers a request that is not started with `error`'s status (trailers-only).
    private func refuse(context: ChannelHandlerContext, _ error: RPCError) {
        refuse(context: context, GRPCFrames.trailers(error, headersSent: false))
    }

    private func refuse(context: ChannelHandlerContext, _ trailers: HPACKHeaders) {
        state = .refused
        sentStatus = true
        writeFinal(context: context, trailers)
    }

    /// Ends a running call with `error`'s status: the server's handler sees its request fail
    /// and is cancelled.
    private func fail(context: ChannelHandlerContext, _ error: RPCError) {
        state = .refused
        buffer = nil
        if !sentStatus {
            sentStatus = true
            writeFinal(context: context, GRPCFrames.trailers(error, headersSent: sentHeaders))
        }
        cancel()
        context.fireErrorCaught(error)
    }

    /// Writes the stream's last HEADERS; if the client is still sending, the stream is then
    /// reset (as grpc-go does), so that nothing more is read or held for it.
    private func writeFinal(context: ChannelHandlerContext, _ trailers: HPACKHeaders) {
        if requestEnded {
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
            return
        }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: written)
        let channel = context.channel
        written.futureResult.whenComplete { _ in channel.close(promise: nil) }
    }

    // MARK: Cancellation

    private func setCancellation(_ handle: ServerContext.RPCCancellationHandle) {
        if cancelled {
            handle.cancel()
        } else {
            cancellation = handle
        }
    }

    private func cancel() {
        cancelled = true
        cancellation?.cancel()
        cancellation = nil
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if sentStatus {
            promise?.fail(RPCError(code: .internalError, message: "Can't write, the stream has already closed"))
            return
        }
        switch unwrapOutboundIn(data) {
        case .metadata(let metadata):
            if sentHeaders {
                promise?.fail(RPCError(code: .internalError, message: "response headers were already sent"))
                return
            }
            sentHeaders = true
            var headers = GRPCFrames.responseHeaders()
            Self.add(metadata, to: &headers)
            context.write(wrapOutboundOut(.headers(.init(headers: headers))), promise: promise)
        case .message(let message):
            // GRPCNIOTransportBytes keeps its ByteBuffer to itself: one copy.
            var framed = context.channel.allocator.buffer(capacity: message.count + 5)
            framed.writeInteger(UInt8(0))
            framed.writeInteger(UInt32(message.count))
            message.withUnsafeBytes { _ = framed.writeBytes($0) }
            context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(framed)))), promise: promise)
        case .status(let status, let metadata):
            sentStatus = true
            var trailers = GRPCFrames.trailers(
                status.code == .ok ? nil : RPCError(code: RPCError.Code(status.code) ?? .unknown, message: status.message),
                headersSent: sentHeaders)
            Self.add(metadata, to: &trailers)
            if requestEnded {
                context.write(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: promise)
            } else {
                let written = promise ?? context.eventLoop.makePromise(of: Void.self)
                context.write(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: written)
                let channel = context.channel
                written.futureResult.whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }

    // MARK: Metadata

    /// The request's metadata: every header, `-bin` values base64-decoded (as grpc-swift).
    static func metadata(_ headers: HPACKHeaders) -> Metadata {
        var metadata = Metadata()
        metadata.reserveCapacity(headers.count)
        for (name, value, _) in headers {
            if name.hasSuffix("-bin"), let bytes = base64Decoded(value) {
                metadata.addBinary(bytes, forKey: name)
            } else {
                metadata.addString(value, forKey: name)
            }
        }
        return metadata
    }

    static func add(_ metadata: Metadata, to headers: inout HPACKHeaders) {
        for (key, value) in metadata {
            switch value {
            case .string(let s):
                headers.add(name: key.lowercased(), value: s)
            case .binary(let bytes):
                headers.add(name: key.lowercased(), value: Data(bytes).base64EncodedString())
            }
        }
    }

    /// Base64 with or without padding (gRPC senders may leave it out).
    static func base64Decoded(_ value: String) -> [UInt8]? {
        var padded = value
        let rest = padded.utf8.count % 4
        if rest == 2 { padded += "==" } else if rest == 3 { padded += "=" }
        return Data(base64Encoded: padded).map { Array($0) }
    }
}

/// The response side of a bridged call: writes go through the stream's async channel; an
/// error ending the response resets the stream.
struct GRPCStreamOutbound: ClosableRPCWriterProtocol {
    typealias Element = RPCResponsePart<GRPCNIOTransportBytes>
    let writer: NIOAsyncChannelOutboundWriter<Element>
    let channel: any Channel

    func write(_ element: Element) async throws {
        try await writer.write(element)
    }

    func write(contentsOf elements: some Sequence<Element>) async throws {
        try await writer.write(contentsOf: elements)
    }

    func finish() async {
        writer.finish()
    }

    func finish(throwing error: any Error) async {
        channel.pipeline.fireErrorCaught(error)
        channel.close(promise: nil)
    }
}
