import Testing
@testable import Raft

@Suite struct LearnerTests {
    @Test func learnerReplicatesButNeverCampaignsOrCounts() throws {
        let c = try TestCluster(voters: [1, 2], learners: [3])
        try c.elect(1)
        try c[1].propose([1])
        try c.settle()
        try c.tickAll(1)
        #expect(c.appliedData(3) == [[1]])
        #expect(c[1].progress[3]!.isLearner)
        // The learner never campaigns, however long it waits.
        c.isolate(3)
        try c.tick(3, 100)
        try c.settle()
        #expect(c[3].role == .follower && c[3].term == 1)
        #expect(!c.dropped.contains { $0.from == 3 && ($0.type == .requestVote || $0.type == .requestPreVote) })
        // With voter 2 down, leader + learner are not a quorum: nothing commits.
        c.heal()
        c.isolate(2)
        let commit = c[1].log.committed
        try c[1].propose([2])
        try c.settle()
        #expect(try c[3].log.lastIndex() == commit + 1)
        #expect(c[1].log.committed == commit)
    }

    @Test func candidatesDoNotAskOrCountLearners() throws {
        let c = try TestCluster(voters: [1, 2], learners: [3])
        c.isolate(2)
        try c.elect(1)
        #expect(c[1].role != .leader)
        #expect(!c.dropped.contains { $0.to == 3 } && !c.delivered.contains { $0.to == 3 })
    }

    @Test func learnerIgnoresTimeoutNow() throws {
        let c = try TestCluster(voters: [1, 2], learners: [3])
        try c.elect(1)
        try c[3].step(Message(type: .timeoutNow, to: 3, from: 1, term: 1))
        #expect(c[3].role == .follower)
    }
}

@Suite struct MembershipTests {
    func addNode(_ c: TestCluster, _ id: UInt64, learner: Bool) throws {
        var cfg = RaftConfig(id: id)
        cfg.seed = id
        try c.add(id, storage: try c.joinerStorage(), config: cfg)
        try c[1].proposeConfChange(ConfChange(type: learner ? .addLearnerNode : .addNode, nodeID: id))
        try c.settle()
        try c.tickAll(3)
    }

    @Test func addVoterPromoteLearnerAndRemove() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try addNode(c, 4, learner: true)
        #expect(c[1].status.confState == ConfState(voters: [1, 2, 3], learners: [4]))
        #expect(c[4].status.confState == ConfState(voters: [1, 2, 3], learners: [4]))
        try c[1].proposeConfChange(ConfChange(type: .addNode, nodeID: 4)) // promote
        try c.settle()
        try c.tickAll(2)
        #expect(c[4].status.confState.voters == [1, 2, 3, 4])
        try c[1].proposeConfChange(ConfChange(type: .removeNode, nodeID: 3))
        try c.settle()
        try c.tickAll(2)
        #expect(c[1].status.confState.voters == [1, 2, 4])
        #expect(c[3].status.confState.voters == [1, 2, 4])
        // A removed node stops campaigning.
        c.isolate(3)
        try c.tick(3, 100)
        try c.settle()
        #expect(!c.dropped.contains { $0.from == 3 && ($0.type == .requestVote || $0.type == .requestPreVote) })
        // The new quorum (2 of 3) commits without node 3.
        try c[1].propose([8])
        try c.settle()
        try c.tickAll(1)
        #expect(c.appliedData(4).last == [8])
    }

    @Test func onlyOnePendingChangeAtATime() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(1)
        try c[1].proposeConfChange(ConfChange(type: .addLearnerNode, nodeID: 4))
        #expect(throws: RaftError.proposalDropped) {
            try c[1].proposeConfChange(ConfChange(type: .addLearnerNode, nodeID: 5))
        }
        // Leaving a joint configuration that does not exist is refused too.
        c.heal()
        try c.tickAll(2)
        #expect(throws: RaftError.proposalDropped) { try c[1].proposeConfChange(ConfChangeV2()) }
    }

    @Test func jointConsensusLeavesAutomatically() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        for id: UInt64 in [4, 5] { try c.add(id, storage: try c.joinerStorage(), config: RaftConfig(id: id)) }
        // Replace 2 and 3 by 4 and 5 in one step.
        try c[1].proposeConfChange(ConfChangeV2(changes: [
            .init(type: .addNode, nodeID: 4), .init(type: .addNode, nodeID: 5),
            .init(type: .removeNode, nodeID: 2), .init(type: .removeNode, nodeID: 3),
        ]))
        try c.settle()
        try c.tickAll(5)
        for id: UInt64 in [1, 4, 5] {
            #expect(c[id].status.confState == ConfState(voters: [1, 4, 5]))
        }
        // Both the joint entry and the automatic leave entry were applied.
        let kinds = c.applied[1]!.filter { $0.type == .confChangeV2 }.map { try! ConfChangeV2(decoding: $0.data) }
        #expect(kinds.count == 2 && kinds[1].leavesJoint)
    }

    @Test func jointConsensusExplicitLeaveAndDemotion() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[1].proposeConfChange(ConfChangeV2(transition: .jointExplicit, changes: [.init(type: .addLearnerNode, nodeID: 3)]))
        try c.settle()
        try c.tickAll(5)
        let joint = c[1].status.confState
        #expect(joint == ConfState(voters: [1, 2], votersOutgoing: [1, 2, 3], learnersNext: [3]))
        // In the joint config a decision needs both majorities: with 2 down, nothing commits.
        c.isolate(2)
        let commit = c[1].log.committed
        try c[1].propose([1])
        try c.settle()
        #expect(c[1].log.committed == commit)
        c.heal()
        try c.tickAll(2)
        try c[1].proposeConfChange(ConfChangeV2())
        try c.settle()
        try c.tickAll(2)
        #expect(c[2].status.confState == ConfState(voters: [1, 2], learners: [3]))
        #expect(c[1].progress[3]!.isLearner)
    }

    /// etcd's default: a leader that applies its own removal keeps leading. It no longer
    /// counts toward commit or read quorums, but still replicates, heartbeats and serves
    /// proposals and reads; once stopped, the remaining voters elect one of themselves.
    @Test func removedLeaderKeepsLeadingUntilStopped() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[1].proposeConfChange(ConfChange(type: .removeNode, nodeID: 1))
        try c.settle()
        #expect(c[1].status.confState.voters == [2, 3])
        #expect(c[1].role == .leader && c[1].progress[1] == nil)
        // Proposals commit on the remaining voters; the leader's own copy does not count.
        c.isolate(3)
        try c[1].propose([5])
        try c.settle()
        let commit = c[1].log.committed
        #expect((try c[1].log.lastIndex()) == commit + 1)
        c.heal()
        try c.tickAll(2)
        #expect(c.appliedData(2).last == [5] && c.appliedData(3).last == [5])
        // A read is confirmed by the voters' heartbeat answers.
        try c[1].readIndex(context: [9])
        try c.settle()
        #expect(c.readStates[1]?.last?.context == [9])
        // Stopped (isolated), it steps down by CheckQuorum; 2 and 3 elect a new leader.
        let term = c[1].term
        c.isolate(1)
        try c.tickAll(60)
        #expect(c[1].role == .follower)
        #expect([2, 3].contains { c[$0].role == .leader && c[$0].term > term })
    }

    /// A leader demoted to learner keeps leading: its own progress is a learner's, so its copy
    /// never counts toward commit; a leadership transfer hands over to a voter.
    @Test func demotedLeaderKeepsLeadingAndTransfers() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        try c[1].proposeConfChange(ConfChangeV2(transition: .jointExplicit, changes: [.init(type: .addLearnerNode, nodeID: 1)]))
        try c.settle()
        try c.tickAll(2)
        try c[1].proposeConfChange(ConfChangeV2())
        try c.settle()
        try c.tickAll(2)
        #expect(c[1].status.confState == ConfState(voters: [2, 3], learners: [1]))
        #expect(c[1].role == .leader && c[1].progress[1]?.isLearner == true)
        c.isolate(3)
        try c[1].propose([4])
        try c.settle()
        #expect((try c[1].log.lastIndex()) == c[1].log.committed + 1)
        c.heal()
        try c.tickAll(2)
        #expect(c.appliedData(3).last == [4])
        try c[1].transferLeadership(to: 2)
        try c.settle()
        #expect(c[2].role == .leader && c[1].role == .follower && c[1].lead == 2)
    }

    @Test(arguments: [
        (ConfChangeV2(changes: [.init(type: .addNode, nodeID: 4), .init(type: .addNode, nodeID: 5)], ), false),
        (ConfChangeV2(transition: .auto, changes: [.init(type: .removeNode, nodeID: 1)]), false),
        (ConfChangeV2(), true), // not joint
    ])
    func changerRules(cc: ConfChangeV2, throwsError: Bool) throws {
        let base = MembershipConfig(ConfState(voters: [1, 2, 3]))
        if throwsError {
            #expect(throws: RaftError.self) { try base.applying(cc) }
        } else {
            _ = try base.applying(cc)
        }
    }

    @Test func changerRefusesInvalidConfigurations() throws {
        let single = MembershipConfig(ConfState(voters: [1]))
        #expect(throws: RaftError.self) {
            try single.applying(ConfChangeV2(changes: [.init(type: .removeNode, nodeID: 1)]))
        }
        var two = MembershipConfig(ConfState(voters: [1, 2, 3]))
        two = try two.applying(ConfChangeV2(transition: .jointImplicit, changes: [.init(type: .addNode, nodeID: 4)]))
        #expect(two.isJoint && two.autoLeave)
        #expect(throws: RaftError.self) {
            try two.applying(ConfChangeV2(changes: [.init(type: .addNode, nodeID: 5)]))
        }
    }
}

