// The receiving end of `swetcd.peer.Peer/Messages` at the HTTP/2 frame level: each batch is
// checked and its Raft messages handed to the Raft loop's inbox from the event loop, without
// grpc-swift's async sequence and a task in between.

import EtcdProto
import Foundation
import GRPCCore
import NIOCore
import NIOHTTP2
import SwiftProtobuf

/// Sits first on every HTTP/2 stream of the peer port (added through grpc-swift's
/// `onAcceptHTTP2Stream` hook). A stream whose request headers open a plain (uncompressed
/// protobuf) gRPC call to `Messages` is served here; any other stream is handed on untouched
/// to grpc-swift's handler behind this one (handshake, snapshots, lease calls...), and so is a
/// `Messages` call grpc-swift would decompress.
///
/// Served streams get what `PeerService.messages` gives them (the checks are shared through
/// ``PeerInboundStream``): response headers at once, every batch checked before any of its
/// messages is delivered, the call ended with FAILED_PRECONDITION (refusal), INVALID_ARGUMENT
/// (undecodable bytes), PERMISSION_DENIED (the sender was removed), UNAVAILABLE (the
/// transport stops), RESOURCE_EXHAUSTED (a message over `limit`), and OK when the sender ends
/// its side. Bound: one stream holds at most one incomplete message (up to `limit` bytes plus
/// one frame); complete batches are delivered as they are read, never queued.
final class PeerMessagesHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    static let path = "/swetcd.peer.Peer/Messages"

    private enum State {
        /// Before the request headers.
        case idle
        /// Serving a Messages call.
        case serving
        /// Ended (or handed on).
        case closed
    }

    private let transport: PeerTransport
    private let limit: Int
    private var state = State.idle
    private var buffer = ByteBuffer()
    private var inbound: PeerInboundStream?
    private var remote = ""
    private var local = ""
    private var requestEnded = false
    private var registrations: [(signal: StopSignal, key: Int)] = []
    private var context: ChannelHandlerContext?

    /// `limit`: the largest message (one encoded batch) accepted.
    init(transport: PeerTransport, limit: Int) {
        self.transport = transport
        self.limit = limit
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        release()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .serving = state { state = .closed }
        release()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload = unwrapInboundIn(data)
        switch state {
        case .idle:
            guard case .headers(let h) = payload, GRPCFrames.isPlainGRPC(h.headers, path: Self.path) else {
                state = .closed
                context.fireChannelRead(data)
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                return
            }
            start(context: context)
            if h.endStream {
                requestEnded = true
                end(nil)
            }
        case .serving:
            switch payload {
            case .data(let d):
                if case .byteBuffer(var bytes) = d.data { buffer.writeBuffer(&bytes) }
                if d.endStream { requestEnded = true }
                if let error = takeBatches() {
                    end(error)
                    return
                }
                if requestEnded { end(buffer.readableBytes == 0 ? nil : Self.truncated) }
            case .headers(let h):
                // Request trailers end the request.
                if h.endStream {
                    requestEnded = true
                    end(buffer.readableBytes == 0 ? nil : Self.truncated)
                }
            default:
                break
            }
        case .closed:
            break
        }
    }

    static let truncated = RPCError(code: .internalError, message: "the request ended inside a message")

    /// Takes the call: answers its headers and ends it when the transport stops.
    private func start(context: ChannelHandlerContext) {
        state = .serving
        transport.frameLevelStreams.add(1, ordering: .relaxed)
        let channel = context.channel
        remote = ClientCertificateNames.describe(channel.remoteAddress, fallback: channel.localAddress)
        local = ClientCertificateNames.describe(channel.localAddress, fallback: channel.remoteAddress)
        let removal = StopSignal()
        inbound = PeerInboundStream(transport: transport, removal: removal)
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: GRPCFrames.responseHeaders()))), promise: nil)
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let stopping = RPCError(code: .unavailable, message: "member is stopping")
        let removed = RPCError(code: .permissionDenied, message: "the sending member was removed from the cluster")
        for (signal, error) in [(transport.stopSignal, stopping), (removal, removed)] {
            guard let key = signal.onStop({ loop.execute { bound.value.end(error) } }) else {
                end(error)
                return
            }
            registrations.append((signal, key))
        }
    }

    /// Checks and delivers every complete batch in the buffer; returns the status that must
    /// end the call, if any.
    private func takeBatches() -> RPCError? {
        while true {
            let message: ByteBuffer
            do {
                guard let next = try GRPCMessageFraming.next(from: &buffer, limit: limit) else { break }
                message = next
            } catch {
                return error
            }
            let batch: Swetcd_Peer_MessageBatch
            do {
                batch = try Swetcd_Peer_MessageBatch(serializedBytes: Array(message.readableBytesView))
            } catch {
                return RPCError(code: .invalidArgument, message: "Can't deserialize to message of type \(Swetcd_Peer_MessageBatch.self).")
            }
            do {
                try inbound?.receive(batch, remote: remote, local: local)
            } catch let error as RPCError {
                return error
            } catch {
                return RPCError(code: .internalError, message: "\(error)")
            }
        }
        if buffer.readerIndex > 0 && buffer.readableBytes == 0 {
            buffer.clear()
        } else if buffer.readerIndex >= 64 << 10 {
            buffer.discardReadBytes()
        }
        return nil
    }

    /// Ends the call with `error`'s status (nil: OK) and closes the stream.
    private func end(_ error: RPCError?) {
        guard case .serving = state, let context else { return }
        state = .closed
        release()
        buffer = ByteBuffer()
        let trailers = GRPCFrames.trailers(error, headersSent: true)
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
        // The sender may still be sending: closing resets its side once ours has ended.
        if !requestEnded || error != nil { context.close(promise: nil) }
    }

    private func release() {
        for registration in registrations { registration.signal.cancelOnStop(registration.key) }
        registrations = []
        inbound?.close()
        inbound = nil
    }
}
