import Dispatch
import Foundation
import Logging
import Raft
import ServerFormat
import Storage
import Synchronization
import Testing
@testable import Server

/// The loop-only state check: `ThreadOwner` knows its owning thread, and the Raft loop claims
/// its own thread for the state only it may touch.
@Suite struct RaftLoopOwnershipTests {
    @Test func threadOwnerIdentifiesTheOwningThread() throws {
        let owner = ThreadOwner()
        #expect(!owner.isClaimed)
        #expect(!owner.isCurrent)
        let seen = Mutex<[String: Bool]>([:])
        let claimed = DispatchSemaphore(value: 0)
        let checked = DispatchSemaphore(value: 0)
        let released = DispatchSemaphore(value: 0)
        let thread = Thread {
            owner.claim()
            seen.withLock { $0["current after claim"] = owner.isCurrent }
            claimed.signal()
            // Wait until the other thread has looked, then end the ownership.
            _ = checked.wait(timeout: .now() + 10)
            seen.withLock { $0["current before release"] = owner.isCurrent }
            owner.release()
            seen.withLock { $0["current after release"] = owner.isCurrent }
            released.signal()
        }
        thread.start()
        try #require(claimed.wait(timeout: .now() + 10) == .success)
        #expect(owner.isClaimed)
        #expect(!owner.isCurrent, "another thread is not the owner")
        checked.signal()
        try #require(released.wait(timeout: .now() + 10) == .success)
        #expect(!owner.isClaimed)
        #expect(seen.withLock { $0 } == [
            "current after claim": true, "current before release": true, "current after release": false,
        ])
    }

    /// A recorder of where the loop calls its state machine from.
    final class Recorder: AppliedStateMachine, RaftLoopRequests, Sendable {
        let owner: ThreadOwner
        let calls = Mutex<(onLoop: Int, offLoop: Int, leader: Bool)>((0, 0, false))
        init(owner: ThreadOwner) { self.owner = owner }

        private func note() {
            let current = owner.isCurrent
            calls.withLock { if current { $0.onLoop += 1 } else { $0.offLoop += 1 } }
        }
        func apply(normal entry: Entry) throws { note() }
        func apply(confChange: ConfChange, entry: Entry, inBackend: Bool) throws { note() }
        func markApplied(_ entry: Entry) throws { note() }
        func installSnapshot(_ snapshot: Snapshot, dataDir: DataDir, appliedIndex: UInt64) throws -> UInt64 {
            note()
            return snapshot.metadata.index
        }
        func snapshotData() throws -> [UInt8] {
            note()
            return []
        }
        func commitIfDue() throws { note() }
        func leadershipChanged(isLeader: Bool) {
            note()
            calls.withLock { $0.leader = isLeader }
        }
        var autoPromotesLearners: Bool { false }
        func learnerPromotion(_ status: RaftStatus) -> ConfChange? { nil }
        func leaseHousekeeping() { note() }
        func removedByPeer(_ peer: UInt64) throws { note() }
        func proposalFailed(_ data: [UInt8], _ error: EtcdError) {}
        func confChangeFailed(_ id: UInt64, _ error: EtcdError) {}
        func readsDone(_ readers: [UInt64], _ result: Result<Void, any Error>) {}
        func loopFailed(_ error: any Error) {}
    }

    /// A real loop on a real one-member log: it claims its thread while it runs (the test's
    /// thread is not the owner), calls the state machine only from that thread, and gives
    /// the ownership up when it stops.
    @Test func loopOwnsItsThreadWhileRunning() async throws {
        let path = NSTemporaryDirectory() + "swetcd-raftloop-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let storage = try DurableRaftStorage.open(DataDir(path: path), newMember: WALMetadata(memberID: 1, clusterID: 7))
        try BootstrapLog.write(storage, members: [MemberRecord(id: 1, name: "n1", peerURLs: ["http://127.0.0.1:2380"])])
        var config = RaftConfig(id: 1)
        config.electionTick = 10
        config.heartbeatTick = 1
        let node = try RaftNode(config: config, storage: storage.raftStorage)
        var logger = Logger(label: "test")
        logger.logLevel = .error
        let loop = RaftLoop(node: node, storage: storage, memberID: 1, heartbeat: .milliseconds(10),
                            snapshotCount: 10_000, appliedIndex: 0, snapshotIndex: 0, consistentIndex: 0,
                            status: LoopStatus(), logger: logger, metrics: ServerMetrics(memberID: 1))
        let recorder = Recorder(owner: loop.owner)
        #expect(!loop.owner.isClaimed)
        loop.start(transport: nil, machine: recorder, requests: recorder)
        loop.send(.campaign)
        try await waitUntil { loop.withStatus { $0.isLeader } && recorder.calls.withLock { $0.onLoop } > 3 }
        #expect(loop.owner.isClaimed)
        #expect(!loop.owner.isCurrent)
        #expect(recorder.calls.withLock { $0.leader })
        await loop.stop()
        #expect(loop.hasExited)
        #expect(!loop.owner.isClaimed)
        #expect(recorder.calls.withLock { $0.offLoop } == 0)
    }
}
