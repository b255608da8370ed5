import EtcdConfig
import EtcdProto
import Foundation
import LMDBBackend
import Logging
import Storage
import Testing
@testable import Server

#if canImport(Glibc)
import Glibc
#endif

/// Starts an in-process member with `args` (etcd flags).
private func startMember(_ args: [String]) async throws -> EtcdServer {
    guard case .run(let loaded) = try ConfigLoader.load(arguments: args, environment: [:]) else {
        throw ServerStartError("unexpected config outcome")
    }
    var logger = Logger(label: "quota-test")
    logger.logLevel = ProcessInfo.processInfo.environment["QUOTA_DEBUG"] != nil ? .warning : .critical
    return try await EtcdServer.start(loaded, logger: logger)
}

private func alarmRequest(_ action: Etcdserverpb_AlarmRequest.AlarmAction, _ member: UInt64 = 0,
                          _ type: Etcdserverpb_AlarmType = .none) -> Etcdserverpb_AlarmRequest {
    var r = Etcdserverpb_AlarmRequest()
    r.action = action
    r.memberID = member
    r.alarm = type
    return r
}

/// Polls `condition` every 20 ms until it holds or `limit` passes (other threads' progress
/// offers no event to await here).
private func waitFor(_ what: String, limit: Duration = .seconds(60), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + limit
    while try await !condition() {
        if ContinuousClock.now >= deadline { throw ServerStartError("timed out waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(20))
    }
}

/// A loopback port nobody listens on right now, below the kernel's ephemeral range: a member
/// restarted on it later must find it free, and the ephemeral range is where every outgoing
/// connection of the tests running in parallel takes its local port (one took a stopped
/// member's port once, and its restart failed to bind).
private func freePort() throws -> Int {
    let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
        .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) } ?? []
    let low = range.first ?? 32768
    var rng = SystemRandomNumberGenerator()
    for _ in 0..<200 {
        let candidate = low > 12000 ? Int.random(in: 10000..<(low - 1), using: &rng) : 0
        if let port = try? bindable(candidate) { return port }
    }
    return try bindable(0)
}

/// Binds `port` (0: any) on 127.0.0.1 and releases it; returns the port, or throws if taken.
private func bindable(_ port: Int) throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ServerStartError("socket() failed") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
    }
    guard ok else { throw ServerStartError("bind() failed") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

@Suite("Quota and alarms (in-process server)", .serialized)
struct QuotaAlarmServerTests {
    @Test func nospaceIsRaisedEnforcedPersistedAndDisarmed() async throws {
        let fixture = CoreFixture()
        defer { fixture.remove() }
        let small = fixture.args + ["--quota-backend-bytes", "\(256 * 1024)"]
        var s = try await startMember(small)
        let big = String(repeating: "x", count: 32 * 1024)
        var failure: (any Error)?
        for i in 0..<200 {
            do { _ = try await s.put(putRequest("k\(i)", big)) } catch {
                failure = error
                break
            }
        }
        #expect(failure as? EtcdError == EtcdError.noSpace)
        #expect(EtcdError.noSpace.code == .resourceExhausted)

        // The member raised NOSPACE through the log: listed, in Status and for /health.
        let listed = try await s.alarm(alarmRequest(.get))
        #expect(listed.alarms.map(\.memberID) == [s.memberID])
        #expect(listed.alarms.map(\.alarm) == [.nospace])
        #expect(try await s.status().errors == ["memberID:\(s.memberID) alarm:NOSPACE "])
        #expect(s.activeAlarms() == [.nospace])

        // Reads, deletes, read-only txns and compaction go on; puts, put txns and grants fail.
        #expect(try await s.range(rangeRequest("k0")).kvs.count == 1)
        var del = Etcdserverpb_DeleteRangeRequest()
        del.key = Data("k0".utf8)
        #expect(try await s.deleteRange(del).deleted == 1)
        var readOnly = Etcdserverpb_TxnRequest()
        var read = Etcdserverpb_RequestOp()
        read.requestRange = rangeRequest("k1")
        readOnly.success = [read]
        #expect(try await s.txn(readOnly).succeeded)
        var writing = Etcdserverpb_TxnRequest()
        var op = Etcdserverpb_RequestOp()
        op.requestPut = putRequest("t", "v")
        writing.success = [op]
        await #expect(throws: EtcdError.noSpace) { _ = try await s.txn(writing) }
        var grant = Etcdserverpb_LeaseGrantRequest()
        grant.ttl = 60
        await #expect(throws: EtcdError.noSpace) { _ = try await s.leaseGrant(grant) }
        var compaction = Etcdserverpb_CompactionRequest()
        compaction.revision = s.currentRevision
        _ = try await s.compact(compaction)
        await s.stop()

        // Restart with room to spare: the alarm survived, and apply still refuses puts.
        s = try await startMember(fixture.args + ["--quota-backend-bytes", "\(64 << 20)"])
        #expect(try await s.alarm(alarmRequest(.get)).alarms.map(\.alarm) == [.nospace])
        await #expect(throws: EtcdError.noSpace) { _ = try await s.put(putRequest("small", "v")) }
        // Disarming (what `etcdctl alarm disarm` sends) restores writes.
        let cleared = try await s.alarm(alarmRequest(.deactivate, s.memberID, .nospace))
        #expect(cleared.alarms.map(\.alarm) == [.nospace])
        #expect(try await s.alarm(alarmRequest(.get)).alarms.isEmpty)
        _ = try await s.put(putRequest("small", "v"))
        _ = try await s.leaseGrant(grant)
        #expect(try await s.status().errors.isEmpty)
        #expect(s.activeAlarms().isEmpty)
        // Clearing an alarm that is not raised changes nothing.
        #expect(try await s.alarm(alarmRequest(.deactivate, s.memberID, .nospace)).alarms.isEmpty)
        await s.stop()
    }

    @Test func clientActivatedCorruptAlarmRefusesChangesButNotReads() async throws {
        let fixture = CoreFixture()
        defer { fixture.remove() }
        let s = try await startMember(fixture.args)
        _ = try await s.put(putRequest("a", "1"))
        _ = try await s.alarm(alarmRequest(.activate, 42, .corrupt))
        #expect(s.activeAlarms() == [.corrupt])
        #expect(try await s.status().errors == ["memberID:42 alarm:CORRUPT "])
        await #expect(throws: EtcdError.corrupt) { _ = try await s.put(putRequest("a", "2")) }
        var del = Etcdserverpb_DeleteRangeRequest()
        del.key = Data("a".utf8)
        await #expect(throws: EtcdError.corrupt) { _ = try await s.deleteRange(del) }
        #expect(try await s.range(rangeRequest("a")).kvs.first?.value == Data("1".utf8))
        // NONE is not an alarm: activating it changes nothing.
        #expect(try await s.alarm(alarmRequest(.activate, 42, .none)).alarms.isEmpty)
        _ = try await s.alarm(alarmRequest(.deactivate, 42, .corrupt))
        _ = try await s.put(putRequest("a", "2"))
        await s.stop()
    }

    @Test func quotaCanBeDisabled() async throws {
        let fixture = CoreFixture()
        defer { fixture.remove() }
        // A 1-byte quota would refuse every put; a negative one disables the check.
        let s = try await startMember(fixture.args + ["--quota-backend-bytes", "-1"])
        _ = try await s.put(putRequest("a", String(repeating: "x", count: 64 * 1024)))
        #expect(s.quota.limit == nil)
        #expect(s.metricsSample().quotaBackendBytes == 0)
        await s.stop()
    }
}

@Suite("Corruption checks (two in-process members)", .serialized)
struct CorruptCheckServerTests {
    /// Appends a byte to the value of the newest key-bucket entry of a stopped member's backend.
    private func tamper(dataDir: String) throws {
        let backend = try Backend(path: DataDir(path: dataDir).backendPath)
        var last: ([UInt8], [UInt8])?
        try backend.read { r in
            try r.scan(.key, from: [], to: nil) { k, v in
                last = ([UInt8](k), [UInt8](v))
                return true
            }
        }
        let (key, value) = try #require(last)
        try backend.batch { try backend.put(.key, key: key, value: value + [0x21]) }
        try backend.commit()
        try backend.close()
    }

    @Test func mismatchRefusesStartAndRaisesCorrupt() async throws {
        let ports = [try freePort(), try freePort()]
        let dirs = (0..<2).map { _ in NSTemporaryDirectory() + "swetcd-corrupt-\(UUID().uuidString.prefix(8))" }
        defer { for d in dirs { try? FileManager.default.removeItem(atPath: d) } }
        let cluster = "n0=http://127.0.0.1:\(ports[0]),n1=http://127.0.0.1:\(ports[1])"
        func args(_ i: Int, _ extra: [String] = []) -> [String] {
            ["--name", "n\(i)", "--data-dir", dirs[i], "--initial-cluster", cluster,
             "--initial-advertise-peer-urls", "http://127.0.0.1:\(ports[i])", "--listen-peer-urls", "http://127.0.0.1:\(ports[i])",
             "--heartbeat-interval", "50", "--election-timeout", "1000"] + extra
        }
        let check = ["--experimental-corrupt-check-time", "100ms"]
        async let a = startMember(args(0, check))
        async let b = startMember(args(1, check))
        var servers = [try await a, try await b]
        try await waitFor("a leader") { servers.allSatisfy { $0.leaderID != 0 } }
        for i in 0..<5 { _ = try await servers[0].put(putRequest("k\(i)", "v\(i)")) }
        let revision = servers[0].currentRevision
        try await waitFor("both members at the last write") { servers.allSatisfy { $0.currentRevision == revision } }

        // In agreement: the leader's check finds nothing, and an initial check passes.
        let leader = try #require(servers.first { $0.isLeader })
        #expect(try await leader.periodicCorruptCheck().isEmpty)
        try await servers[1].initialCorruptCheck()
        #expect(servers.allSatisfy { $0.activeAlarms().isEmpty })

        // Member 1's data changes behind Raft's back: with the initial check it refuses to start.
        await servers[1].stop()
        try tamper(dataDir: dirs[1])
        let refusal = await #expect(throws: ServerStartError.self) {
            _ = try await startMember(args(1, ["--experimental-initial-corrupt-check"]))
        }
        #expect(refusal?.description.contains("found data inconsistency with peers \(String(servers[0].memberID, radix: 16))") == true,
                "\(String(describing: refusal))")

        // Started without it, the leader's periodic check raises CORRUPT through the log.
        servers[1] = try await startMember(args(1, check))
        try await waitFor("a CORRUPT alarm") { servers.allSatisfy { $0.activeAlarms() == [.corrupt] } }
        let raised = try await servers[0].alarm(alarmRequest(.get))
        #expect(raised.alarms.count == 1)
        #expect(raised.alarms.allSatisfy { $0.alarm == .corrupt })
        await #expect(throws: EtcdError.corrupt) { _ = try await servers[0].put(putRequest("k9", "v")) }
        #expect(try await servers[1].range(rangeRequest("k0", serializable: true)).kvs.count == 1)
        for s in servers { await s.stop() }
    }
}
