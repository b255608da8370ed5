import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2
import SwiftProtobuf

/// Unary calls the client port answers without grpc-swift's per-call machinery (see
/// ``FastStreamRouter``): gets the request message, returns the serialized response message
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

/// gRPC's frames as the client port's own handlers write them (the fast paths, the bridge,
/// the oversize guard, the peer port's streams).
enum GRPCFrames {
    static let keepAlivePath = "/etcdserverpb.Lease/LeaseKeepAlive"

    /// Whether `headers` open an uncompressed protobuf gRPC call to `path` (also asked by the
    /// peer port's `PeerMessagesHandler`).
    static func isPlainGRPC(_ headers: HPACKHeaders, path: String) -> Bool {
        guard headers.first(name: ":path") == path, headers.first(name: ":method") == "POST",
              let type = headers.first(name: "content-type"), type.hasPrefix("application/grpc"),
              !type.hasPrefix("application/grpc+") || type == "application/grpc+proto" else { return false }
        if let encoding = headers.first(name: "grpc-encoding"), encoding != "identity" { return false }
        return true
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

/// The first handler of a client-port stream channel, behind ``OversizeMessageGuard``. The hot
/// unary calls never get a stream channel (``FastStreamRouter`` serves them on the
/// connection); of the streams that do, a LeaseKeepAlive stream (a plain, uncompressed gRPC
/// POST) goes to a ``FastKeepAliveHandler`` and any other to the handler `fallback` makes (the
/// bridge to grpc-swift). This handler then leaves the pipeline.
final class StreamDispatchHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload

    private let keepAlive: (any FastKeepAliveService)?
    private let limit: Int
    /// Makes the handler a stream not served here goes to.
    private let fallback: () -> any ChannelHandler

    init(keepAlive: (any FastKeepAliveService)?, limit: Int, fallback: @escaping () -> any ChannelHandler) {
        self.keepAlive = keepAlive
        self.limit = limit
        self.fallback = fallback
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let sync = context.pipeline.syncOperations
        if case .headers(let h) = unwrapInboundIn(data), let keepAlive,
           GRPCFrames.isPlainGRPC(h.headers, path: GRPCFrames.keepAlivePath),
           (try? sync.addHandler(FastKeepAliveHandler(service: keepAlive, limit: limit), position: .after(self))) != nil {
            context.fireChannelRead(data)
            sync.removeHandler(context: context, promise: nil)
            return
        }
        do {
            try sync.addHandler(fallback(), position: .after(self))
        } catch {
            // Only a pipeline already torn down refuses a handler: the stream is gone.
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
        sync.removeHandler(context: context, promise: nil)
    }
}
