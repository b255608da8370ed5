import Testing
@testable import Raft

@Suite struct SnapshotTests {
    @Test func laggingFollowerCatchesUpFromSnapshot() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(3)
        for i in 0..<10 { try c[1].propose([UInt8(i)]) }
        try c.settle()
        let s1 = c.storages[1]!
        let idx = c[1].log.applied
        try s1.createSnapshot(index: idx, confState: c[1].status.confState, data: [0xAB])
        try s1.compact(idx)
        c.heal()
        try c.tickAll(3)
        let snapMsgs = c.delivered.filter { $0.type == .snapshot && $0.to == 3 }
        #expect(snapMsgs.count == 1)
        #expect(try c.storages[3]!.snapshot().data == [0xAB])
        // The snapshot is in flight until reported; report success and it resumes.
        try c[1].reportSnapshot(3, success: true)
        try c.tickAll(3)
        #expect(c[3].log.committed == c[1].log.committed)
        #expect(c[3].status.applied == c[1].status.applied)
        #expect(c[1].progress[3]!.state != .snapshot)
        try c[1].propose([1])
        try c.settle()
        #expect(c[1].progress[3]!.state == .replicate)
    }

    @Test func failedSnapshotFallsBackToProbe() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(3)
        for i in 0..<5 { try c[1].propose([UInt8(i)]) }
        try c.settle()
        try c.storages[1]!.createSnapshot(index: 6, confState: c[1].status.confState, data: [])
        try c.storages[1]!.compact(6)
        try c[1].reportUnreachable(3)
        c.heal()
        c.dropIf = { $0.type == .snapshot } // the snapshot gets lost
        try c.tick(1)
        try c.settle()
        #expect(c[1].progress[3]!.state == .snapshot)
        #expect(c.dropped.contains { $0.type == .snapshot && $0.to == 3 })
        try c[1].reportSnapshot(3, success: false)
        #expect(c[1].progress[3]!.state == .probe)
        #expect(c[1].progress[3]!.pendingSnapshot == 0)
        #expect(c[1].progress[3]!.isPaused) // waits for a heartbeat answer
        c.dropIf = nil
        try c.tickAll(3)
        #expect(c[3].log.committed == c[1].log.committed)
    }

    @Test func restoreReplacesLogAndConfiguration() throws {
        let n = try ElectionTestsSupport.follower(log: [Entry(term: 1, index: 1)])
        let snap = Snapshot(metadata: SnapshotMetadata(index: 10, term: 2, confState: ConfState(voters: [1, 2], learners: [5])),
                            data: [1])
        try n.step(Message(type: .snapshot, to: 1, from: 2, term: 2, snapshot: snap))
        #expect(n.log.committed == 10)
        #expect(n.status.confState == snap.metadata.confState)
        let rd = try n.ready()
        #expect(rd.snapshot == snap)
        #expect(rd.messages.first?.index == 10)
        try n.advance(rd)
        #expect(n.status.applied == 10)
        // An older snapshot is refused.
        try n.step(Message(type: .snapshot, to: 1, from: 2, term: 2, snapshot: Snapshot(metadata: SnapshotMetadata(index: 5, term: 2))))
        #expect(try n.ready().snapshot == nil)
    }
}

@Suite struct ReadIndexTests {
    @Test func leaderConfirmsLeadershipBeforeAnswering() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[1].propose([1])
        try c.settle()
        c.isolate(1)
        try c[1].readIndex(context: [1])
        try c.settle()
        #expect(c.readStates[1, default: []].isEmpty)
        c.heal()
        try c.tick(1)
        try c.settle()
        #expect(c.readStates[1] == [ReadState(index: c[1].log.committed, context: [1])])
    }

    @Test func followerReadIsForwarded() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[1].propose([1])
        try c.settle()
        try c[2].readIndex(context: [9])
        try c.settle()
        #expect(c.readStates[2] == [ReadState(index: c[1].log.committed, context: [9])])
        #expect(c.readStates[1, default: []].isEmpty)
    }

    @Test func readWithoutLeaderIsDropped() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        #expect(throws: RaftError.proposalDropped) { try c[2].readIndex(context: [1]) }
    }

    @Test func queuedReadIsAnsweredAfterFirstCommitOfTerm() throws {
        let s = MemoryStorage()
        try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(confState: ConfState(voters: [1, 2, 3]))))
        try s.append([Entry(term: 1, index: 1), Entry(term: 1, index: 2)])
        s.setHardState(HardState(term: 1, commit: 1))
        var cfg = RaftConfig(id: 1)
        cfg.preVote = false
        let n = try RaftNode(config: cfg, storage: s)
        try n.campaign()
        try n.step(Message(type: .requestVoteResponse, to: 1, from: 2, term: 2))
        #expect(n.role == .leader)
        try n.readIndex(context: [1])
        // Persisted and acknowledged (the leader's own entries count from `advance`).
        func persist() throws -> Ready {
            let rd = try n.ready()
            try s.append(rd.entries)
            if let hs = rd.hardState { s.setHardState(hs) }
            try n.advance(rd)
            return rd
        }
        _ = try persist()
        // The empty entry (index 3) commits: the read is then confirmed by heartbeat.
        try n.step(Message(type: .appendResponse, to: 1, from: 2, term: 2, index: 3))
        #expect(n.log.committed == 3)
        let hb = try persist().messages.filter { $0.type == .heartbeat }
        let round = try #require(hb.first { !$0.context.isEmpty }?.context)
        #expect(round != [1]) // heartbeats carry the leader's round, not client bytes
        try n.step(Message(type: .heartbeatResponse, to: 1, from: 3, term: 2, context: round))
        #expect(try persist().readStates == [ReadState(index: 3, context: [1])])
    }
}

@Suite struct TransferTests {
    @Test func transferToUpToDateFollower() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[1].transferLeadership(to: 2)
        try c.settle()
        #expect(c[2].role == .leader)
        #expect(c[1].role == .follower && c[1].softState.lead == 2)
    }

    @Test func transferToLaggingFollowerCatchesUpFirstAndBlocksProposals() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(3)
        for i in 0..<5 { try c[1].propose([UInt8(i)]) }
        try c.settle()
        try c[1].transferLeadership(to: 3)
        #expect(c[1].status.leadTransferee == 3)
        #expect(throws: RaftError.proposalDropped) { try c[1].propose([9]) }
        c.heal()
        try c.tickAll(2)
        #expect(c[3].role == .leader)
        #expect(c.appliedData(3).count == 5)
    }

    @Test func transferAbortsAfterElectionTimeout() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(3)
        try c[1].transferLeadership(to: 3)
        try c.tick(1, 10)
        #expect(c[1].status.leadTransferee == 0)
        try c[1].propose([1])
    }

    @Test func transferToLearnerOrSelfIsIgnored() throws {
        let c = try TestCluster(voters: [1, 2], learners: [3])
        try c.elect(1)
        try c[1].transferLeadership(to: 3)
        try c[1].transferLeadership(to: 1)
        try c.settle()
        #expect(c[1].role == .leader && c[1].status.leadTransferee == 0)
    }

    @Test func followerForwardsTransferRequest() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[2].transferLeadership(to: 3)
        try c.settle()
        #expect(c[3].role == .leader)
    }
}

@Suite struct ForwardingTests {
    @Test func followerForwardsProposals() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[2].propose([5])
        try c.settle()
        try c.tickAll(1)
        #expect(c.appliedData(3) == [[5]])
    }

    @Test func forwardingCanBeDisabled() throws {
        let c = try TestCluster(voters: [1, 2, 3]) { $0.disableProposalForwarding = true }
        try c.elect(1)
        #expect(throws: RaftError.proposalDropped) { try c[2].propose([5]) }
    }

    @Test func noLeaderDropsProposals() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        #expect(throws: RaftError.proposalDropped) { try c[2].propose([5]) }
        try c[1].campaign()
        #expect(throws: RaftError.proposalDropped) { try c[1].propose([5]) } // candidate
    }
}
