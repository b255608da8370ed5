import EtcdProto
import NIOCore
import NIOHTTP1
import Synchronization
import Testing
@testable import Server

/// A server state the health checks read; each part can be switched in a test.
final class FakeHealthSource: HealthSource {
    struct State {
        var hasLeader = true
        var isLearner = false
        var alarms: [Etcdserverpb_AlarmType] = []
        var serializableFails = false
        var linearizableHangs = false
        var linearizableFails = false
    }
    let state = Mutex(State())

    var hasLeader: Bool { state.withLock { $0.hasLeader } }
    var isLearner: Bool { state.withLock { $0.isLearner } }
    func activeAlarms() -> [Etcdserverpb_AlarmType] { state.withLock { $0.alarms } }
    func serializableRead() async throws {
        if state.withLock({ $0.serializableFails }) { throw FakeError("store closed") }
    }
    func linearizableRead() async throws {
        let (hang, fail) = state.withLock { ($0.linearizableHangs, $0.linearizableFails) }
        if fail { throw FakeError("etcdserver: leader changed") }
        if hang { try await Task.sleep(for: .seconds(60)) }
    }
}

struct FakeError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The complete body of a non-streamed response as text.
func bodyText(_ response: HTTPResponse) -> String {
    guard case .bytes(var buffer) = response.body else { return "<stream>" }
    return buffer.readString(length: buffer.readableBytes) ?? ""
}

@Suite struct HealthTests {
    func get(_ endpoints: HealthEndpoints, _ uri: String) async -> HTTPResponse {
        var router = HTTPRouter()
        endpoints.register(in: &router)
        return await router.respond(to: HTTPRequest(method: .GET, uri: uri))
    }

    @Test func healthyMemberAnswersTrue() async {
        let endpoints = HealthEndpoints(source: FakeHealthSource())
        let r = await get(endpoints, "/health")
        #expect(r.status == .ok)
        #expect(bodyText(r) == #"{"health":"true","reason":""}"#)
    }

    @Test func noLeaderIsUnhealthy() async {
        let source = FakeHealthSource()
        source.state.withLock { $0.hasLeader = false }
        let r = await get(HealthEndpoints(source: source), "/health")
        #expect(r.status == .serviceUnavailable)
        #expect(bodyText(r) == #"{"health":"false","reason":"RAFT NO LEADER"}"#)
    }

    @Test func nospaceAlarmCanBeExcludedButCorruptCannot() async {
        let source = FakeHealthSource()
        source.state.withLock { $0.alarms = [.nospace] }
        let endpoints = HealthEndpoints(source: source)
        #expect(bodyText(await get(endpoints, "/health")) == #"{"health":"false","reason":"ALARM NOSPACE"}"#)
        #expect(await get(endpoints, "/health?exclude=NOSPACE").status == .ok)
        source.state.withLock { $0.alarms = [.corrupt] }
        let r = await get(endpoints, "/health?exclude=CORRUPT")
        #expect(r.status == .serviceUnavailable)
        #expect(bodyText(r).contains("ALARM CORRUPT"))
    }

    @Test func stuckLinearizableReadTimesOutUnlessSerializable() async {
        let source = FakeHealthSource()
        source.state.withLock { $0.linearizableHangs = true }
        let endpoints = HealthEndpoints(source: source, timeout: .milliseconds(50))
        let r = await get(endpoints, "/health")
        #expect(r.status == .serviceUnavailable)
        #expect(bodyText(r).contains("QGET ERROR:context deadline exceeded"))
        #expect(await get(endpoints, "/health?serializable=true").status == .ok)
    }

    @Test func livezChecksOnlyTheLocalRead() async {
        let source = FakeHealthSource()
        source.state.withLock { $0.linearizableFails = true }
        let endpoints = HealthEndpoints(source: source)
        let live = await get(endpoints, "/livez")
        #expect(live.status == .ok)
        #expect(bodyText(live) == "ok")
        source.state.withLock { $0.serializableFails = true }
        let dead = await get(endpoints, "/livez")
        #expect(dead.status == .serviceUnavailable)
        #expect(bodyText(dead).contains("[-]serializable_read failed: store closed"))
        #expect(bodyText(dead).hasSuffix("livez check failed\n"))
    }

    @Test func readyzReportsEachCheckAndHonoursExclude() async {
        let source = FakeHealthSource()
        let endpoints = HealthEndpoints(source: source)
        let verbose = bodyText(await get(endpoints, "/readyz?verbose"))
        #expect(verbose == "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nreadyz check passed\n")

        source.state.withLock { $0.linearizableFails = true }
        let failed = await get(endpoints, "/readyz")
        #expect(failed.status == .serviceUnavailable)
        #expect(bodyText(failed).contains("[-]linearizable_read failed: etcdserver: leader changed"))
        let excluded = await get(endpoints, "/readyz?exclude=linearizable_read&verbose")
        #expect(excluded.status == .ok)
        #expect(bodyText(excluded).contains("[+]linearizable_read excluded: ok"))

        source.state.withLock { $0.linearizableFails = false; $0.alarms = [.corrupt] }
        #expect(bodyText(await get(endpoints, "/readyz")).contains("[-]data_corruption failed: alarm activated: CORRUPT"))
    }

    /// A learner is ready for what it serves (serializable reads, with a leader, no CORRUPT
    /// alarm): the linearizable check, which a learner can never pass, is skipped and says so.
    @Test func learnerIsReadyWithoutLinearizableReads() async {
        let source = FakeHealthSource()
        source.state.withLock { $0.isLearner = true; $0.linearizableFails = true }
        let endpoints = HealthEndpoints(source: source)
        let r = await get(endpoints, "/readyz?verbose")
        #expect(r.status == .ok)
        #expect(bodyText(r) == "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read skipped: learner\nreadyz check passed\n")
        #expect(bodyText(await get(endpoints, "/readyz")) == "ok")

        // A learner that knows no leader is not ready.
        source.state.withLock { $0.hasLeader = false }
        let lost = await get(endpoints, "/readyz")
        #expect(lost.status == .serviceUnavailable)
        #expect(bodyText(lost).contains("[-]linearizable_read failed: RAFT NO LEADER"))
        // Nor is one whose copy cannot be read, or that is CORRUPT.
        source.state.withLock { $0.hasLeader = true; $0.serializableFails = true }
        #expect(await get(endpoints, "/readyz").status == .serviceUnavailable)
        source.state.withLock { $0.serializableFails = false; $0.alarms = [.corrupt] }
        #expect(await get(endpoints, "/readyz").status == .serviceUnavailable)

        // Promoted: the linearizable check runs again.
        source.state.withLock { $0.alarms = []; $0.isLearner = false }
        let voter = await get(endpoints, "/readyz")
        #expect(voter.status == .serviceUnavailable)
        #expect(bodyText(voter).contains("[-]linearizable_read failed: etcdserver: leader changed"))
    }
}
