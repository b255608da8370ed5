import Foundation
import LMDBBackend
import Logging
import Raft
import Synchronization
import EtcdConfig

/// What the peer transport calls: received messages and reports go to the Raft loop;
/// outgoing snapshots read a consistent backend copy.
final class TransportBridge: RaftTransportDelegate, BackendSnapshotSource {
    let loop: RaftLoop
    let backend: Backend
    let snapDirectory: String
    let logger: Logger

    init(loop: RaftLoop, backend: Backend, snapDirectory: String, logger: Logger) {
        self.loop = loop
        self.backend = backend
        self.snapDirectory = snapDirectory
        self.logger = logger
    }

    func transportReceived(_ messages: [Message]) { loop.send(.messages(messages)) }

    /// This member's (leader, commit index) as last reported by its Raft loop; set by the
    /// server once it exists.
    let raftStatus = Mutex<(@Sendable () -> (leader: UInt64, committed: UInt64))?>(nil)

    /// Refuses a snapshot Raft would ignore: from a member that is not the leader this member
    /// knows, or at an index it has already committed.
    func transportSnapshotRefusal(from: UInt64, index: UInt64) -> String? {
        guard let status = raftStatus.withLock({ $0 })?() else { return nil }
        if status.leader != 0 && status.leader != from {
            return "snapshot from \(MemberIdentity.hex(from)), which is not this member's leader (\(MemberIdentity.hex(status.leader)))"
        }
        if index <= status.committed {
            return "snapshot at index \(index) is not ahead of this member's commit index \(status.committed)"
        }
        return nil
    }

    /// The backend file stays at `<snap>/<index:016x>.snap.db` and the message goes to Raft;
    /// when the Ready carrying the snapshot is handled, the loop swaps the file in
    /// (SnapshotInstall.swift). If Raft does not take the snapshot (stale, unasked for, from a
    /// sender that is not the leader), the loop deletes the file at once.
    func transportReceivedSnapshot(_ message: Message, backendFile: String) {
        loop.send(.snapshot(message, file: backendFile))
    }

    func transportReportUnreachable(_ peer: UInt64) { loop.send(.reportUnreachable(peer)) }

    func transportReportSnapshot(_ peer: UInt64, success: Bool) { loop.send(.reportSnapshot(peer, success)) }

    func transportRefusedAsRemoved(by peer: UInt64) { loop.send(.removedByPeer(peer)) }

    func openBackendSnapshot() throws -> any BackendSnapshotReader {
        let path = snapDirectory + "/outgoing-\(UUID().uuidString).tmp"
        try backend.copy(toPath: path)
        return try FileBackendSnapshotReader(path: path, removeOnClose: true)
    }
}
