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

    /// A recorder of where the loop calls its state machine from: the methods that change the
    /// applied state on the apply thread, the others on the loop thread.
    final class Recorder: AppliedStateMachine, RaftLoopRequests, Sendable {
        let loop = Mutex<RaftLoop?>(nil)
        let calls = Mutex<(onLoop: Int, onApply: Int, elsewhere: Int, leader: Bool)>((0, 0, 0, false))

        private func note(applySide: Bool) {
            guard let loop = loop.withLock({ $0 }) else { return }
            let right = applySide ? (loop.applyOwner?.isCurrent ?? false) : loop.owner.isCurrent
            calls.withLock {
                if !right { $0.elsewhere += 1 } else if applySide { $0.onApply += 1 } else { $0.onLoop += 1 }
            }
        }
        func apply(normal entry: Entry) throws { note(applySide: true) }
        func apply(confChange: ConfChange, entry: Entry, inBackend: Bool) throws { note(applySide: true) }
        func markApplied(_ entry: Entry) throws { note(applySide: true) }
        func appliesQuickly(_ entry: Entry) -> Bool { true }
        func installSnapshot(_ snapshot: Snapshot, dataDir: DataDir, appliedIndex: UInt64) throws -> UInt64 {
            note(applySide: true)
            return snapshot.metadata.index
        }
        func snapshotData() throws -> [UInt8] {
            note(applySide: true)
            return []
        }
        func commitIfDue() throws { note(applySide: true) }
        func leadershipChanged(isLeader: Bool) {
            note(applySide: false)
            calls.withLock { $0.leader = isLeader }
        }
        var autoPromotesLearners: Bool { false }
        func learnerPromotion(_ status: RaftStatus) -> ConfChange? { nil }
        func leaseHousekeeping() { note(applySide: false) }
        func removedByPeer(_ peer: UInt64) throws { note(applySide: true) }
        func proposalFailed(_ data: [UInt8], _ error: EtcdError) {}
        func confChangeFailed(_ id: UInt64, _ error: EtcdError) {}
        func readsDone(_ readers: [UInt64], _ result: Result<Void, any Error>) {}
        func loopFailed(_ error: any Error) {}
    }

    /// A real loop on a real one-member log: it claims its thread while it runs (the test's
    /// thread is not the owner), the applied state is touched only by the holder of the apply
    /// token, the loop calls only its part of the state machine, and both give the ownership up
    /// when they stop.
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
        let recorder = Recorder()
        recorder.loop.withLock { $0 = loop }
        #expect(!loop.owner.isClaimed)
        loop.start(transport: nil, machine: recorder, requests: recorder)
        loop.send(.campaign)
        try await waitUntil {
            loop.withStatus { $0.isLeader } && recorder.calls.withLock { $0.onLoop >= 2 && $0.onApply > 0 }
        }
        #expect(loop.owner.isClaimed)
        #expect(!loop.owner.isCurrent)
        // The loop runs on its own event loop's thread (where the peer connections live).
        #expect(try await loop.eventLoop.submit { loop.owner.isCurrent }.get())
        // Claimed by whoever holds the apply token (the apply thread, or the loop applying a
        // batch itself), never by this thread.
        let applyOwner = try #require(loop.applyOwner)
        #expect(!applyOwner.isCurrent)
        #expect(recorder.calls.withLock { $0.leader })
        await loop.stop()
        #expect(loop.hasExited)
        #expect(!loop.owner.isClaimed)
        #expect(!applyOwner.isClaimed)
        #expect(recorder.calls.withLock { $0.elsewhere } == 0)
        await loop.shutDownEventLoop()
    }
}
