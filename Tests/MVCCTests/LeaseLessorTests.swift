import Raft
import Testing

@testable import MVCC

@Suite struct LeaseGrantTests {
    @Test func grantRaisesToMinimumTTLAndPersists() throws {
        let f = try LeaseFixture(config: LessorConfig(minTTL: 5))
        #expect(try f.lessor.grant(id: 7, ttl: 1) == 5)
        #expect(try f.lessor.grant(id: 8, ttl: -3) == 5)
        #expect(try f.lessor.grant(id: 9, ttl: 60) == 60)
        #expect(try f.persistence.loadLeases() == [
            PersistedLease(id: 7, ttl: 5, remainingTTL: 0),
            PersistedLease(id: 8, ttl: 5, remainingTTL: 0),
            PersistedLease(id: 9, ttl: 60, remainingTTL: 0),
        ])
        #expect(f.lessor.leases() == [7, 8, 9])
        #expect(f.lessor.contains(id: 8))
        #expect(!f.lessor.contains(id: 10))
    }

    @Test func grantRefusesDuplicateZeroAndTooLargeTTL() throws {
        let f = try LeaseFixture()
        try f.lessor.grant(id: 1, ttl: 10)
        #expect(throws: LeaseError.leaseExists(1)) { try f.lessor.grant(id: 1, ttl: 20) }
        #expect(try f.lessor.timeToLive(id: 1).grantedTTL == 10)  // unchanged
        #expect(throws: LeaseError.leaseNotFound(0)) { try f.lessor.grant(id: 0, ttl: 10) }
        #expect(throws: LeaseError.ttlTooLarge(Lessor.maxTTL + 1)) { try f.lessor.grant(id: 2, ttl: Lessor.maxTTL + 1) }
        #expect(try f.lessor.grant(id: 3, ttl: Lessor.maxTTL) == Lessor.maxTTL)
        #expect(f.lessor.leases() == [1, 3])
    }

    @Test func extremeTTLsAndClocksDoNotOverflow() throws {
        let clock = ManualLeaseClock(start: .seconds(-100))
        let lessor = try Lessor(clock: clock, persistence: InMemoryLeasePersistence())
        try lessor.grant(id: 1, ttl: Lessor.maxTTL)
        try lessor.applyCheckpoints([LeaseCheckpoint(id: 1, remainingTTL: Int64.max)])
        lessor.promote(extension: .seconds(Int64.max))
        clock.advance(by: .seconds(1_000_000_000))
        #expect(lessor.expiredLeases().isEmpty)
        #expect(try lessor.timeToLive(id: 1).remainingTTL > 0)
        #expect(try lessor.renew(id: 1).ttl == Lessor.maxTTL)
        // Past the end of the nanosecond range every deadline saturates: reported once.
        clock.advance(by: .seconds(Int64.max))
        #expect(lessor.expiredLeases() == [1])
        #expect(lessor.expiredLeases() == [1])
        #expect(try lessor.timeToLive(id: 1).remainingTTL == 0)
        #expect(leaseNanoseconds(.seconds(Int64.max) * 4) == Int64.max)
        #expect(leaseNanoseconds(.seconds(Int64.min) * 4) == Int64.min)
        #expect(leaseNanoseconds(.milliseconds(1500)) == 1_500_000_000)
        #expect(leaseNanoseconds(.milliseconds(-1500)) == -1_500_000_000)
    }

    @Test func errorsCarryEtcdTexts() {
        #expect(LeaseError.leaseNotFound(4).description == "etcdserver: requested lease not found")
        #expect(LeaseError.leaseExpired(4).description == "etcdserver: requested lease not found")
        #expect(LeaseError.leaseExists(4).description == "etcdserver: lease already exists")
        #expect(LeaseError.ttlTooLarge(4).description == "etcdserver: too large lease TTL")
    }

    @Test func minimumTTLFollowsElectionTimeout() {
        // etcd's defaults (10 ticks of 100 ms) give 2 s, as `etcdctl lease grant 1` shows.
        #expect(LessorConfig.minimumTTL(electionTicks: 10, heartbeat: .milliseconds(100)) == 2)
        #expect(LessorConfig.minimumTTL(electionTicks: 10, heartbeat: .milliseconds(200)) == 3)
        #expect(LessorConfig.minimumTTL(electionTicks: 20, heartbeat: .milliseconds(500)) == 15)
        #expect(LessorConfig().minTTL == 2)
    }

    @Test func idGeneratorIsDeterministicPositiveAndMemberScoped() {
        let a = LeaseIDGenerator(memberID: 0x1234_5678_9ABC_390D, startMilliseconds: 1_700_000_000_000)
        let b = LeaseIDGenerator(memberID: 0x1234_5678_9ABC_390D, startMilliseconds: 1_700_000_000_000)
        let fromA = (0..<100).map { _ in a.next() }
        #expect(fromA == (0..<100).map { _ in b.next() })
        #expect(Set(fromA).count == 100)
        #expect(fromA.allSatisfy { $0 > 0 && UInt64($0) >> 48 == 0x390D })
        #expect(a.resolve(42) == 42)
        #expect(a.resolve(0) == fromA[99] + 1)
        let other = LeaseIDGenerator(memberID: 0x390E, startMilliseconds: 1_700_000_000_000)
        #expect(Set(fromA).isDisjoint(with: (0..<100).map { _ in other.next() }))
        // The top member bit falls on the sign bit and is cleared.
        let high = LeaseIDGenerator(memberID: 0xFFFF, startMilliseconds: 0)
        #expect((0..<10).allSatisfy { _ in high.next() > 0 })
    }
}

@Suite struct LeaseAttachRevokeTests {
    @Test func attachDetachAndMove() throws {
        let f = try LeaseFixture()
        try f.lessor.grant(id: 1, ttl: 10)
        try f.lessor.grant(id: 2, ttl: 10)
        try f.lessor.attach(keys: [leaseKey("b"), leaseKey("a"), leaseKey("c")], to: 1)
        #expect(try f.lessor.keys(of: 1) == [leaseKey("a"), leaseKey("b"), leaseKey("c")])
        #expect(f.lessor.leaseID(ofKey: leaseKey("a")) == 1)
        #expect(f.lessor.leaseID(ofKey: leaseKey("zz")) == 0)

        // A put that changes the lease moves the key.
        try f.lessor.attach(keys: [leaseKey("b")], to: 2)
        #expect(try f.lessor.keys(of: 1) == [leaseKey("a"), leaseKey("c")])
        #expect(try f.lessor.keys(of: 2) == [leaseKey("b")])

        // Detach only touches keys attached to that lease.
        try f.lessor.detach(keys: [leaseKey("a"), leaseKey("b")], from: 1)
        #expect(try f.lessor.keys(of: 1) == [leaseKey("c")])
        #expect(try f.lessor.keys(of: 2) == [leaseKey("b")])
        #expect(f.lessor.leaseID(ofKey: leaseKey("a")) == 0)

        #expect(throws: LeaseError.leaseNotFound(3)) { try f.lessor.attach(keys: [leaseKey("x")], to: 3) }
        #expect(f.lessor.leaseID(ofKey: leaseKey("x")) == 0)
        #expect(throws: LeaseError.leaseNotFound(3)) { try f.lessor.detach(keys: [leaseKey("c")], from: 3) }
        #expect(throws: LeaseError.leaseNotFound(3)) { try f.lessor.keys(of: 3) }
    }

    @Test func revokeDeletesAttachedKeysOnceInOneCall() throws {
        let f = try LeaseFixture()
        try f.lessor.grant(id: 1, ttl: 10)
        try f.lessor.grant(id: 2, ttl: 10)
        for key in ["k3", "k1", "k2"] { try f.put(key, lease: 1) }
        try f.put("other", lease: 2)
        f.keys.put(leaseKey("plain"), lease: 0)

        try f.lessor.revoke(id: 1)
        #expect(f.keys.deletions == [.init(keys: [leaseKey("k1"), leaseKey("k2"), leaseKey("k3")], lease: 1)])
        #expect(f.keys.live == [leaseKey("other"): 2, leaseKey("plain"): 0])
        #expect(f.lessor.leases() == [2])
        #expect(f.lessor.leaseID(ofKey: leaseKey("k1")) == 0)
        #expect(try f.persistence.loadLeases().map(\.id) == [2])

        #expect(throws: LeaseError.leaseNotFound(1)) { try f.lessor.revoke(id: 1) }
        #expect(f.keys.deletions.count == 1)
    }

    @Test func revokeWithoutKeysDoesNotCallTheDeleter() throws {
        let f = try LeaseFixture()
        try f.lessor.grant(id: 5, ttl: 10)
        try f.lessor.revoke(id: 5)
        #expect(f.keys.deletions.isEmpty)
        #expect(f.lessor.leases().isEmpty)
    }

    @Test func deleterMayDetachThroughTheLessor() throws {
        let f = try LeaseFixture()
        f.keys.detachThrough(f.lessor)
        try f.lessor.grant(id: 1, ttl: 10)
        try f.put("a", lease: 1)
        try f.put("b", lease: 1)
        try f.lessor.revoke(id: 1)  // would deadlock if the lessor held its lock
        #expect(f.keys.deletions.count == 1)
        #expect(f.keys.live.isEmpty)
        #expect(f.lessor.leases().isEmpty)
    }

    @Test func failedDeletionKeepsTheLeaseForARetry() throws {
        let f = try LeaseFixture()
        try f.lessor.grant(id: 1, ttl: 10)
        try f.put("a", lease: 1)
        f.keys.failNextDeletion()
        #expect(throws: FakeLeasedKeys.InjectedFailure.self) { try f.lessor.revoke(id: 1) }
        #expect(f.lessor.leases() == [1])
        #expect(try f.lessor.keys(of: 1) == [leaseKey("a")])
        try f.lessor.revoke(id: 1)
        #expect(f.keys.deletions == [.init(keys: [leaseKey("a")], lease: 1)])
    }

    @Test func revokingKeysWithoutADeleterIsAnError() throws {
        let lessor = try Lessor(clock: ManualLeaseClock(), persistence: InMemoryLeasePersistence())
        try lessor.grant(id: 1, ttl: 10)
        try lessor.revoke(id: 1)  // no keys: fine
        try lessor.grant(id: 2, ttl: 10)
        try lessor.attach(keys: [leaseKey("a")], to: 2)
        #expect(throws: LeaseError.noKeyDeleter) { try lessor.revoke(id: 2) }
        let keys = FakeLeasedKeys()
        lessor.setKeyDeleter(keys)
        try lessor.revoke(id: 2)
        #expect(keys.deletions == [.init(keys: [leaseKey("a")], lease: 2)])
    }
}

@Suite struct LeaseExpiryTests {
    @Test func onlyThePrimaryExpiresLeasesInExpiryOrder() throws {
        let f = try LeaseFixture()
        try f.lessor.grant(id: 1, ttl: 10)
        try f.lessor.grant(id: 2, ttl: 5)
        f.clock.advance(by: .seconds(100))
        #expect(f.lessor.expiredLeases().isEmpty)  // not primary: clocks stopped

        f.lessor.promote(extension: .zero)
        try f.lessor.grant(id: 3, ttl: 7)
        try f.lessor.grant(id: 4, ttl: 7)
        f.clock.advance(by: .milliseconds(4999))
        #expect(f.lessor.expiredLeases().isEmpty)
        f.clock.advance(by: .milliseconds(1))
        #expect(f.lessor.expiredLeases() == [2])
        f.clock.advance(by: .seconds(10))
        // 3 and 4 expired at +7 s, 2 is due for a retry at +8 s, 1 expired at +10 s.
        #expect(f.lessor.expiredLeases(limit: 2) == [3, 4])
        #expect(f.lessor.expiredLeases() == [2, 1])
    }

    @Test func unrevokedExpiredLeaseIsReportedAgainAfterTheRetryInterval() throws {
        let f = try LeaseFixture(config: LessorConfig(expiredRetryInterval: .seconds(3)))
        f.lessor.promote(extension: .zero)
        try f.lessor.grant(id: 1, ttl: 5)
        f.clock.advance(by: .seconds(5))
        #expect(f.lessor.expiredLeases() == [1])
        f.clock.advance(by: .milliseconds(2999))
        #expect(f.lessor.expiredLeases().isEmpty)
        f.clock.advance(by: .milliseconds(1))
        #expect(f.lessor.expiredLeases() == [1])
        try f.lessor.revoke(id: 1)
        f.clock.advance(by: .seconds(60))
        #expect(f.lessor.expiredLeases().isEmpty)
    }

    @Test func renewalPostponesExpiry() throws {
        let f = try LeaseFixture()
        f.lessor.promote(extension: .zero)
        try f.lessor.grant(id: 1, ttl: 10)
        for _ in 0..<5 {
            f.clock.advance(by: .seconds(9))
            #expect(f.lessor.expiredLeases().isEmpty)
            #expect(try f.lessor.renew(id: 1) == LeaseRenewal(ttl: 10))
        }
        f.clock.advance(by: .seconds(10))
        #expect(f.lessor.expiredLeases() == [1])
        #expect(throws: LeaseError.leaseExpired(1)) { try f.lessor.renew(id: 1) }
    }

    @Test func demotedLessorStopsExpiringAndPromotionExtends() throws {
        let f = try LeaseFixture()
        f.lessor.promote(extension: .zero)
        try f.lessor.grant(id: 1, ttl: 10)
        f.clock.advance(by: .seconds(8))
        f.lessor.demote()
        #expect(!f.lessor.isPrimary)
        f.clock.advance(by: .seconds(100))
        #expect(f.lessor.expiredLeases().isEmpty)
        #expect(throws: LeaseError.notPrimary) { try f.lessor.renew(id: 1) }

        // A new term: the full TTL plus the extension, from the promotion.
        f.lessor.promote(extension: .seconds(3))
        f.clock.advance(by: .milliseconds(12_999))
        #expect(f.lessor.expiredLeases().isEmpty)
        #expect(try f.lessor.timeToLive(id: 1).remainingTTL == 0)
        f.clock.advance(by: .milliseconds(1))
        #expect(f.lessor.expiredLeases() == [1])
    }

    @Test func promotionSpreadsExpiryPileUps() throws {
        let f = try LeaseFixture(config: LessorConfig(revokeRate: 100))
        for id in 1...1000 { try f.lessor.grant(id: Int64(id), ttl: 10) }
        f.lessor.promote(extension: .zero)
        var seen: [Int64] = []
        var perSecond: [Int] = []
        for _ in 0..<40 {
            f.clock.advance(by: .seconds(1))
            let expired = f.lessor.expiredLeases(limit: 10_000)
            for id in expired { try f.lessor.revoke(id: id) }
            seen += expired
            perSecond.append(expired.count)
        }
        #expect(Set(seen).count == 1000)
        #expect(perSecond.prefix(9).allSatisfy { $0 == 0 })  // nothing expires early
        #expect(perSecond.allSatisfy { $0 <= 75 })  // 3/4 of the revoke rate
    }

    @Test func spreadKeepsOrderAndCapsEveryWindow() {
        var rng = SplitMix64(seed: 99)
        let second: Int64 = 1_000_000_000
        var expiries = (0..<3000).map { i in (expiry: Int64.random(in: 0..<(20 * second), using: &rng), id: Int64(i)) }
        expiries.sort { $0.expiry < $1.expiry }
        let original = Dictionary(uniqueKeysWithValues: expiries.map { ($0.id, $0.expiry) })
        Lessor.spread(&expiries, perSecond: 50)
        #expect(expiries.allSatisfy { $0.expiry >= original[$0.id]! })
        #expect(zip(expiries, expiries.dropFirst()).allSatisfy { $0.expiry <= $1.expiry })
        // Any one-second window [t, t + 1 s) starting at an expiry holds at most twice the cap
        // (it can overlap two of the spreader's windows).
        var start = 0
        for end in expiries.indices {
            while expiries[end].expiry - expiries[start].expiry >= second { start += 1 }
            #expect(end - start + 1 <= 100)
        }
    }
}

@Suite struct LeaseCheckpointTests {
    private static let config = LessorConfig(checkpointInterval: .seconds(300))

    @Test func primaryEmitsCheckpointsForLongLeases() throws {
        let f = try LeaseFixture(config: Self.config)
        f.lessor.promote(extension: .zero)
        try f.lessor.grant(id: 1, ttl: 1000)
        try f.lessor.grant(id: 2, ttl: 200)  // shorter than the interval: never checkpointed
        f.clock.advance(by: .milliseconds(299_999))
        #expect(f.lessor.dueCheckpoints().isEmpty)
        f.clock.advance(by: .milliseconds(1))
        #expect(f.lessor.dueCheckpoints() == [LeaseCheckpoint(id: 1, remainingTTL: 700)])
        #expect(f.lessor.dueCheckpoints().isEmpty)
        f.clock.advance(by: .milliseconds(300_500))
        // Rounded up: 399.5 s left.
        #expect(f.lessor.dueCheckpoints() == [LeaseCheckpoint(id: 1, remainingTTL: 400)])
        // Scheduled while more than one interval was left.
        f.clock.advance(by: .seconds(300))
        #expect(f.lessor.dueCheckpoints() == [LeaseCheckpoint(id: 1, remainingTTL: 100)])
        // Under one interval left: no further checkpoint.
        f.clock.advance(by: .seconds(90))
        #expect(f.lessor.dueCheckpoints().isEmpty)

        let follower = try LeaseFixture(config: Self.config)
        try follower.lessor.grant(id: 1, ttl: 1000)
        follower.clock.advance(by: .seconds(900))
        #expect(follower.lessor.dueCheckpoints().isEmpty)

        let disabled = try LeaseFixture(config: LessorConfig(checkpointInterval: .seconds(300), checkpointsEnabled: false))
        disabled.lessor.promote(extension: .zero)
        try disabled.lessor.grant(id: 1, ttl: 1000)
        disabled.clock.advance(by: .seconds(600))
        #expect(disabled.lessor.dueCheckpoints().isEmpty)
    }

    @Test func appliedCheckpointIsPersistedAndUsedAtPromotion() throws {
        let f = try LeaseFixture(config: Self.config)
        try f.lessor.grant(id: 1, ttl: 1000)
        try f.lessor.applyCheckpoints([LeaseCheckpoint(id: 1, remainingTTL: 250), LeaseCheckpoint(id: 99, remainingTTL: 5)])
        #expect(try f.persistence.loadLeases() == [PersistedLease(id: 1, ttl: 1000, remainingTTL: 250)])
        #expect(try f.lessor.timeToLive(id: 1) == LeaseTimeToLive(id: 1, grantedTTL: 1000, remainingTTL: 250, keys: []))
        f.lessor.promote(extension: .seconds(2))
        f.clock.advance(by: .milliseconds(251_999))
        #expect(f.lessor.expiredLeases().isEmpty)
        f.clock.advance(by: .milliseconds(1))
        #expect(f.lessor.expiredLeases() == [1])
    }

    @Test func checkpointsBoundLifetimeAcrossLeaderChanges() throws {
        // Three members apply the same log; leadership moves every 290 s. Without checkpoints
        // each new leader would restart the full 1000 s TTL and the lease would never expire.
        let config = LessorConfig(checkpointInterval: .seconds(60))
        let clock = ManualLeaseClock(start: .seconds(50))
        let members = try (0..<3).map { _ in
            try Lessor(config: config, clock: clock, persistence: InMemoryLeasePersistence(), keyDeleter: FakeLeasedKeys())
        }
        for member in members { try member.grant(id: 1, ttl: 1000) }
        let leaderExtension: Duration = .seconds(2)
        var leader = 0
        members[leader].promote(extension: leaderExtension)
        var elapsed: Duration = .zero
        var expiredAfter: Duration?
        while expiredAfter == nil && elapsed < .seconds(5000) {
            clock.advance(by: .seconds(1))
            elapsed += .seconds(1)
            let due = members[leader].dueCheckpoints()
            for member in members { try member.applyCheckpoints(due) }
            if !members[leader].expiredLeases().isEmpty {
                expiredAfter = elapsed
                break
            }
            if elapsed.components.seconds % 290 == 0 {
                members[leader].demote()
                leader = (leader + 1) % members.count
                members[leader].promote(extension: leaderExtension)
            }
        }
        let lifetime = try #require(expiredAfter)
        // Each change can add at most the extension plus one checkpoint interval.
        #expect(lifetime >= .seconds(1000))
        #expect(lifetime <= .seconds(1000 + 4 * (2 + 60)))
    }

    @Test func renewalAsksToClearACheckpoint() throws {
        let f = try LeaseFixture(config: Self.config)
        try f.lessor.grant(id: 1, ttl: 1000)
        try f.lessor.applyCheckpoints([LeaseCheckpoint(id: 1, remainingTTL: 100)])
        f.lessor.promote(extension: .zero)
        let renewal = try f.lessor.renew(id: 1)
        #expect(renewal == LeaseRenewal(ttl: 1000, clearCheckpoint: LeaseCheckpoint(id: 1, remainingTTL: 0)))
        // The renewal counts from the full TTL even before the clear is applied.
        #expect(try f.lessor.timeToLive(id: 1).remainingTTL == 1000)
        try f.lessor.applyCheckpoints([renewal.clearCheckpoint!])
        #expect(try f.persistence.loadLeases() == [PersistedLease(id: 1, ttl: 1000, remainingTTL: 0)])
        #expect(try f.lessor.renew(id: 1).clearCheckpoint == nil)
    }
}

@Suite struct LeaseQueryTests {
    @Test func keepAliveAndTimeToLiveAnswers() throws {
        let f = try LeaseFixture()
        try f.lessor.grant(id: 1, ttl: 30)
        try f.put("b", lease: 1)
        try f.put("a", lease: 1)
        // Not primary: remaining is the granted TTL (the server asks the leader instead).
        #expect(try f.lessor.timeToLive(id: 1, includeKeys: true)
            == LeaseTimeToLive(id: 1, grantedTTL: 30, remainingTTL: 30, keys: [leaseKey("a"), leaseKey("b")]))
        #expect(throws: LeaseError.notPrimary) { try f.lessor.renew(id: 1) }

        f.lessor.promote(extension: .zero)
        f.clock.advance(by: .milliseconds(10_500))
        // Truncated like etcd: 19.5 s left reads 19.
        #expect(try f.lessor.timeToLive(id: 1) == LeaseTimeToLive(id: 1, grantedTTL: 30, remainingTTL: 19, keys: []))
        #expect(try f.lessor.renew(id: 1).ttl == 30)
        #expect(try f.lessor.timeToLive(id: 1).remainingTTL == 30)
        #expect(throws: LeaseError.leaseNotFound(2)) { try f.lessor.renew(id: 2) }
        #expect(throws: LeaseError.leaseNotFound(2)) { try f.lessor.timeToLive(id: 2) }
    }

    @Test func concurrentKeepAlivesWhileApplying() async throws {
        let f = try LeaseFixture()
        f.lessor.promote(extension: .zero)
        for id in 1...8 { try f.lessor.grant(id: Int64(id), ttl: 60) }
        let lessor = f.lessor
        try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    var renewed = 0
                    for round in 0..<500 {
                        let id = Int64((worker + round) % 8 + 1)
                        if (try? lessor.renew(id: id)) != nil { renewed += 1 }
                        _ = try? lessor.timeToLive(id: id, includeKeys: true)
                    }
                    return renewed
                }
            }
            group.addTask {
                for round in 0..<500 {
                    let id = Int64(round % 8 + 1)
                    try lessor.attach(keys: [leaseKey("k\(round)")], to: id)
                    if round % 50 == 49 {
                        try lessor.revoke(id: id)
                        try lessor.grant(id: id, ttl: 60)
                    }
                }
                return 0
            }
            var total = 0
            for try await renewed in group { total += renewed }
            #expect(total > 0)
        }
        #expect(lessor.leases() == Array(1...8))
        #expect(f.keys.deletions.count == 10)
    }
}

@Suite struct LeaseRestoreTests {
    @Test func restoreRecreatesLeasesAndTakesKeysFromMVCC() throws {
        let records = [
            PersistedLease(id: 3, ttl: 1, remainingTTL: 0),  // below the minimum: raised
            PersistedLease(id: 4, ttl: 600, remainingTTL: 120),
            PersistedLease(id: 9, ttl: 60, remainingTTL: 0),
        ]
        let f = try LeaseFixture(config: LessorConfig(minTTL: 5), records: records)
        #expect(f.lessor.leases() == [3, 4, 9])
        #expect(!f.lessor.isPrimary)
        #expect(try f.lessor.timeToLive(id: 3).grantedTTL == 5)
        #expect(try f.lessor.timeToLive(id: 4) == LeaseTimeToLive(id: 4, grantedTTL: 600, remainingTTL: 120, keys: []))
        #expect(try f.lessor.keys(of: 4).isEmpty)
        try f.lessor.attach(keys: [leaseKey("x")], to: 4)  // as the MVCC restore does

        f.lessor.promote(extension: .zero)
        f.clock.advance(by: .seconds(60))
        #expect(f.lessor.expiredLeases() == [3, 9])
        try f.lessor.revoke(id: 3)
        try f.lessor.revoke(id: 9)
        f.clock.advance(by: .seconds(60))
        #expect(f.lessor.expiredLeases() == [4])
    }

    @Test func restartedMemberSeesTheSameLeases() throws {
        let f = try LeaseFixture()
        try f.lessor.grant(id: 1, ttl: 10)
        try f.lessor.grant(id: 2, ttl: 20)
        try f.lessor.revoke(id: 1)
        try f.lessor.applyCheckpoints([LeaseCheckpoint(id: 2, remainingTTL: 7)])
        let restarted = try f.restarted()
        #expect(restarted.leases() == [2])
        #expect(try restarted.timeToLive(id: 2).remainingTTL == 7)
    }

    @Test func reloadReplacesStateAndKeepsPrimaryClocksRunning() throws {
        let f = try LeaseFixture()
        f.lessor.promote(extension: .zero)
        try f.lessor.grant(id: 1, ttl: 10)
        try f.lessor.attach(keys: [leaseKey("a")], to: 1)
        try f.persistence.saveLease(PersistedLease(id: 2, ttl: 30, remainingTTL: 0))
        try f.lessor.reload()
        #expect(f.lessor.leases() == [1, 2])
        #expect(try f.lessor.keys(of: 1).isEmpty)
        f.clock.advance(by: .seconds(10))
        #expect(f.lessor.expiredLeases() == [1])
    }

    struct BrokenStore: LeasePersistence {
        func saveLease(_ lease: PersistedLease) throws { throw LeaseError.corruptRecord("disk full") }
        func deleteLease(id: Int64) throws {}
        func loadLeases() throws -> [PersistedLease] { [] }
    }

    @Test func failedSaveLeavesNoLease() throws {
        let lessor = try Lessor(clock: ManualLeaseClock(), persistence: BrokenStore())
        #expect(throws: LeaseError.corruptRecord("disk full")) { try lessor.grant(id: 1, ttl: 10) }
        #expect(lessor.leases().isEmpty)
    }
}
