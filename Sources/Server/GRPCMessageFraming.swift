import GRPCCore
import NIOCore

/// gRPC's message framing on an uncompressed call: a 1-byte compressed flag and a 4-byte
/// big-endian length before each message. Shared by the handlers that read request messages
/// off HTTP/2 streams themselves (fast keep-alives, peer `Messages` streams, the bridge to
/// grpc-swift).
enum GRPCMessageFraming {
    /// Takes the next complete message off `buffer`, or nil while it has not all arrived.
    /// Throws grpc-go's error for a compressed message, and for one longer than `limit` as
    /// soon as its prefix shows it (before its bytes are buffered).
    static func next(from buffer: inout ByteBuffer, limit: Int) throws(RPCError) -> ByteBuffer? {
        let start = buffer.readerIndex
        guard let flag = buffer.getInteger(at: start, as: UInt8.self),
              let length = buffer.getInteger(at: start + 1, as: UInt32.self) else { return nil }
        if flag != 0 {
            throw RPCError(code: .internalError, message: "grpc: compressed flag set with identity or empty encoding")
        }
        if Int(length) > limit {
            throw RPCError(code: .resourceExhausted, message: "grpc: received message larger than max (\(length) vs. \(limit))")
        }
        guard buffer.readableBytes >= 5 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 5)
        return buffer.readSlice(length: Int(length))
    }

    /// The single message of a complete unary request body, or the status to end the call
    /// with when the body is not exactly one uncompressed message (grpc-go's texts).
    static func unaryMessage(_ bytes: inout ByteBuffer) -> Result<[UInt8], RPCError> {
        guard let flag = bytes.readInteger(as: UInt8.self), let length = bytes.readInteger(as: UInt32.self) else {
            return .failure(RPCError(code: .internalError, message: "grpc: the request has no message"))
        }
        guard flag == 0 else {
            return .failure(RPCError(code: .internalError, message: "grpc: compressed flag set with identity or empty encoding"))
        }
        guard Int(length) == bytes.readableBytes, let message = bytes.readBytes(length: Int(length)) else {
            return .failure(RPCError(code: .internalError, message: "grpc: a unary request must carry exactly one message"))
        }
        return .success(message)
    }
}
