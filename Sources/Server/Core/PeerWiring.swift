import Foundation
import Logging
import Raft
import Storage

/// What the peer transport calls: received messages and reports go to the Raft loop's inbox;
/// outgoing snapshots read a consistent backend copy.
final class TransportBridge: RaftTransportDelegate, BackendSnapshotSource {
    let inbox: LoopInbox
    let machine: StateMachineHolder
    let snapDirectory: String
    let logger: Logger

    init(inbox: LoopInbox, machine: StateMachineHolder, snapDirectory: String, logger: Logger) {
        self.inbox = inbox
        self.machine = machine
        self.snapDirectory = snapDirectory
        self.logger = logger
    }

    func transportReceived(_ messages: [Message]) { inbox.send(.messages(messages)) }

    /// The backend file stays at `<snap>/<index:016x>.snap.db` and the message goes to Raft;
    /// when the Ready carrying the snapshot is handled, the loop swaps the file in
    /// (SnapshotInstall.swift). If Raft does not take the snapshot (stale, unasked for, from a
    /// sender that is not the leader), the loop deletes the file at once.
    func transportReceivedSnapshot(_ message: Message, backendFile: String) {
        inbox.send(.snapshot(message, file: backendFile))
    }

    func transportReportUnreachable(_ peer: UInt64) { inbox.send(.reportUnreachable(peer)) }

    func transportReportSnapshot(_ peer: UInt64, success: Bool) { inbox.send(.reportSnapshot(peer, success)) }

    func transportRefusedAsRemoved(by peer: UInt64) { inbox.send(.removedByPeer(peer)) }

    func openBackendSnapshot() throws -> any BackendSnapshotReader {
        let path = snapDirectory + "/outgoing-\(UUID().uuidString).tmp"
        try machine.value.backend.copy(toPath: path)
        return try FileBackendSnapshotReader(path: path, removeOnClose: true)
    }
}
