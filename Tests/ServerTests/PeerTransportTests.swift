import Crypto
import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Raft
@testable import Server
import MVCC
import Synchronization
import Testing

/// Three real RaftNodes that talk only through PeerTransports and PeerServers on loopback.
@Suite("Peer transport", .serialized)
struct PeerTransportTests {
    @Test("Three members elect a leader and commit proposals on all three")
    func electAndReplicate() async throws {
        let cluster = try PeerTestCluster()
        try await cluster.start()
        let lead = await cluster.leader()
        try #require(lead != 0, "no leader elected: \(cluster.describe())")

        var values: [String] = []
        var repeated: Set<String> = []
        for i in 0..<20 {
            // Every other proposal goes to a follower, which forwards it over the transport.
            let target = i % 2 == 0 ? lead : cluster.ids.first { $0 != lead } ?? lead
            // One at a time, so the applied order is known.
            values.append("v\(i)")
            let applied = await cluster.propose(values, via: target, among: [lead], repeatable: &repeated)
            try #require(applied, "v\(i) not applied on the leader")
        }
        #expect(await cluster.allApplied(values, repeatable: repeated))
        // Every member applied the same entries, repeats included.
        let applied = cluster.ids.compactMap { cluster.members[$0]?.view.current.data }
        #expect(Set(applied.map { $0.joined(separator: ",") }).count == 1, "members applied different logs: \(applied)")
        for id in cluster.ids {
            for peer in cluster.ids where peer != id {
                #expect(cluster.transports[id]?.isActive(peer) == true, "\(id) → \(peer) not active")
            }
        }
        await cluster.shutdown()
    }

    @Test("Forwarded lease calls ride the Messages stream's connection, not a connection each")
    func forwardedLeaseCallsShareTheStreamConnection() async throws {
        let cluster = try PeerTestCluster()
        try await cluster.start()
        let handler = FixedLeaseHandler()
        for id in cluster.ids { cluster.transports[id]?.setLeaseHandler(handler) }
        let (from, to) = (cluster.ids[0], cluster.ids[1])
        let sender = try #require(cluster.transports[from])
        let receiver = try #require(cluster.servers[to])
        // Wait for the streams (the Raft traffic of the election brings them up): every
        // member's, so that no member's connection is still arriving while counting.
        let transports = cluster.ids.filter { $0 != to }.compactMap { cluster.transports[$0] }
        try await waitUntil { transports.allSatisfy { $0.isActive(to) } }
        // ... and admitted by the receiver: a link holds the handshake's connection and, on
        // the fast path, the raw stream's own (the dialler may see it up before it is accepted).
        let perLink = sender.options.fastSend ? 2 : 1
        try await waitUntil { receiver.admittedConnections == transports.count * perLink }
        let before = receiver.admittedConnections

        // 200 renewals, 50 at a time: every answer right, no new connection admitted.
        try await withThrowingTaskGroup(of: Int64.self) { group in
            for i in 0..<200 {
                if i >= 50 { _ = try await group.next() }
                group.addTask { try await sender.forwardLeaseRenew(7, to: to, timeout: .seconds(10)) }
            }
            for try await ttl in group { #expect(ttl == 42) }
        }
        let ttl = try await sender.forwardLeaseTimeToLive(Etcdserverpb_LeaseTimeToLiveRequest.with { $0.id = 7 }, to: to, timeout: .seconds(10))
        #expect(ttl.ttl == 42)
        // The remote member's own error comes back as etcd's error, not a transport failure.
        await #expect(throws: EtcdError.from(LeaseError.leaseNotFound(8))) {
            try await sender.forwardLeaseRenew(8, to: to, timeout: .seconds(10))
        }
        #expect(handler.renewals.withLock { $0 } == 201)
        #expect(receiver.admittedConnections == before, "forwarded calls opened \(receiver.admittedConnections - before) connections")

        // Without the stream (the receiver's listener restarted on the same port, so the old
        // connection is gone), a call still gets through.
        await cluster.stopTransport(to)
        try await cluster.restartTransport(to)
        cluster.transports[to]?.setLeaseHandler(handler)
        #expect(try await sender.forwardLeaseRenew(7, to: to, timeout: .seconds(10)) == 42)
        await cluster.shutdown()
    }

    @Test("Forwarded renewals in one batch get their own answers; a leader without LeaseRenewBatch gets one call each")
    func batchedRenewalsAndOlderLeader() async throws {
        let cluster = try PeerTestCluster()
        cluster.withoutRenewBatch = [cluster.ids[2]]
        try await cluster.start()
        let handler = FixedLeaseHandler()
        for id in cluster.ids { cluster.transports[id]?.setLeaseHandler(handler) }
        let sender = try #require(cluster.transports[cluster.ids[0]])
        for to in [cluster.ids[1], cluster.ids[2]] {
            try await waitUntil { sender.isActive(to) }
            // Known and unknown leases mixed, many at once: each renewal gets its own answer.
            try await withThrowingTaskGroup(of: (Int64, Int64?).self) { group in
                for i in 0..<100 {
                    let id: Int64 = i % 4 == 0 ? 8 : 7
                    group.addTask {
                        do {
                            return (id, try await sender.forwardLeaseRenew(id, to: to, timeout: .seconds(10)))
                        } catch let e as EtcdError where e == EtcdError.from(LeaseError.leaseNotFound(8)) {
                            return (id, nil)
                        }
                    }
                }
                for try await (id, ttl) in group { #expect(ttl == (id == 7 ? 42 : nil), "lease \(id)") }
            }
        }
        await cluster.shutdown()
    }

    @Test("A stopped transport: the others elect a leader; the member catches up after a restart")
    func stopAndRestart() async throws {
        let cluster = try PeerTestCluster()
        try await cluster.start()
        let first = await cluster.leader()
        try #require(first != 0, "no leader elected: \(cluster.describe())")
        var repeated: Set<String> = []
        try #require(await cluster.propose(["before"], via: first, among: cluster.ids, repeatable: &repeated))

        // Cut the leader off: the other two must elect one of themselves.
        await cluster.stopTransport(first)
        let others = cluster.ids.filter { $0 != first }
        let second = await cluster.leader(among: others)
        try #require(second != 0, "the remaining members kept no leader")
        var values = ["before"]
        for i in 0..<5 {
            values.append("during\(i)")
            let applied = await cluster.propose(values, via: second, among: [second], repeatable: &repeated)
            try #require(applied, "during\(i) not applied on the new leader")
        }
        #expect(await cluster.allApplied(values, among: others, repeatable: repeated))
        #expect(cluster.members[first]?.view.current.data.allSatisfy { $0 == "before" } == true,
                "the cut-off member must not apply new entries")

        // Back on the same port: it learns the new leader and catches up.
        try await cluster.restartTransport(first)
        #expect(await cluster.allApplied(values, repeatable: repeated))
        let third = await cluster.leader()
        #expect(third != 0)
        values.append("after")
        #expect(await cluster.propose(values, via: third, among: cluster.ids, repeatable: &repeated))
        await cluster.shutdown()
    }

    @Test("A peer from another cluster is refused and its messages are never delivered")
    func foreignClusterRefused() async throws {
        let cluster = try PeerTestCluster()
        try await cluster.start()
        let lead = await cluster.leader()
        try #require(lead != 0)
        let target = try #require(cluster.urls[1])
        let termBefore = try #require(cluster.members[1]).view.current.term

        // A full transport configured with another cluster ID, dialling member 1.
        let foreignID: UInt64 = 9
        let foreignLogs = Watched<[CapturedLog.Record]>([])
        let recorder = RecordingDelegate()
        let foreign = PeerTransport(localID: foreignID, clusterID: 0xbad, snapshotDirectory: cluster.directory + "/foreign",
                                    delegate: recorder, snapshots: try #require(cluster.backends[1]),
                                    logger: CapturedLog.logger("foreign", into: foreignLogs))
        foreign.addPeer(1, urls: [target])
        await foreign.start()
        // Member 1 logs the refused handshake; the foreign side logs the refusal it got.
        let refused = await cluster.logs.wait { records in
            records.contains { $0.message == "refused peer" && $0.metadata["remote-peer-id"] == "9" }
        }
        #expect(refused)
        #expect(await foreignLogs.wait { $0.contains { $0.level == .error && $0.metadata["error"]?.contains("cluster ID mismatch") == true } })
        #expect(!foreign.isActive(1))
        foreign.send([Raft.Message(type: .heartbeat, to: 1, from: foreignID, term: termBefore + 100)])
        #expect(recorder.events.current.unreachable.count >= 1, "a dropped message reports the peer unreachable")
        await foreign.stop()

        // The same with a raw client that skips the handshake: the stream is ended.
        let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: target.host, port: target.port),
                                                       transportSecurity: .plaintext)
        let error = await #expect(throws: RPCError.self) {
            try await withGRPCClient(transport: transport) { client in
                try await Swetcd_Peer_Peer.Client(wrapping: client).messages { writer in
                    var batch = Swetcd_Peer_MessageBatch()
                    batch.clusterID = 0xbad
                    batch.from = foreignID
                    batch.to = 1
                    batch.messages = [Data(Raft.Message(type: .heartbeat, to: 1, from: foreignID, term: termBefore + 100).encode())]
                    try await writer.write(batch)
                } onResponse: { response in
                    for try await _ in response.messages {}
                }
            }
        }
        #expect(error?.code == .failedPrecondition)
        let member1 = try #require(cluster.members[1])
        #expect(!member1.view.current.receivedFrom.contains(foreignID))
        #expect(member1.view.current.term < termBefore + 100)
        await cluster.shutdown()
    }

    @Test("A lagging member gets a snapshot: a corrupt body is refused and reported, a good one installed")
    func snapshotToLaggingFollower() async throws {
        let size = 3 << 20 + 12345
        let cluster = try PeerTestCluster(backendSize: size, badHashes: 1)
        try await cluster.start()
        let lead = await cluster.leader()
        try #require(lead != 0)
        let lagging = try #require(cluster.ids.first { $0 != lead })
        let others = cluster.ids.filter { $0 != lagging }

        await cluster.stopTransport(lagging)
        var values: [String] = []
        var repeated: Set<String> = []
        for i in 0..<10 {
            values.append("s\(i)")
            try #require(await cluster.propose(values, via: lead, among: [lead], repeatable: &repeated))
        }
        #expect(await cluster.allApplied(values, among: others, repeatable: repeated))
        // Compact the leader's log past everything the lagging member has. (No proposal
        // until the member is back: an append attempt now would already need a snapshot.)
        // Both remaining members compact: under load leadership may move between them, and
        // whichever leads must need a snapshot to bring the lagging member back.
        for o in others { cluster.members[o]?.enqueue(.compact) }
        for o in others { #expect(await cluster.members[o]?.view.wait { $0.snapshotIndex > 0 } == true) }

        try await cluster.restartTransport(lagging)
        #expect(await cluster.allApplied(values, repeatable: repeated), "the lagging member did not catch up")
        values.append("s10")
        #expect(await cluster.propose(values, via: lead, among: cluster.ids, repeatable: &repeated))
        // First attempt: announced a wrong SHA-256, refused by the receiver, reported as failed.
        // (The sender learns of success from the ack, possibly after the member applied it.)
        let senders = others.compactMap { cluster.members[$0] }
        var sender = senders.first { $0.view.current.snapshotReports.contains { $0.peer == lagging && $0.success } }
        let deadline = ContinuousClock.now + .seconds(30)
        while sender == nil && ContinuousClock.now < deadline {
            for m in senders where await m.view.wait(timeout: .milliseconds(200), until: { $0.snapshotReports.contains { $0.peer == lagging && $0.success } }) {
                sender = m
                break
            }
        }
        let reports = try #require(sender, "no member reported a snapshot sent successfully").view.current.snapshotReports
        #expect(reports.first { $0.peer == lagging }?.success == false)
        #expect(cluster.logs.current.contains { $0.message == "refused snapshot" && $0.metadata["reason"] == "SHA-256 mismatch" })

        let member = try #require(cluster.members[lagging])
        #expect(member.view.current.snapshotIndex > 0)
        let file = try #require(member.view.current.receivedSnapshotFiles.last)
        #expect(file.hasPrefix(cluster.snapshotDirectory(lagging) + "/"))
        #expect(file.hasSuffix(".snap.db"))
        let body = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(body.count == size)
        #expect(others.contains { Array(SHA256.hash(data: body)) == cluster.backends[$0]?.sha256 })
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: cluster.snapshotDirectory(lagging))
        #expect(leftovers.allSatisfy { !$0.hasSuffix(".tmp") }, "\(leftovers)")
        await cluster.shutdown()
    }
}
