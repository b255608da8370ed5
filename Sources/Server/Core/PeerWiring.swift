import Foundation
import Logging
import Raft
import Storage

/// What the peer transport calls: received messages and reports go to the Raft loop's inbox;
/// outgoing snapshots read a consistent backend copy.
final class TransportBridge: RaftTransportDelegate, BackendSnapshotSource {
    let inbox: LoopInbox
    let backend: Backend
    let snapDirectory: String
    let logger: Logger

    init(inbox: LoopInbox, backend: Backend, snapDirectory: String, logger: Logger) {
        self.inbox = inbox
        self.backend = backend
        self.snapDirectory = snapDirectory
        self.logger = logger
    }

    func transportReceived(_ messages: [Message]) { inbox.send(.messages(messages)) }

    /// Installing a leader's backend snapshot is not implemented yet: the message is dropped
    /// (the leader retries) and the file removed, so a follower far behind cannot catch up.
    func transportReceivedSnapshot(_ message: Message, backendFile: String) {
        logger.error("received a snapshot from the leader; installing snapshots is not supported yet",
                     metadata: ["index": "\(message.snapshot?.metadata.index ?? 0)", "from": "\(String(message.from, radix: 16))"])
        try? FileManager.default.removeItem(atPath: backendFile)
    }

    func transportReportUnreachable(_ peer: UInt64) { inbox.send(.reportUnreachable(peer)) }

    func transportReportSnapshot(_ peer: UInt64, success: Bool) { inbox.send(.reportSnapshot(peer, success)) }

    func transportRefusedAsRemoved(by peer: UInt64) { inbox.send(.removedByPeer(peer)) }

    func openBackendSnapshot() throws -> any BackendSnapshotReader {
        let path = snapDirectory + "/outgoing-\(UUID().uuidString).tmp"
        try backend.copy(toPath: path)
        return try FileBackendSnapshotReader(path: path, removeOnClose: true)
    }
}
