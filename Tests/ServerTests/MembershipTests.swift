import EtcdConfig
import EtcdProto
import Foundation
import Raft
import ServerFormat
import Testing
@testable import Server

@Suite("Membership: validation, changes, records")
struct MembershipUnitTests {
    let a = MemberRecord(id: 1, name: "a", peerURLs: ["http://10.0.0.1:2380"])
    let b = MemberRecord(id: 2, name: "b", peerURLs: ["http://10.0.0.2:2380"])
    let c = MemberRecord(id: 3, name: "c", peerURLs: ["http://10.0.0.3:2380"])
    let l = MemberRecord(id: 4, name: "", peerURLs: ["http://10.0.0.4:2380"], isLearner: true)

    @Test(arguments: [[], [""], ["10.0.0.9:2380"], ["ftp://10.0.0.9:2380"], ["http://10.0.0.9"],
                      ["http://10.0.0.9:2380/path"], ["http://10.0.0.9:2380", "http://10.0.0.9:2380"]])
    func badPeerURLsGetEtcdsText(_ urls: [String]) {
        #expect(throws: MembershipRules.badURLs) { try MembershipRules.parsePeerURLs(urls) }
        #expect(MembershipRules.badURLs.message == "etcdserver: given member URLs are invalid")
        #expect(MembershipRules.badURLs.code == .invalidArgument)
    }

    @Test func goodPeerURLsAreNormalisedAndSorted() throws {
        #expect(try MembershipRules.parsePeerURLs(["https://h2:1", "http://h1:2380"]) == ["http://h1:2380", "https://h2:1"])
    }

    @Test func duplicatePeerURLsAreRefused() {
        #expect(throws: MembershipRules.peerURLExists) {
            try MembershipRules.checkAdd(peerURLs: ["http://10.0.0.2:2380"], isLearner: false, members: [a, b, c],
                                         maxLearners: 1, strict: false, startedVoters: 3)
        }
        #expect(MembershipRules.peerURLExists.message == "etcdserver: Peer URLs already exists")
        // Updating a member to its own URLs is fine; to another's is not.
        #expect(throws: Never.self) { try MembershipRules.checkURLsFree(b.peerURLs, members: [a, b], except: 2) }
        #expect(throws: MembershipRules.peerURLExists) { try MembershipRules.checkURLsFree(a.peerURLs, members: [a, b], except: 2) }
    }

    @Test func learnerLimit() throws {
        let urls = ["http://10.0.0.5:2380"]
        #expect(try MembershipRules.checkAdd(peerURLs: urls, isLearner: true, members: [a, b, c], maxLearners: 1,
                                             strict: true, startedVoters: 3) == urls)
        #expect(throws: MembershipRules.tooManyLearners) {
            try MembershipRules.checkAdd(peerURLs: urls, isLearner: true, members: [a, b, c, l], maxLearners: 1,
                                         strict: true, startedVoters: 3)
        }
        #expect(MembershipRules.tooManyLearners.message == "etcdserver: too many learner members in cluster")
        #expect(try MembershipRules.checkAdd(peerURLs: urls, isLearner: true, members: [a, b, c, l], maxLearners: 2,
                                             strict: true, startedVoters: 3) == urls)
    }

    @Test func strictReconfigCheckOnAdd() throws {
        let urls = ["http://10.0.0.5:2380"]
        // 3 voters, one down: 4 voters need 3 started; 2 are not enough.
        #expect(throws: MembershipRules.notEnoughStarted) {
            try MembershipRules.checkAdd(peerURLs: urls, isLearner: false, members: [a, b, c], maxLearners: 1,
                                         strict: true, startedVoters: 2)
        }
        #expect(MembershipRules.notEnoughStarted.message
            == "etcdserver: re-configuration failed due to not enough started members")
        // Not strict, or a learner: allowed.
        _ = try MembershipRules.checkAdd(peerURLs: urls, isLearner: false, members: [a, b, c], maxLearners: 1,
                                         strict: false, startedVoters: 2)
        _ = try MembershipRules.checkAdd(peerURLs: urls, isLearner: true, members: [a, b, c], maxLearners: 1,
                                         strict: true, startedVoters: 2)
        // One member may always grow to two.
        #expect(MembershipRules.canAddVoter(voters: 1, started: 1))
        #expect(MembershipRules.canAddVoter(voters: 3, started: 3))
        #expect(!MembershipRules.canAddVoter(voters: 2, started: 1))
        // A promotion counts the (in-sync) learner as started, as etcd: 3 voters with one down
        // may promote (3 of 4 started), with two down may not (2 of 4).
        #expect(MembershipRules.canPromote(voters: 3, startedVoters: 2))
        #expect(!MembershipRules.canPromote(voters: 3, startedVoters: 1))
        #expect(MembershipRules.canPromote(voters: 1, startedVoters: 1))
        #expect(!MembershipRules.canAddVoter(voters: 3, started: 2), "an added voter is not started yet")
    }

    @Test func strictReconfigCheckOnRemove() {
        #expect(MembershipRules.canRemoveVoter(voters: 3, started: 3, removingStarted: true))
        #expect(MembershipRules.canRemoveVoter(voters: 3, started: 2, removingStarted: false))
        // 3 voters with one down: removing a started one leaves 1 of 2 started.
        #expect(!MembershipRules.canRemoveVoter(voters: 3, started: 2, removingStarted: true))
        #expect(!MembershipRules.canRemoveVoter(voters: 1, started: 1, removingStarted: true))
    }

    @Test func learnerInSyncAtNinetyPercent() {
        #expect(MembershipRules.learnerInSync(learnerMatch: 90, leaderMatch: 100))
        #expect(!MembershipRules.learnerInSync(learnerMatch: 89, leaderMatch: 100))
        #expect(MembershipRules.learnerInSync(learnerMatch: 0, leaderMatch: 0))
        #expect(MembershipRules.learnerNotReady.message
            == "etcdserver: can only promote a learner member which is in sync with leader")
    }

    @Test func changesRoundTripThroughConfChanges() throws {
        let cases: [(MembershipChange, ConfChangeType)] = [
            (MembershipChange(operation: .add, member: a), .addNode),
            (MembershipChange(operation: .add, member: l), .addLearnerNode),
            (MembershipChange(operation: .promote, member: l), .addNode),
            (MembershipChange(operation: .update, member: l), .addNode),
            (MembershipChange(operation: .remove, member: b), .removeNode),
        ]
        for (change, type) in cases {
            let cc = change.confChange(requestID: 77)
            #expect(cc.type == type)
            // An update is a Raft no-op (node 0), so it never changes voter/learner status.
            #expect(cc.nodeID == (change.operation == .update ? 0 : change.member.id))
            #expect(cc.id == 77)
            let back = try ConfChange(decoding: cc.encode())
            #expect(try MembershipChange.decode(back.context) == change)
        }
        #expect(throws: ServerStartError.self) { try MembershipChange.decode(Array("{not json".utf8)) }
    }

    @Test func applyingChanges() {
        let m = ClusterMembership(members: [a, b, c])
        m.apply(MembershipChange(operation: .add, member: l))
        #expect(m.member(4)?.isLearner == true)
        m.apply(MembershipChange(operation: .promote, member: l))
        #expect(m.member(4)?.isLearner == false)
        var moved = b
        moved.peerURLs = ["http://10.0.0.22:2380"]
        moved.name = ""
        m.apply(MembershipChange(operation: .update, member: moved))
        #expect(m.member(2)?.peerURLs == ["http://10.0.0.22:2380"])
        #expect(m.member(2)?.name == "b")
        // A member added at run time publishes its name with an update.
        var named = l
        named.name = "d"
        m.apply(MembershipChange(operation: .update, member: named))
        #expect(m.member(4)?.name == "d")
        m.apply(MembershipChange(operation: .remove, member: c))
        #expect(m.member(3) == nil)
        #expect(m.removed == [3])
        #expect(m.members.map(\.id) == [1, 2, 4])
        // A replayed bootstrap entry without a name keeps the known one.
        var unnamed = a
        unnamed.name = ""
        m.apply(MembershipChange(operation: .add, member: unnamed))
        #expect(m.member(1)?.name == "a")
        let doc = try? JSONDecoder().decode(ClusterMembership.SnapshotDocument.self, from: Data(m.encodedForSnapshot()))
        #expect(doc?.members.map(\.id) == [1, 2, 4])
        #expect(doc?.removed == [3])
    }

    @Test func oldRecordsWithoutTheLearnerFlagDecode() throws {
        let old = #"{"id":5,"name":"x","peerURLs":["http://h:1"]}"#
        let r = try JSONDecoder().decode(MemberRecord.self, from: Data(old.utf8))
        #expect(r == MemberRecord(id: 5, name: "x", peerURLs: ["http://h:1"], isLearner: false))
    }

    @Test func findsTheLocalMemberByPeerURLs() throws {
        let found = RemoteMembership.Found(clusterID: 9, members: [a, l])
        let me = RemoteMembership.localMember(found, peerURLs: [try EndpointURL(parsing: "http://10.0.0.4:2380")])
        #expect(me?.id == 4)
        #expect(RemoteMembership.localMember(found, peerURLs: [try EndpointURL(parsing: "http://10.0.0.8:2380")]) == nil)
    }
}

@Suite("Membership: single in-process member")
struct MembershipServerTests {
    @Test func singleMemberListsItselfAndRefusesBadChanges() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        do {
            _ = try await s.put(putRequest("k", "v"))
            let list = try await s.memberList(linearizable: true)
            #expect(list.count == 1)
            #expect(list.first?.id == s.memberID)
            #expect(list.first?.isLearner == false)
            await #expect(throws: MembershipRules.badURLs) { _ = try await s.memberAdd(peerURLs: ["nope"], isLearner: true) }
            await #expect(throws: MembershipRules.peerURLExists) {
                _ = try await s.memberAdd(peerURLs: ["http://127.0.0.1:2380"], isLearner: true)
            }
            await #expect(throws: MembershipRules.memberNotFound) { _ = try await s.memberRemove(id: 12345) }
            await #expect(throws: MembershipRules.memberNotFound) { _ = try await s.memberPromote(id: 12345) }
            await #expect(throws: MembershipRules.notLearner) { _ = try await s.memberPromote(id: s.memberID) }
            // A learner that never starts: added, listed, not in sync, removed.
            let (added, members) = try await s.memberAdd(peerURLs: ["http://127.0.0.1:1"], isLearner: true)
            #expect(added.isLearner)
            #expect(members.map(\.id).sorted() == [s.memberID, added.id].sorted())
            await #expect(throws: MembershipRules.tooManyLearners) {
                _ = try await s.memberAdd(peerURLs: ["http://127.0.0.1:2"], isLearner: true)
            }
            await #expect(throws: MembershipRules.learnerNotReady) { _ = try await s.memberPromote(id: added.id) }
            let updated = try await s.memberUpdate(id: added.id, peerURLs: ["http://127.0.0.1:3"])
            #expect(updated.first { $0.id == added.id }?.peerUrls == ["http://127.0.0.1:3"])
            // The writes still work: the learner does not count for the quorum.
            _ = try await s.put(putRequest("k2", "v"))
            let left = try await s.memberRemove(id: added.id)
            #expect(left.map(\.id) == [s.memberID])
        } catch {
            await s.stop()
            throw error
        }
        await s.stop()
        // Restart: the membership (and the removed ID) come back from the backend.
        let again = try await f.start()
        #expect(again.members().map(\.id) == [again.memberID])
        #expect(again.membership.removed.count == 1)
        await again.stop()
    }
}
