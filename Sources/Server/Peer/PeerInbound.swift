// The receiving side of one inbound `Messages` stream: the checks every batch passes before
// its Raft messages reach the delegate. Shared by grpc-swift's `PeerService.messages` and the
// frame-level `PeerMessagesHandler`, so both refuse exactly the same input.

import EtcdProto
import GRPCCore
import Raft

/// One inbound `Messages` stream's state: the sender it is bound to (by its first accepted
/// batch) and its registration with the transport, which stops `removal` when the sender is
/// removed from the cluster. Used from one task or one event loop at a time.
final class PeerInboundStream {
    let transport: PeerTransport
    /// Stopped when the stream's sender is removed (the stream must then end PERMISSION_DENIED).
    let removal: StopSignal
    private(set) var sender: UInt64?

    init(transport: PeerTransport, removal: StopSignal) {
        self.transport = transport
        self.removal = removal
    }

    /// Checks `batch` (received on the connection gRPC spells `remote` / `local`) and hands
    /// its messages to the delegate. Throws the status that must end the stream: refusal
    /// (FAILED_PRECONDITION), a stopping member (UNAVAILABLE) or undecodable bytes
    /// (INVALID_ARGUMENT, and then nothing of the batch is delivered).
    func receive(_ batch: Swetcd_Peer_MessageBatch, remote: String, local: String) throws {
        if let reason = transport.callRefusal(cluster: batch.clusterID, from: batch.from, to: batch.to,
                                              remote: remote, local: local, call: "messages") {
            throw RPCError(code: .failedPrecondition, message: reason)
        }
        if let sender {
            if sender != batch.from {
                transport.refusals.count("sender_changed")
                throw RPCError(code: .failedPrecondition, message: "one stream carries messages of one member (\(hexID(sender)), not \(hexID(batch.from)))")
            }
        } else {
            guard transport.registerInbound(batch.from, removal) else {
                throw RPCError(code: .failedPrecondition, message: PeerTransport.removedReason(batch.from))
            }
            sender = batch.from
        }
        guard !transport.isStopped else { throw RPCError(code: .unavailable, message: "member is stopping") }
        var delivered: [Raft.Message] = []
        delivered.reserveCapacity(batch.messages.count)
        for bytes in batch.messages {
            let message: Raft.Message
            do {
                message = try Raft.Message(decoding: [UInt8](bytes))
            } catch {
                throw RPCError(code: .invalidArgument, message: "undecodable Raft message from \(hexID(batch.from)): \(error)")
            }
            // Only what a peer may send, and only in its own name.
            guard message.to == transport.localID, message.from == batch.from,
                  !message.type.isLocal, message.type != .snapshot else {
                transport.logger.warning("dropped unexpected Raft message", metadata: [
                    "remote-peer-id": "\(hexID(batch.from))", "type": "\(message.type)",
                    "from": "\(hexID(message.from))", "to": "\(hexID(message.to))",
                ])
                continue
            }
            delivered.append(message)
        }
        if !delivered.isEmpty { transport.delegate.transportReceived(delivered) }
    }

    /// Ends the stream's registration with the transport.
    func close() {
        if let sender {
            transport.unregisterInbound(sender, removal)
            self.sender = nil
        }
    }
}
