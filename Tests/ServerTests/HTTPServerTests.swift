import EtcdProto
import Foundation
import GRPCCore
import NIOCore
import SwiftProtobuf
import Synchronization
import Testing
@testable import Server

/// Collects a streamed HTTP body and hands out its complete lines in order.
final class StreamedLines: Sendable {
    private let pending = Mutex<[UInt8]>([])
    let lines: AsyncStream<String>
    private let feed: AsyncStream<String>.Continuation

    init() { (lines, feed) = AsyncStream<String>.makeStream() }

    /// A body writer appending to this collector.
    var writer: HTTPBodyWriter {
        HTTPBodyWriter { [self] chunk in
            let complete: [String] = pending.withLock { bytes in
                bytes += Array(chunk.readableBytesView)
                var out: [String] = []
                while let nl = bytes.firstIndex(of: UInt8(ascii: "\n")) {
                    out.append(String(decoding: bytes[..<nl], as: UTF8.self))
                    bytes.removeSubrange(...nl)
                }
                return out
            }
            for line in complete { feed.yield(line) }
        }
    }

    func finish() { feed.finish() }
}

/// The message of a `{"result": ...}` line.
func resultMessage<M: SwiftProtobuf.Message>(_ line: String, as: M.Type) throws -> M {
    let prefix = #"{"result":"#
    #expect(line.hasPrefix(prefix) && line.hasSuffix("}"), "not a result line: \(line)")
    return try M(jsonString: String(line.dropFirst(prefix.count).dropLast()), options: .etcdGateway)
}

/// /metrics, the streaming gateway and Range's revision filters on a real in-process server.
@Suite struct HTTPServerTests {
    func routes(_ s: EtcdServer) -> HTTPRouter {
        var router = HTTPRouter()
        s.registerHTTPRoutes(in: &router)
        return router
    }

    /// Unlabelled samples of a scrape, by name.
    func scrape(_ router: HTTPRouter) async -> [String: Double] {
        let text = bodyText(await router.respond(to: HTTPRequest(method: .GET, uri: "/metrics")))
        var out: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.contains("{") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let v = Double(parts[1]) { out[String(parts[0])] = v }
        }
        return out
    }

    @Test(.timeLimit(.minutes(1))) func metricsMoveWithWritesLeasesAndCommits() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        let router = routes(s)
        _ = try await s.put(putRequest("warm", "up"))
        let before = await scrape(router)
        for k in ["m1", "m2", "m3"] { _ = try await s.put(putRequest(k, "v")) }
        var grant = Etcdserverpb_LeaseGrantRequest()
        grant.ttl = 30
        let lease = try await s.leaseGrant(grant)
        _ = try await s.leaseRenew(lease.id)
        try s.backend.commit()
        let after = await scrape(router)

        #expect(after["etcd_server_has_leader"] == 1)
        #expect(after["etcd_server_is_leader"] == 1)
        #expect(after["etcd_server_is_learner"] == 0)
        #expect((after["etcd_server_leader_changes_seen_total"] ?? 0) >= 1)
        #expect(after["etcd_debugging_mvcc_keys_total"] == (before["etcd_debugging_mvcc_keys_total"] ?? -1) + 3)
        #expect(after["etcd_debugging_mvcc_current_revision"] == Double(s.currentRevision))
        #expect(after["etcd_debugging_mvcc_compact_revision"] == -1, "etcd's -1 before the first compaction")
        #expect((after["etcd_server_proposals_committed_total"] ?? 0) >= (before["etcd_server_proposals_committed_total"] ?? 0) + 4)
        #expect((after["etcd_server_proposals_applied_total"] ?? 0) >= (before["etcd_server_proposals_applied_total"] ?? 0) + 4)
        #expect(after["etcd_server_proposals_pending"] == 0)
        #expect((after["etcd_disk_wal_fsync_duration_seconds_count"] ?? 0) >= (before["etcd_disk_wal_fsync_duration_seconds_count"] ?? 0) + 4)
        #expect((after["etcd_disk_backend_commit_duration_seconds_count"] ?? 0) > (before["etcd_disk_backend_commit_duration_seconds_count"] ?? 0))
        #expect((after["etcd_disk_backend_commit_duration_seconds_sum"] ?? 0) > 0)
        #expect(after["etcd_debugging_lease_granted_total"] == 1)
        #expect(after["etcd_debugging_lease_renewed_total"] == 1)
        #expect(after["swetcd_server_leases"] == 1)
        #expect((after["etcd_mvcc_db_total_size_in_bytes"] ?? 0) > 0)
        var revoke = Etcdserverpb_LeaseRevokeRequest()
        revoke.id = lease.id
        _ = try await s.leaseRevoke(revoke)
        let revoked = await scrape(router)
        #expect(revoked["etcd_debugging_lease_revoked_total"] == 1)
        #expect(revoked["swetcd_server_leases"] == 0)
        await s.stop()
    }

    @Test(.timeLimit(.minutes(1))) func rangeHonoursCreateAndModRevisionFilters() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        let a = try await s.put(putRequest("f/a", "1")).header.revision
        let b = try await s.put(putRequest("f/b", "1")).header.revision
        let a2 = try await s.put(putRequest("f/a", "2")).header.revision
        func keys(_ adjust: (inout Etcdserverpb_RangeRequest) -> Void) async throws -> [String] {
            var r = rangeRequest("f/", end: "f0")
            adjust(&r)
            return try await s.range(r).kvs.map { String(decoding: $0.key, as: UTF8.self) }
        }
        #expect(try await keys { _ in } == ["f/a", "f/b"])
        #expect(try await keys { $0.maxCreateRevision = a } == ["f/a"])
        #expect(try await keys { $0.minCreateRevision = b } == ["f/b"])
        #expect(try await keys { $0.minModRevision = a2 } == ["f/a"])
        #expect(try await keys { $0.maxModRevision = b } == ["f/b"])
        #expect(try await keys { $0.minModRevision = b; $0.maxCreateRevision = b } == ["f/a", "f/b"])
        #expect(try await keys { $0.minCreateRevision = a2 + 1 } == [])
        // Filters apply before the limit, as etcd's.
        #expect(try await keys { $0.minCreateRevision = b; $0.limit = 1 } == ["f/b"])
        await s.stop()
    }

    @Test(.timeLimit(.minutes(1))) func gatewayWatchStreamsUntilTheClientGoes() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        let router = routes(s)
        let start = try await s.put(putRequest("w", "old")).header.revision
        let body = #"{"create_request":{"key":"dw==","start_revision":"\#(start)"}}"# + "\n"
            + #"{"create_request":{"key":"eA==","watch_id":"7"}}"#
        let response = await router.respond(to: HTTPRequest(method: .POST, uri: "/v3/watch", body: ByteBuffer(string: body)))
        #expect(response.status == .ok)
        guard case .stream(let produce) = response.body else {
            Issue.record("expected a streamed body")
            return
        }
        let collected = StreamedLines()
        let streaming = Task {
            try? await produce(collected.writer)
            collected.finish()
        }
        var lines = collected.lines.makeAsyncIterator()
        var seen: [Etcdserverpb_WatchResponse] = []
        // Two creations, then the historical put; then a live put.
        while seen.filter(\.created).count < 2 || !seen.contains(where: { !$0.events.isEmpty }) {
            let line = try #require(await lines.next())
            seen.append(try resultMessage(line, as: Etcdserverpb_WatchResponse.self))
        }
        #expect(Set(seen.filter(\.created).map(\.watchID)).contains(7))
        let history = try #require(seen.first { !$0.events.isEmpty })
        #expect(history.events.map { String(decoding: $0.kv.value, as: UTF8.self) } == ["old"])
        let live = try await s.put(putRequest("x", "new")).header.revision
        var event = try resultMessage(try #require(await lines.next()), as: Etcdserverpb_WatchResponse.self)
        while event.events.isEmpty { event = try resultMessage(try #require(await lines.next()), as: Etcdserverpb_WatchResponse.self) }
        #expect(event.watchID == 7)
        #expect(event.header.revision == live)
        #expect(event.events.first?.kv.key == Data("x".utf8))
        let open = s.store.watcherCounts
        #expect(open.synced + open.unsynced + open.victims == 2)
        // The client disconnects: the connection handler cancels the body's task.
        streaming.cancel()
        await streaming.value
        let counts = s.store.watcherCounts
        #expect(counts.synced + counts.unsynced + counts.victims == 0)
        await s.stop()
    }

    @Test(.timeLimit(.minutes(1))) func gatewayKeepAliveAnswersEachRequestThenEnds() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        let s = try await f.start()
        let router = routes(s)
        var grant = Etcdserverpb_LeaseGrantRequest()
        grant.ttl = 40
        let id = try await s.leaseGrant(grant).id
        let body = "{\"ID\":\"\(id)\"} {\"ID\":\"\(id)\"}\n{\"ID\":\"12345\"}"
        let response = await router.respond(to: HTTPRequest(method: .POST, uri: "/v3/lease/keepalive", body: ByteBuffer(string: body)))
        guard case .stream(let produce) = response.body else {
            Issue.record("expected a streamed body")
            return
        }
        let collected = StreamedLines()
        try await produce(collected.writer)   // ends by itself after the last request
        collected.finish()
        var all: [Etcdserverpb_LeaseKeepAliveResponse] = []
        for await line in collected.lines { all.append(try resultMessage(line, as: Etcdserverpb_LeaseKeepAliveResponse.self)) }
        #expect(all.map(\.id) == [id, id, 12345])
        #expect(all.map(\.ttl) == [40, 40, 0])
        #expect(all.allSatisfy { $0.header.memberID == s.memberID })
        await s.stop()
    }

    @Test func gatewayStreamsRejectBadBodies() async {
        let handler = Gateway.bidiStreaming("/v3/test", finishRequests: true) {
            (_: RPCAsyncSequence<Etcdserverpb_WatchRequest, any Error>, _: RPCWriter<Etcdserverpb_WatchResponse>, _: ServerContext) in
        }
        for bad in ["[1]", #"{"create_request":"#, #"{"create_request":{"key":"!!"}}"#, "{} x"] {
            let r = await handler(HTTPRequest(method: .POST, uri: "/v3/test", body: ByteBuffer(string: bad)))
            #expect(r.status == .badRequest, "\(bad)")
            #expect(bodyText(r).contains(#""code":3"#), "\(bad)")
        }
    }

    @Test func requestObjectsAreSplitAtTheTopLevel() throws {
        func split(_ s: String) -> [String]? {
            Gateway.splitJSONObjects(Array(s.utf8)).map { $0.map { String(decoding: $0, as: UTF8.self) } }
        }
        #expect(split(#"{"a":"}{\"x"}{"b":[{},{}]}"# + "\n {}") == [#"{"a":"}{\"x"}"#, #"{"b":[{},{}]}"#, "{}"])
        #expect(split("  \n") == [])
        #expect(split("[]") == nil)
        #expect(split(#"{"a":1"#) == nil)
        #expect(split(#"{"a":"1}"#) == nil)
        #expect(split("}") == nil)
    }
}
