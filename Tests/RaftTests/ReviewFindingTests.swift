import Testing
@testable import Raft

/// Regression tests for the independent review of the Raft core (findings numbered as in the
/// review; each failed before its fix).
@Suite struct ReviewFindingTests {
    /// Finding 1: a change that cannot be applied is refused at proposal, never committed.
    @Test func invalidConfChangeRefusedAtProposal() throws {
        let c = try TestCluster(voters: [1, 2])
        try c.elect(1)
        let bad = ConfChangeV2(transition: .auto, changes: [ConfChangeSingle(type: .removeNode, nodeID: 1),
                                                            ConfChangeSingle(type: .removeNode, nodeID: 2)])
        #expect(throws: RaftError.self) { try c[1].proposeConfChange(bad) }
        // Forwarded by a follower: replaced by an empty entry, nothing fails to apply.
        try c[2].proposeConfChange(bad)
        try c.settle()
        #expect(c[1].membership.voters == [1, 2])
        // A valid change is still accepted afterwards.
        try c[1].proposeConfChange(ConfChange(type: .addLearnerNode, nodeID: 3))
        try c.settle()
        #expect(c[2].membership.learners == [3])
    }

    /// Findings 2 and 14: an auto-leave is never lost to maxUncommittedEntriesSize, and a
    /// dropped proposal does not leave pendingConfIndex at an index that is never filled.
    @Test func autoLeaveNotStuckAfterSizeLimit() throws {
        let c = try TestCluster(voters: [1, 2, 3]) {
            $0.maxUncommittedEntriesSize = 10; $0.preVote = false; $0.checkQuorum = false
        }
        try c.elect(1)
        try c[1].proposeConfChange(ConfChangeV2(transition: .jointImplicit,
                                                changes: [ConfChangeSingle(type: .addLearnerNode, nodeID: 4)]))
        for m in try c.process(1) { try c.deliver(m) }
        for m in try c.process(2) + c.process(3) { try c.deliver(m) }
        // node 1 commits the joint entry; only commit-carrying empty appends get out
        for m in try c.process(1) where m.entries.isEmpty { try c.deliver(m) }
        c.isolate(1)
        try c.process(2); try c.process(3)
        #expect(c[2].membership.isJoint)
        try c[2].campaign()
        for _ in 0..<10 where c[2].role != .leader {
            var msgs: [Message] = []
            for id in [UInt64(1), 2, 3] { msgs += try c.process(id) }
            for m in msgs { try c.deliver(m) }
        }
        try #require(c[2].role == .leader)
        try c[2].propose(Array(repeating: 7, count: 10)) // uncommitted size was 0: accepted
        try c.settle()
        for _ in 0..<30 where c[2].membership.isJoint { try c.tick(2); try c.tick(3); try c.settle() }
        #expect(!c[2].membership.isJoint)
    }

    /// Finding 14: a batch with two changes is refused without moving pendingConfIndex.
    @Test func refusedBatchDoesNotBlockLaterChanges() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        let cc = ConfChange(type: .addLearnerNode, nodeID: 4).encode()
        let m = Message(type: .propose, from: 1, entries: [Entry(term: 0, index: 0, type: .confChange, data: cc),
                                                          Entry(term: 0, index: 0, type: .confChange, data: cc)])
        #expect(throws: RaftError.proposalDropped) { try c[1].stepInternal(m) }
        #expect(c[1].pendingConfIndex <= c[1].log.applied)
        try c[1].proposeConfChange(ConfChange(type: .addLearnerNode, nodeID: 4))
    }

    /// Finding 3: an ack of a heartbeat round sent before a read does not confirm it.
    @Test func readIndexNotConfirmedByStaleAck() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[1].readIndex(context: [1])
        for m in try c.process(1) { try c.deliver(m) }
        let r2 = try c.process(2), r3 = try c.process(3)
        for m in r2 { try c.deliver(m) }
        try c.process(1)
        #expect(c.readStates[1]?.count == 1)
        try c[1].readIndex(context: [1]) // same context reused
        for m in r3 { try c.deliver(m) } // node 3's delayed ack of the first round
        let round2 = try c.process(1)
        #expect(c.readStates[1]?.count == 1)
        for m in round2 { try c.deliver(m) }
        try c.settle() // the heartbeats of the second round confirm it
        #expect(c.readStates[1]?.count == 2)
    }

    /// Finding 4: two followers using the same context both get an answer.
    @Test func forwardedReadsWithSameContextFromTwoFollowers() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[2].readIndex(context: [9])
        try c[3].readIndex(context: [9])
        try c.settle()
        #expect(c.readStates[2]?.count == 1)
        #expect(c.readStates[3]?.count == 1)
    }

    /// Finding 7: network messages need a term (forwarded requests none) and the right recipient.
    @Test func termZeroAndMisaddressedMessagesRejected() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(2); c.isolate(3)
        try c[1].propose([1])
        try c.process(1)
        let last = c[1].log.committed + 1
        #expect(throws: RaftError.self) {
            try c[1].step(Message(type: .appendResponse, to: 1, from: 2, term: 0, index: last))
        }
        #expect(throws: RaftError.self) {
            try c[1].step(Message(type: .appendResponse, to: 3, from: 2, term: c[1].term, index: last))
        }
        #expect(throws: RaftError.self) {
            try c[2].step(Message(type: .heartbeat, to: 2, from: 3, term: 0))
        }
        #expect(throws: RaftError.self) {
            try c[1].step(Message(type: .propose, to: 1, from: 2, term: 5, entries: [Entry(term: 0, index: 0)]))
        }
        #expect(c[1].log.committed < last)
        #expect(c[2].softState.lead == 1)
    }

    /// Finding 10: a Ready carrying a snapshot must be synced.
    @Test func snapshotReadyMustSync() throws {
        let n = try ElectionTestsSupport.follower(log: [Entry(term: 1, index: 1)])
        let snap = Snapshot(metadata: SnapshotMetadata(index: 10, term: 1, confState: ConfState(voters: [1, 2])))
        try n.step(Message(type: .snapshot, to: 1, from: 2, term: 1, snapshot: snap))
        let rd = try n.ready()
        #expect(rd.snapshot != nil)
        #expect(rd.mustSync)
    }

    /// Finding 11: a forwarded request that cannot be served is dropped silently.
    @Test func forwardedRequestsDroppedSilently() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[1].transferLeadership(to: 2) // proposals are refused while transferring
        c.isolate(2)
        try c[1].step(Message(type: .propose, to: 1, from: 3, entries: [Entry(term: 0, index: 0, data: [1])]))
        #expect(throws: RaftError.proposalDropped) { try c[1].propose([1]) }
    }

    /// Finding 9: a snapshot lost without a report does not pause the follower forever.
    @Test func lostUnreportedSnapshotIsRetried() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(3)
        for i in 0..<5 { try c[1].propose([UInt8(i)]) }
        try c.settle()
        try c.storages[1]!.createSnapshot(index: 6, confState: c[1].status.confState, data: [])
        try c.storages[1]!.compact(6)
        c.heal()
        c.dropIf = { $0.type == .snapshot } // lost, and never reported
        try c.tickAll(3)
        #expect(c[1].progress[3]!.state == .snapshot)
        try c.tickAll(40)
        #expect(c.dropped.filter { $0.type == .snapshot && $0.to == 3 }.count >= 2) // resent
        c.dropIf = nil
        try c.tickAll(25)
        #expect(c[3].log.committed == c[1].log.committed)
    }

    /// Finding 13: only the zero-value change leaves a joint configuration.
    @Test func onlyZeroValueChangeLeavesJoint() {
        #expect(ConfChangeV2().leavesJoint)
        #expect(!ConfChangeV2(transition: .jointExplicit).leavesJoint)
        #expect(!ConfChangeV2(transition: .jointImplicit).leavesJoint)
    }

    /// Finding 12 (simulator seed 5109): the leader that commits the entry leaving a joint
    /// configuration without itself must keep leading, or the new voters may never learn that
    /// the entry committed: they stay joint, and the outgoing half needs votes from nodes that
    /// no longer campaign. It keeps sending the commit index; stopped, the new voters elect.
    @Test func removedLeaderTellsNewVotersToLeaveJoint() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        for id: UInt64 in [4, 5] { try c.add(id, storage: try c.joinerStorage(), config: RaftConfig(id: id)) }
        try c[1].proposeConfChange(ConfChangeV2(transition: .jointExplicit, changes: [
            .init(type: .addNode, nodeID: 4), .init(type: .addNode, nodeID: 5),
            .init(type: .removeNode, nodeID: 1), .init(type: .removeNode, nodeID: 2),
        ]))
        try c.settle()
        try c.tickAll(2)
        for id: UInt64 in 1...5 {
            #expect(c[id].status.confState == ConfState(voters: [3, 4, 5], votersOutgoing: [1, 2, 3]))
        }
        // 3, 4 and 5 receive the leave entry but no message telling them it committed.
        let leave = try c[1].log.lastIndex() + 1
        c.dropIf = { $0.from == 1 && $0.to >= 3 && $0.commit >= leave }
        try c[1].proposeConfChange(ConfChangeV2())
        try c.settle()
        #expect(c[1].log.applied >= leave && c[2].log.applied >= leave)
        #expect(c[1].status.confState == ConfState(voters: [3, 4, 5]))
        for id: UInt64 in 3...5 {
            let last = try c[id].log.lastIndex()
            #expect(c[id].membership.isJoint && last >= leave)
        }
        // Outside its configuration, node 1 still leads: its next messages carry the commit.
        #expect(c[1].role == .leader)
        c.dropIf = nil
        try c.tickAll(3)
        for id: UInt64 in 3...5 { #expect(c[id].status.confState == ConfState(voters: [3, 4, 5])) }
        // Once node 1 is gone, the new voters elect one of themselves and commit.
        let term = c[1].term
        c.isolate(1)
        c.isolate(2)
        try c.tickAll(60)
        let lead = try #require([UInt64(3), 4, 5].first { c[$0].role == .leader })
        #expect(c[lead].term > term)
        try c[lead].propose([6])
        try c.settle()
        try c.tickAll(1)
        for id: UInt64 in 3...5 { #expect(c.appliedData(id).last == [6]) }
    }
}
