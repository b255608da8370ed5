// Test scaffolding for the peer transport: real RaftNodes on their own loop threads,
// connected only through PeerTransports and PeerServers on loopback.

import Crypto
import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import Logging
import MVCC
import Raft
@testable import Server
import Synchronization

/// A value that changes over time, with waiters for a condition on it (bounded).
final class Watched<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    private var waiters: [UUID: (@Sendable (Value) -> Bool, CheckedContinuation<Bool, Never>)] = [:]

    init(_ value: Value) { self.value = value }

    var current: Value { lock.withLock { value } }

    func update(_ change: (inout Value) -> Void) {
        let ready: [CheckedContinuation<Bool, Never>] = lock.withLock {
            change(&value)
            let matched = waiters.filter { $0.value.0(value) }
            for key in matched.keys { waiters.removeValue(forKey: key) }
            return matched.values.map(\.1)
        }
        for waiter in ready { waiter.resume(returning: true) }
    }

    /// True once `condition` holds; false if it did not within `timeout`.
    func wait(timeout: Duration = .seconds(30), until condition: @escaping @Sendable (Value) -> Bool) async -> Bool {
        let key = UUID()
        return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let holds = lock.withLock {
                if condition(value) { return true }
                waiters[key] = (condition, continuation)
                return false
            }
            if holds {
                continuation.resume(returning: true)
                return
            }
            Task {
                try? await Task.sleep(for: timeout)
                let expired = self.lock.withLock { self.waiters.removeValue(forKey: key) }
                expired?.1.resume(returning: false)
            }
        }
    }
}

/// Log records kept for assertions (and printed when PEER_TEST_LOG is set).
struct CapturedLog: LogHandler {
    struct Record: Sendable {
        let level: Logger.Level
        let message: String
        let metadata: [String: String]
    }

    let records: Watched<[Record]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .debug

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all: [String: String] = [:]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { all[key] = "\(value)" }
        let record = Record(level: event.level, message: "\(event.message)", metadata: all)
        if ProcessInfo.processInfo.environment["PEER_TEST_LOG"] != nil {
            print("[\(event.level)] \(event.message) \(all)")
        }
        records.update { $0.append(record) }
    }

    static func logger(_ label: String, into records: Watched<[Record]>) -> Logger {
        Logger(label: label, factory: { _ in CapturedLog(records: records) })
    }
}

/// A fake backend: a file of pseudo-random bytes. The first `badHashes` transfers announce
/// a wrong SHA-256; later ones leave hashing to the transport.
final class FakeBackend: BackendSnapshotSource {
    let path: String
    let sha256: [UInt8]
    let size: Int
    private let badHashes: Mutex<Int>
    let opened = Mutex(0)

    init(directory: String, size: Int, badHashes: Int = 0) throws {
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: size)
        for i in stride(from: 0, to: size, by: 8) {
            let word = generator.next() as UInt64
            for j in 0..<min(8, size - i) { bytes[i + j] = UInt8(truncatingIfNeeded: word >> (8 * j)) }
        }
        path = "\(directory)/fake-backend.db"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        sha256 = Array(SHA256.hash(data: bytes))
        self.size = size
        self.badHashes = Mutex(badHashes)
    }

    func openBackendSnapshot() throws -> any BackendSnapshotReader {
        opened.withLock { $0 += 1 }
        let bad = badHashes.withLock { n -> Bool in
            defer { n = max(0, n - 1) }
            return n > 0
        }
        return try FileBackendSnapshotReader(path: path, sha256: bad ? [UInt8](repeating: 0xAB, count: 32) : nil)
    }
}

/// What a member's loop publishes after each round.
struct MemberView: Sendable {
    var lead: UInt64 = 0
    var role: RaftRole = .follower
    var term: UInt64 = 0
    var applied: UInt64 = 0
    var snapshotIndex: UInt64 = 0
    /// The state machine: data of applied normal entries, in order.
    var data: [String] = []
    var receivedSnapshotFiles: [String] = []
    var snapshotReports: [(peer: UInt64, success: Bool)] = []
    var receivedFrom: Set<UInt64> = []
}

/// One Raft member driven by its own thread (ticks, inbox, Ready handling), as the core does.
final class TestMember: RaftTransportDelegate, @unchecked Sendable {
    enum Event {
        case messages([Raft.Message])
        case snapshot(Raft.Message, String)
        case unreachable(UInt64)
        case snapshotStatus(UInt64, Bool)
        case propose(String)
        case compact
    }

    let id: UInt64
    let view = Watched(MemberView())
    let storage = MemoryStorage()
    private let node: RaftNode
    private let condition = NSCondition()
    private var inbox: [Event] = []
    private var running = true
    private var transportRef: PeerTransport?
    private let tick: TimeInterval
    private let done = DispatchSemaphore(value: 0)

    init(id: UInt64, voters: [UInt64], tick: Duration = .milliseconds(20)) throws {
        self.id = id
        var config = RaftConfig(id: id)
        config.electionTick = 10
        config.heartbeatTick = 1
        config.seed = id &* 7919
        // The initial configuration as a snapshot at index 0 (RaftNode.bootstrap is gone).
        try storage.applySnapshot(Snapshot(metadata: SnapshotMetadata(index: 0, term: 0, confState: ConfState(voters: voters))))
        node = try RaftNode(config: config, storage: storage)
        self.tick = Double(tick.components.attoseconds) / 1e18 + Double(tick.components.seconds)
    }

    var transport: PeerTransport? {
        get { condition.withLock { transportRef } }
        set { condition.withLock { transportRef = newValue } }
    }

    func start() {
        let thread = Thread { [self] in loop() }
        thread.name = "raft-\(id)"
        thread.start()
    }

    func stop() {
        condition.withLock {
            running = false
            condition.signal()
        }
        done.wait()
    }

    func enqueue(_ event: Event) {
        condition.withLock {
            inbox.append(event)
            condition.signal()
        }
    }

    func propose(_ value: String) { enqueue(.propose(value)) }

    // MARK: RaftTransportDelegate

    func transportReceived(_ messages: [Raft.Message]) {
        let senders = Set(messages.map(\.from))
        view.update { $0.receivedFrom.formUnion(senders) }
        enqueue(.messages(messages))
    }

    func transportReceivedSnapshot(_ message: Raft.Message, backendFile: String) {
        enqueue(.snapshot(message, backendFile))
    }

    func transportReportUnreachable(_ peer: UInt64) { enqueue(.unreachable(peer)) }

    func transportReportSnapshot(_ peer: UInt64, success: Bool) {
        view.update { $0.snapshotReports.append((peer, success)) }
        enqueue(.snapshotStatus(peer, success))
    }

    // MARK: Loop

    private var data: [String] = []
    private var applied: UInt64 = 0
    private var snapshotFiles: [String] = []

    private func loop() {
        var nextTick = Date(timeIntervalSinceNow: tick)
        while true {
            condition.lock()
            while inbox.isEmpty && running && Date() < nextTick { _ = condition.wait(until: nextTick) }
            guard running else {
                condition.unlock()
                done.signal()
                return
            }
            let events = inbox
            inbox = []
            let transport = transportRef
            condition.unlock()

            if Date() >= nextTick {
                try? node.tick()
                nextTick = Date(timeIntervalSinceNow: tick)
            }
            for event in events { handle(event) }
            while node.hasReady {
                guard let rd = try? node.ready() else { break }
                if let hs = rd.hardState { storage.setHardState(hs) }
                if let snap = rd.snapshot {
                    try? storage.applySnapshot(snap)
                    data = (try? JSONDecoder().decode([String].self, from: Data(snap.data))) ?? []
                    applied = snap.metadata.index
                }
                try? storage.append(rd.entries)
                transport?.send(rd.messages)
                for entry in rd.committedEntries {
                    if entry.type == .normal && !entry.data.isEmpty { data.append(String(decoding: entry.data, as: UTF8.self)) }
                    applied = entry.index
                }
                try? node.advance(rd)
            }
            let status = node.status
            let snapshotIndex = (try? storage.snapshot().metadata.index) ?? 0
            view.update { [data, applied, snapshotFiles] v in
                v.lead = status.softState.lead
                v.role = status.softState.role
                v.term = status.hardState.term
                v.applied = applied
                v.data = data
                v.snapshotIndex = snapshotIndex
                v.receivedSnapshotFiles = snapshotFiles
            }
        }
    }

    private func handle(_ event: Event) {
        switch event {
        case .messages(let messages):
            for message in messages { try? node.step(message) }
        case .snapshot(let message, let file):
            snapshotFiles.append(file)
            try? node.step(message)
        case .unreachable(let peer):
            try? node.reportUnreachable(peer)
        case .snapshotStatus(let peer, let success):
            try? node.reportSnapshot(peer, success: success)
        case .propose(let value):
            try? node.propose(Array(value.utf8))
        case .compact:
            // Snapshot the state machine at the applied index and drop the log before it.
            let state = (try? JSONEncoder().encode(data)) ?? Data()
            if (try? storage.createSnapshot(index: applied, confState: node.status.confState, data: Array(state))) != nil {
                try? storage.compact(applied)
            }
        }
    }
}

/// Three (or more) members wired through real peer transports on 127.0.0.1.
final class PeerTestCluster: @unchecked Sendable {
    let clusterID: UInt64 = 0x5eed_c1a5_7e40_0001
    let ids: [UInt64]
    var members: [UInt64: TestMember] = [:]
    var transports: [UInt64: PeerTransport] = [:]
    var servers: [UInt64: PeerServer] = [:]
    var urls: [UInt64: EndpointURL] = [:]
    let backends: [UInt64: FakeBackend]
    /// Members whose lease service answers `LeaseRenewBatch` UNIMPLEMENTED, as a member from
    /// before that call did (set before starting them).
    var withoutRenewBatch: Set<UInt64> = []
    let logs = Watched<[CapturedLog.Record]>([])
    let directory: String
    /// Members that send and receive Raft messages through grpc-swift (as with
    /// `SWETCD_NO_FAST_PEER=1`) instead of the raw stream and the frame-level receiver.
    var grpcPath: Set<UInt64> = []

    init(ids: [UInt64] = [1, 2, 3], backendSize: Int = 64 << 10, badHashes: Int = 0) throws {
        self.ids = ids
        directory = NSTemporaryDirectory() + "peer-test-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var backends: [UInt64: FakeBackend] = [:]
        for id in ids {
            let dir = "\(directory)/\(id)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            backends[id] = try FakeBackend(directory: dir, size: backendSize, badHashes: badHashes)
            members[id] = try TestMember(id: id, voters: ids)
        }
        self.backends = backends
    }

    func snapshotDirectory(_ id: UInt64) -> String { "\(directory)/\(id)/snap" }

    /// Starts listeners (free ports first, the same port on restart) and transports.
    func startTransport(_ id: UInt64, clusterID: UInt64? = nil) async throws {
        guard let member = members[id], let backend = backends[id] else { return }
        let logger = CapturedLog.logger("peer-\(id)", into: logs)
        let transport = PeerTransport(localID: id, clusterID: clusterID ?? self.clusterID,
                                      snapshotDirectory: snapshotDirectory(id), delegate: member,
                                      snapshots: backend, logger: logger, options: options(id))
        let server = PeerServer(logger: logger, fastMessages: !grpcPath.contains(id))
        let url = urls[id] ?? EndpointURL(scheme: "http", host: "127.0.0.1", port: 0)
        let leaseService: any RegistrableRPCService = withoutRenewBatch.contains(id)
            ? LeaseServiceWithoutBatch(base: PeerLeaseService(transport: transport)) : transport.makeLeaseService()
        try await server.start(urls: [url], services: [transport.makeService(), leaseService])
        urls[id] = server.boundAddresses.first
        transports[id] = transport
        servers[id] = server
        member.transport = transport
    }

    func options(_ id: UInt64) -> PeerTransport.Options {
        var options = PeerTransport.Options()
        options.fastSend = !grpcPath.contains(id)
        return options
    }

    /// Connects every started transport to every other member and starts them.
    func connect() async {
        for (id, transport) in transports {
            for (peer, url) in urls where peer != id { transport.addPeer(peer, urls: [url]) }
            await transport.start()
        }
    }

    func start() async throws {
        for id in ids { try await startTransport(id) }
        await connect()
        for id in ids { members[id]?.start() }
    }

    func stopTransport(_ id: UInt64) async {
        members[id]?.transport = nil
        await transports[id]?.stop()
        await servers[id]?.stop()
        transports[id] = nil
        servers[id] = nil
    }

    func restartTransport(_ id: UInt64) async throws {
        try await startTransport(id)
        if let transport = transports[id] {
            for (peer, url) in urls where peer != id { transport.addPeer(peer, urls: [url]) }
            await transport.start()
        }
    }

    /// Waits until the members in `among` agree on one leader among them; returns it (0 on timeout).
    func leader(among: [UInt64]? = nil, timeout: Duration = .seconds(60)) async -> UInt64 {
        let group = among ?? ids
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let first = members[group[0]] else { return 0 }
            let elected = await first.view.wait(timeout: deadline - ContinuousClock.now) { $0.lead != 0 && group.contains($0.lead) }
            guard elected else { return 0 }
            let lead = first.view.current.lead
            var agreed = true
            for id in group.dropFirst() {
                guard let member = members[id] else { return 0 }
                if !(await member.view.wait(timeout: .seconds(5)) { $0.lead == lead }) {
                    agreed = false
                    break
                }
            }
            if agreed { return lead }
        }
        return 0
    }

    /// Each member's view and links, for a failure message: what the members saw when a wait
    /// ran out.
    func describe() -> String {
        ids.map { id in
            let v = members[id]?.view.current ?? MemberView()
            let links = ids.filter { $0 != id }.map { "\($0):\(transports[id]?.isActive($0) == true ? "up" : "down")" }
            return "member \(id): \(v.role) term \(v.term) lead \(v.lead) applied \(v.applied) "
                + "heard from \(v.receivedFrom.sorted()) links \(links.joined(separator: " "))"
        }.joined(separator: "; ")
    }

    /// Waits until every member in `among` has applied exactly `values` (in order). A value in
    /// `repeatable` was proposed more than once and may be applied more than once; only its
    /// first application counts for the order.
    func allApplied(_ values: [String], among: [UInt64]? = nil, repeatable: Set<String> = [],
                    timeout: Duration = .seconds(30)) async -> Bool {
        for id in among ?? ids {
            guard let member = members[id] else { return false }
            if !(await member.view.wait(timeout: timeout) { Self.matches($0.data, values, repeatable: repeatable) }) {
                return false
            }
        }
        return true
    }

    static func matches(_ data: [String], _ values: [String], repeatable: Set<String>) -> Bool {
        if repeatable.isEmpty { return data == values }
        var seen = Set<String>()
        var firsts: [String] = []
        for value in data {
            if seen.insert(value).inserted {
                firsts.append(value)
            } else if !repeatable.contains(value) {
                return false
            }
        }
        return firsts == values
    }

    /// Proposes the last of `values` through `target` until the members in `among` have applied
    /// `values`. Raft drops a proposal when leadership changes or a forwarding follower's stream is
    /// not up yet (clients retry), so after `retryAfter` without it, it is proposed again through the
    /// current leader and recorded in `repeatable`. False if it is not applied within `timeout`.
    func propose(_ values: [String], via target: UInt64, among: [UInt64], repeatable: inout Set<String>,
                 retryAfter: Duration = .seconds(3), timeout: Duration = .seconds(30)) async -> Bool {
        guard let value = values.last else { return true }
        let deadline = ContinuousClock.now + timeout
        var through = target
        while ContinuousClock.now < deadline {
            members[through]?.propose(value)
            let wait = min(retryAfter, deadline - ContinuousClock.now)
            if await allApplied(values, among: among, repeatable: repeatable, timeout: wait) { return true }
            let lead = members[through]?.view.current.lead ?? 0
            through = members[lead] != nil ? lead : target
            repeatable.insert(value)
            print("PeerTestCluster: \(value) not applied within \(retryAfter); proposing it again through \(through)")
        }
        return false
    }

    func shutdown() async {
        for id in ids { members[id]?.transport = nil }
        for transport in transports.values { await transport.stop() }
        for server in servers.values { await server.stop() }
        for member in members.values { member.stop() }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A delegate that only records what the transport hands it.
final class RecordingDelegate: RaftTransportDelegate {
    struct Events: Sendable {
        var received: [Raft.Message] = []
        var snapshots: [(message: Raft.Message, file: String)] = []
        var unreachable: [UInt64] = []
        var snapshotReports: [(peer: UInt64, success: Bool)] = []
    }

    let events = Watched(Events())
    /// What `transportSnapshotRefusal` answers (nil: receive every snapshot).
    let snapshotRefusal = Mutex<String?>(nil)
    func transportSnapshotRefusal(from: UInt64, index: UInt64) -> String? { snapshotRefusal.withLock { $0 } }
    func transportReceived(_ messages: [Raft.Message]) { events.update { $0.received += messages } }
    func transportReceivedSnapshot(_ message: Raft.Message, backendFile: String) {
        events.update { $0.snapshots.append((message, backendFile)) }
    }
    func transportReportUnreachable(_ peer: UInt64) { events.update { $0.unreachable.append(peer) } }
    func transportReportSnapshot(_ peer: UInt64, success: Bool) {
        events.update { $0.snapshotReports.append((peer, success)) }
    }
}

/// Answers forwarded lease calls: lease 7 renews to TTL 42, any other is etcd's not-found.
/// Counts renewals and calls (a batch is one call).
final class FixedLeaseHandler: PeerLeaseHandler {
    let renewals = Mutex(0)
    let calls = Mutex(0)
    func peerLeaseRenew(_ id: Int64) async throws -> Int64 {
        calls.withLock { $0 += 1 }
        return try renew(id)
    }
    func peerLeaseRenewBatch(_ ids: [Int64]) async throws -> [Result<Int64, EtcdError>] {
        calls.withLock { $0 += 1 }
        return ids.map { id in Result { try renew(id) }.mapError { EtcdError.from($0) } }
    }
    private func renew(_ id: Int64) throws -> Int64 {
        renewals.withLock { $0 += 1 }
        guard id == 7 else { throw EtcdError.from(LeaseError.leaseNotFound(id)) }
        return 42
    }
    func peerLeaseTimeToLive(_ request: Etcdserverpb_LeaseTimeToLiveRequest) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        var resp = Etcdserverpb_LeaseTimeToLiveResponse()
        resp.id = request.id
        resp.ttl = 42
        return resp
    }
}

/// The `PeerLease` service of a member from before `LeaseRenewBatch`: that call is UNIMPLEMENTED.
struct LeaseServiceWithoutBatch: Swetcd_Peer_PeerLease.SimpleServiceProtocol {
    let base: PeerLeaseService
    func leaseRenew(request: Swetcd_Peer_LeaseRenewForward, context: ServerContext) async throws -> Swetcd_Peer_LeaseRenewForwardReply {
        try await base.leaseRenew(request: request, context: context)
    }
    func leaseRenewBatch(request: Swetcd_Peer_LeaseRenewBatchForward, context: ServerContext) async throws -> Swetcd_Peer_LeaseRenewBatchReply {
        throw RPCError(code: .unimplemented, message: "unknown method")
    }
    func leaseTimeToLive(request: Swetcd_Peer_LeaseTimeToLiveForward, context: ServerContext) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        try await base.leaseTimeToLive(request: request, context: context)
    }
}
