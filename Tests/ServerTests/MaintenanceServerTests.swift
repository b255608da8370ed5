import Crypto
import EtcdProto
import Foundation
import GRPCCore
import NIOCore
import Synchronization
import Testing
@testable import Server

/// Maintenance, Cluster, Lock, health, metrics and the gateway against a real in-process
/// single-member server.
@Suite struct MaintenanceServerTests {
    @Test(.timeLimit(.minutes(1))) func statusHashesSnapshotAndMembers() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        _ = try await s.put(putRequest("a", "1"))
        let status = try await s.status()
        #expect(status.leader == s.memberID)
        #expect(status.raftAppliedIndex >= 2)
        #expect(status.dbSize > 0 && status.dbSizeInUse > 0)
        #expect(status.version == EtcdVersion.server)

        let hkv = try await s.hashKV(Etcdserverpb_HashKVRequest())
        #expect(hkv.hashRevision == s.currentRevision)
        #expect(try await s.hashKV(Etcdserverpb_HashKVRequest()).hash == hkv.hash)

        let service = MaintenanceService(backend: s)
        let bytes = Mutex<[UInt8]>([])
        try await service.streamSnapshot { m in bytes.withLock { $0 += Array(m.blob) } }
        let all = bytes.withLock { $0 }
        #expect(all.count % 512 == 32)   // what `etcdctl snapshot save` checks
        #expect(Array(all.suffix(32)) == Array(SHA256.hash(data: all.dropLast(32))))

        let members = try await s.memberList(linearizable: true)
        #expect(members.map(\.id) == [s.memberID])

        let move = await #expect(throws: EtcdError.self) { try await s.moveLeader(to: s.memberID) }
        #expect(move?.message == "etcdserver: bad leader transferee")
        await s.stop()
    }

    @Test(.timeLimit(.minutes(1))) func lockAndHTTPRoutes() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        var grant = Etcdserverpb_LeaseGrantRequest()
        grant.ttl = 30
        let lease = try await s.leaseGrant(grant).id
        var lockRequest = V3lockpb_LockRequest()
        lockRequest.name = Data("mylock".utf8)
        lockRequest.lease = lease
        let locks = LockService(backend: s)
        let held = try await inContext { try await locks.lock(request: lockRequest, context: $0) }
        #expect(held.key == Data("mylock/\(String(UInt64(bitPattern: lease), radix: 16))".utf8))

        var router = HTTPRouter()
        s.registerHTTPRoutes(in: &router, metrics: ServerMetrics(memberID: s.memberID))
        let health = await router.respond(to: HTTPRequest(method: .GET, uri: "/health"))
        #expect(bodyText(health) == #"{"health":"true","reason":""}"#)
        let metrics = bodyText(await router.respond(to: HTTPRequest(method: .GET, uri: "/metrics")))
        #expect(metrics.contains("etcd_server_has_leader 1"))

        let put = await router.respond(to: HTTPRequest(method: .POST, uri: "/v3/kv/put",
                                                       body: ByteBuffer(string: #"{"key":"Zm9v","value":"YmFy"}"#)))
        #expect(put.status == .ok)
        let range = await router.respond(to: HTTPRequest(method: .POST, uri: "/v3/kv/range",
                                                         body: ByteBuffer(string: #"{"key":"Zm9v"}"#)))
        #expect(bodyText(range).contains(#""value":"YmFy""#))
        let lockedKey = held.key.base64EncodedString()
        let unlock = await router.respond(to: HTTPRequest(method: .POST, uri: "/v3/lock/unlock",
                                                          body: ByteBuffer(string: "{\"key\":\"\(lockedKey)\"}")))
        #expect(unlock.status == .ok)
        #expect(try await s.range(rangeRequest("mylock/", end: "mylock0")).kvs.isEmpty)
        await s.stop()
    }
}
