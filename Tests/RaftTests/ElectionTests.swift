import Testing
@testable import Raft

@Suite struct ElectionTests {
    @Test func singleNodeElectsItselfAndCommits() throws {
        let c = try TestCluster(voters: [1])
        try c.elect(1)
        #expect(c[1].role == .leader)
        try c[1].propose([7])
        try c.settle()
        #expect(c.appliedData(1) == [[7]])
    }

    @Test func electionTimeoutElectsExactlyOneLeader() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.tickAll(40)
        let leaders = c.nodes.values.filter { $0.role == .leader }
        #expect(leaders.count == 1)
        let l = try #require(leaders.first)
        for n in c.nodes.values { #expect(n.softState.lead == l.id) }
        // PreVote: the winning pre-election does not burn terms.
        #expect(l.term == 1)
    }

    @Test func randomizedTimeoutIsWithinRangeAndSeeded() throws {
        var cfg = RaftConfig(id: 1)
        cfg.seed = 42
        let s = MemoryStorage()
        let a = try RaftNode(config: cfg, storage: s), b = try RaftNode(config: cfg, storage: s)
        #expect(a.randomizedElectionTimeout == b.randomizedElectionTimeout)
        var seen = Set<Int>()
        for _ in 0..<200 {
            a.resetRandomizedElectionTimeout()
            #expect(a.randomizedElectionTimeout >= 10 && a.randomizedElectionTimeout < 20)
            seen.insert(a.randomizedElectionTimeout)
        }
        #expect(seen.count > 5)
    }

    func voter(log: [Entry], term: UInt64, preVote: Bool = false) throws -> RaftNode {
        let s = MemoryStorage()
        try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(confState: ConfState(voters: [1, 2, 3]))))
        try s.append(log)
        s.setHardState(HardState(term: term))
        var cfg = RaftConfig(id: 1)
        cfg.preVote = preVote
        return try RaftNode(config: cfg, storage: s)
    }

    @Test(arguments: [
        // (candidate last term, candidate last index, granted)
        (UInt64(2), UInt64(2), true),  // same last entry
        (2, 3, true),                  // longer log, same last term
        (2, 1, false),                 // shorter log, same last term
        (3, 1, true),                  // higher last term wins even if shorter
        (1, 5, false),                 // lower last term loses even if longer
    ])
    func voteRequiresUpToDateLog(lastTerm: UInt64, lastIndex: UInt64, granted: Bool) throws {
        let n = try voter(log: [Entry(term: 1, index: 1), Entry(term: 2, index: 2)], term: 2)
        try n.step(Message(type: .requestVote, to: 1, from: 2, term: 3, logTerm: lastTerm, index: lastIndex))
        let rd = try n.ready()
        let resp = try #require(rd.messages.first)
        #expect(resp.type == .requestVoteResponse)
        #expect(resp.reject == !granted)
        #expect(n.term == 3)
        #expect(n.vote == (granted ? 2 : 0))
    }

    @Test func atMostOneVotePerTerm() throws {
        let n = try voter(log: [], term: 1)
        try n.step(Message(type: .requestVote, to: 1, from: 2, term: 2))
        try n.step(Message(type: .requestVote, to: 1, from: 3, term: 2))
        try n.step(Message(type: .requestVote, to: 1, from: 2, term: 2)) // a retry is granted again
        let r = try n.ready().messages.map(\.reject)
        #expect(r == [false, true, false])
        #expect(n.hardState.vote == 2)
    }

    @Test func staleTermMessagesAreIgnoredAndHigherTermsAdopted() throws {
        let n = try voter(log: [Entry(term: 1, index: 1)], term: 5)
        try n.step(Message(type: .append, to: 1, from: 2, term: 3, logTerm: 1, index: 1, entries: [Entry(term: 3, index: 2)]))
        let rd = try n.ready()
        #expect(try n.log.lastIndex() == 1)
        // The stale leader is told about term 5.
        #expect(rd.messages.first?.type == .appendResponse && rd.messages.first?.term == 5)
        try n.step(Message(type: .heartbeat, to: 1, from: 3, term: 7))
        #expect(n.term == 7 && n.softState.lead == 3 && n.role == .follower)
    }

    @Test func candidateStepsDownOnAppendFromLeaderOfSameTerm() throws {
        let n = try voter(log: [], term: 1)
        try n.campaign()
        #expect(n.role == .candidate && n.term == 2)
        try n.step(Message(type: .append, to: 1, from: 2, term: 2, logTerm: 0, index: 0))
        #expect(n.role == .follower && n.softState.lead == 2)
    }

    @Test func candidateLosesOnMajorityRejection() throws {
        let n = try voter(log: [], term: 1)
        try n.campaign()
        try n.step(Message(type: .requestVoteResponse, to: 1, from: 2, term: 2, reject: true))
        #expect(n.role == .candidate)
        try n.step(Message(type: .requestVoteResponse, to: 1, from: 3, term: 2, reject: true))
        #expect(n.role == .follower)
    }

    @Test func preVoteKeepsIsolatedNodeFromRaisingTerms() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(3)
        for _ in 0..<10 {
            try c.tick(3, 30)
            try c.settle()
        }
        #expect(c[3].term == 1)
        c.heal()
        try c.tickAll(5)
        #expect(c[1].role == .leader && c[1].term == 1)
    }

    @Test func withoutPreVoteIsolatedNodeDisruptsOnReturn() throws {
        let c = try TestCluster(voters: [1, 2, 3]) { $0.preVote = false; $0.checkQuorum = false }
        try c.elect(1)
        c.isolate(3)
        try c.tick(3, 30)
        try c.settle()
        #expect(c[3].term > 1)
        c.heal()
        try c.tickAll(30)
        // 3's higher term deposes the leader (the problem PreVote solves).
        #expect(c[1].term > 1)
    }

    @Test func checkQuorumLeaderStepsDownWhenIsolated() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(1)
        c.isolate(1)
        try c.tick(1, 9)
        try c.settle()
        #expect(c[1].role == .leader)
        try c.tick(1, 11)
        try c.settle()
        #expect(c[1].role == .follower)
    }

    @Test func leaseMakesFollowersIgnoreDisruptiveVotes() throws {
        let c = try TestCluster(voters: [1, 2, 3]) { $0.preVote = false }
        try c.elect(1)
        // A vote request with a higher term while 2 hears from its leader is ignored.
        try c[2].step(Message(type: .requestVote, to: 2, from: 3, term: 9, logTerm: 1, index: 1))
        #expect(c[2].term == 1 && c[2].softState.lead == 1)
        // After an election timeout without the leader, it is considered.
        try c.tick(2, 25)
        try c[2].step(Message(type: .requestVote, to: 2, from: 3, term: 9, logTerm: 5, index: 9))
        #expect(c[2].term == 9)
    }

    @Test func restartKeepsTermVoteAndLog() throws {
        let c = try TestCluster(voters: [1, 2, 3])
        try c.elect(2)
        try c[2].propose([1])
        try c.settle()
        let before = c[1].hardState
        try c.restart(1)
        #expect(c[1].hardState == before)
        #expect(try c[1].log.lastIndex() == 2)
        try c.settle()
    }
}
