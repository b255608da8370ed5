// The receiving side of the peer protocol: identity checks, inbound message batches,
// and storing snapshot bodies before Raft sees the snapshot message.

import Crypto
import EtcdProto
import Foundation
import GRPCCore
import Logging
import Raft

import Glibc

struct PeerService: Swetcd_Peer_Peer.SimpleServiceProtocol {
    static let serverVersion = "swetcd 0.1.0"

    let transport: PeerTransport

    func handshake(request: Swetcd_Peer_Hello, context: ServerContext) async throws -> Swetcd_Peer_HelloReply {
        var reply = Swetcd_Peer_HelloReply()
        reply.protocolVersion = PeerProtocol.version
        reply.serverVersion = Self.serverVersion
        var reason = transport.callRefusal(cluster: request.clusterID, from: request.from, to: request.to,
                                           context: context, call: "handshake")
        if reason == nil && request.protocolVersion != PeerProtocol.version {
            reason = "unsupported peer protocol version \(request.protocolVersion) (this member speaks \(PeerProtocol.version))"
        }
        if reason == nil && transport.isStopped { reason = "member is stopping" }
        if let reason {
            reply.reason = reason
            transport.logger.error("refused peer", metadata: [
                "remote-peer-id": "\(hexID(request.from))", "remote-cluster-id": "\(hexID(request.clusterID))",
                "remote-version": "\(request.serverVersion)", "reason": "\(reason)",
            ])
        } else {
            // The IDs only for an accepted member.
            reply.clusterID = transport.clusterID
            reply.memberID = transport.localID
        }
        reply.accepted = reason == nil
        return reply
    }

    func messages(
        request: RPCAsyncSequence<Swetcd_Peer_MessageBatch, any Error>,
        response: RPCWriter<Swetcd_Peer_MessageBatch>,
        context: ServerContext
    ) async throws {
        // The stream ends when the peer closes it or this transport stops, whichever is first.
        // Stopped when the sender is removed from the cluster.
        let removal = StopSignal()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await receive(request, context: context, removal: removal) }
            group.addTask {
                await transport.stopSignal.wait()
                throw RPCError(code: .unavailable, message: "member is stopping")
            }
            group.addTask {
                await removal.wait()
                throw RPCError(code: .permissionDenied, message: "the sending member was removed from the cluster")
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    private func receive(_ request: RPCAsyncSequence<Swetcd_Peer_MessageBatch, any Error>,
                         context: ServerContext, removal: StopSignal) async throws {
        let inbound = PeerInboundStream(transport: transport, removal: removal)
        defer { inbound.close() }
        for try await batch in request {
            try inbound.receive(batch, remote: context.remotePeer, local: context.localPeer)
        }
    }

    func sendSnapshot(
        request: RPCAsyncSequence<Swetcd_Peer_SnapshotPart, any Error>, context: ServerContext
    ) async throws -> Swetcd_Peer_SnapshotAck {
        var receiver: SnapshotReceiver?
        var ack = Swetcd_Peer_SnapshotAck()
        do {
            for try await part in request {
                switch part.part {
                case .header(let header):
                    guard receiver == nil else { throw SnapshotRefusal("a second header") }
                    if let reason = transport.callRefusal(cluster: header.clusterID, from: header.from, to: header.to,
                                                          context: context, call: "snapshot") {
                        throw SnapshotRefusal(reason)
                    }
                    guard !transport.isStopped else { throw SnapshotRefusal("member is stopping") }
                    receiver = try SnapshotReceiver(header: header, transport: transport)
                case .chunk(let bytes):
                    guard let receiver else { throw SnapshotRefusal("the first part must be the header") }
                    try receiver.write(bytes)
                case nil:
                    throw SnapshotRefusal("empty snapshot part")
                }
            }
            guard let receiver else { throw SnapshotRefusal("the first part must be the header") }
            let path = try receiver.finish()
            ack.accepted = true
            ack.receivedBytes = receiver.received
            transport.logger.info("received snapshot", metadata: [
                "remote-peer-id": "\(hexID(receiver.header.from))", "index": "\(receiver.header.index)",
                "size": "\(receiver.received)", "path": "\(path)",
            ])
            transport.delegate.transportReceivedSnapshot(receiver.message, backendFile: path)
        } catch let refusal as SnapshotRefusal {
            receiver?.abort()
            ack.accepted = false
            ack.receivedBytes = receiver?.received ?? 0
            ack.reason = refusal.reason
            transport.logger.error("refused snapshot", metadata: [
                "index": "\(receiver?.header.index ?? 0)", "reason": "\(refusal.reason)",
            ])
        } catch {
            receiver?.abort()
            throw error
        }
        return ack
    }
}

struct SnapshotRefusal: Error {
    let reason: String
    init(_ reason: String) { self.reason = reason }
}

/// Writes one incoming snapshot body to `<dir>/<index:016x>.snap.db.tmp`, hashing as it
/// goes; `finish` checks size and SHA-256, syncs and renames it to `.snap.db`.
final class SnapshotReceiver {
    let header: Swetcd_Peer_SnapshotHeader
    let message: Raft.Message
    let finalPath: String
    let tempPath: String
    private(set) var received: UInt64 = 0
    private var fd: Int32
    private var hasher = SHA256()
    private let transport: PeerTransport

    init(header: Swetcd_Peer_SnapshotHeader, transport: PeerTransport) throws {
        let message: Raft.Message
        do {
            message = try Raft.Message(decoding: [UInt8](header.message))
        } catch {
            throw SnapshotRefusal("undecodable snapshot message: \(error)")
        }
        guard message.type == .snapshot, message.to == transport.localID, message.from == header.from,
              let snapshot = message.snapshot, snapshot.metadata.index == header.index else {
            throw SnapshotRefusal("the header's Raft message is not a snapshot for this member at index \(header.index)")
        }
        guard header.sha256.count == SHA256.byteCount else {
            throw SnapshotRefusal("the header's SHA-256 has \(header.sha256.count) bytes")
        }
        // A body Raft did not ask for would only sit on disk: refuse it before storing a byte.
        if let reason = transport.delegate.transportSnapshotRefusal(from: header.from, index: header.index) {
            throw SnapshotRefusal(reason)
        }
        if let cap = transport.options.maxSnapshotBytes, header.size > cap {
            throw SnapshotRefusal("snapshot of \(header.size) bytes is over the limit of \(cap) bytes")
        }
        self.header = header
        self.message = message
        let directory = transport.snapshotDirectory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if let free = Self.freeBytes(directory) {
            let margin = transport.options.snapshotDiskMargin
            if header.size > free || free - header.size < margin {
                throw SnapshotRefusal("not enough disk space for a snapshot of \(header.size) bytes (\(free) bytes free, \(margin) kept in reserve)")
            }
        }
        let name = String(header.index, radix: 16)
        let padded = String(repeating: "0", count: max(0, 16 - name.count)) + name
        finalPath = "\(directory)/\(padded).snap.db"
        tempPath = finalPath + ".tmp"
        // Two senders (say, an old and a new leader) must not write the same file at once.
        guard transport.claimIncomingSnapshot(header.index) else {
            throw SnapshotRefusal("a snapshot at index \(header.index) is already being received")
        }
        let fd = open(tempPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            transport.releaseIncomingSnapshot(header.index)
            throw PeerTransportError.snapshotFile("cannot create \(tempPath): \(reason)")
        }
        self.fd = fd
        self.transport = transport
    }

    /// Bytes available to this process on the file system of `path`, or nil if unknown.
    static func freeBytes(_ path: String) -> UInt64? {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { return nil }
        let (bytes, overflow) = UInt64(st.f_bavail).multipliedReportingOverflow(by: UInt64(st.f_frsize))
        return overflow ? .max : bytes
    }

    func write(_ bytes: Data) throws {
        guard received + UInt64(bytes.count) <= header.size else {
            throw SnapshotRefusal("more than the announced \(header.size) bytes")
        }
        hasher.update(data: bytes)
        try bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, base + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw PeerTransportError.snapshotFile("write \(tempPath): \(String(cString: strerror(errno)))")
                }
                offset += n
            }
        }
        received += UInt64(bytes.count)
    }

    /// Verifies and installs the body; returns the final path.
    func finish() throws -> String {
        guard received == header.size else {
            throw SnapshotRefusal("received \(received) of the announced \(header.size) bytes")
        }
        let digest = Data(hasher.finalize())
        guard digest == header.sha256 else { throw SnapshotRefusal("SHA-256 mismatch") }
        guard fsync(fd) == 0 else {
            throw PeerTransportError.snapshotFile("fsync \(tempPath): \(String(cString: strerror(errno)))")
        }
        close(fd)
        fd = -1
        guard rename(tempPath, finalPath) == 0 else {
            throw PeerTransportError.snapshotFile("rename \(tempPath): \(String(cString: strerror(errno)))")
        }
        let directory = (finalPath as NSString).deletingLastPathComponent
        let dirfd = open(directory, O_RDONLY | O_CLOEXEC)
        if dirfd >= 0 {
            _ = fsync(dirfd)
            close(dirfd)
        }
        return finalPath
    }

    /// Drops a partial or refused body.
    func abort() {
        if fd >= 0 {
            close(fd)
            fd = -1
        }
        unlink(tempPath)
    }

    deinit {
        if fd >= 0 { close(fd) }
        transport.releaseIncomingSnapshot(header.index)
    }
}
