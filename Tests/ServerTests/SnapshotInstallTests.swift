import Foundation
import LMDBBackend
import Logging
import MVCC
@testable import Server
import ServerFormat
import Storage
import Testing

/// The pieces of a snapshot install that can be checked in one process: watch streams moving to
/// a new keyspace, the start-up recovery of an interrupted swap, and member attributes in the
/// backend.
@Suite("Snapshot install")
struct SnapshotInstallTests {
    private static func tempDir() throws -> String {
        let path = NSTemporaryDirectory() + "swetcd-snapinst-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    private static func put(_ store: MVCCStore, _ key: String, _ value: String) throws -> Int64 {
        try store.put(PutRequest(key: Array(key.utf8), value: Array(value.utf8))).revision
    }

    /// Waits (bounded) for the next response of `stream`.
    private static func next(_ stream: ServerWatchStream) async throws -> WatchResponse {
        try await withThrowingTaskGroup(of: WatchResponse?.self) { group in
            group.addTask { await stream.next() }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                return nil
            }
            defer { group.cancelAll() }
            return try #require(try await group.next() ?? nil)
        }
    }

    @Test func watchesContinueOnTheNewKeyspaceFromTheirNextRevision() async throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let oldStore = try MVCCStore(backend: try Backend(path: dir + "/a"))
        let newStore = try MVCCStore(backend: try Backend(path: dir + "/b"))
        // Both keyspaces share a history; the new one has more (what the leader applied).
        for store in [oldStore, newStore] {
            _ = try Self.put(store, "k/1", "a")
            _ = try Self.put(store, "other", "x")
        }
        let registry = WatchStreamRegistry()
        let stream = ServerWatchStream(store: oldStore, registry: registry)
        registry.add(stream)
        let id = try stream.watch(key: Array("k/".utf8), rangeEnd: Array("k0".utf8))
        let rev = try Self.put(oldStore, "k/2", "b")
        _ = try Self.put(newStore, "k/2", "b")
        let first = try await Self.next(stream)
        #expect(first.watchID == id && first.events.map(\.kv.modRevision) == [rev])
        let missed = try Self.put(newStore, "k/3", "c")
        _ = try Self.put(newStore, "other", "y")

        for s in registry.all { s.rebind(to: newStore) }
        _ = try newStore.syncWatchers()   // what the keyspace's watch loop does
        // The event the old keyspace never had, then new writes; nothing twice.
        let caughtUp = try await Self.next(stream)
        #expect(caughtUp.watchID == id && caughtUp.events.map(\.kv.modRevision) == [missed])
        let later = try Self.put(newStore, "k/4", "d")
        let live = try await Self.next(stream)
        #expect(live.events.map(\.kv.modRevision) == [later])
        // Writes to the old keyspace no longer reach the stream.
        _ = try Self.put(oldStore, "k/9", "z")
        #expect(oldStore.watcherCounts.synced + oldStore.watcherCounts.unsynced == 0)
        stream.close()
        #expect(registry.all.isEmpty)
        #expect(await stream.next() == nil)
    }

    @Test func aWatchWhoseNextRevisionIsCompactedIsCancelledWithTheCompactRevision() async throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let oldStore = try MVCCStore(backend: try Backend(path: dir + "/a"))
        let newStore = try MVCCStore(backend: try Backend(path: dir + "/b"))
        let registry = WatchStreamRegistry()
        let stream = ServerWatchStream(store: oldStore, registry: registry)
        let id = try stream.watch(key: Array("k".utf8))
        var last: Int64 = 0
        for i in 0..<5 { last = try Self.put(newStore, "k", "\(i)") }
        try newStore.compact(last)
        stream.rebind(to: newStore)
        let r = try await Self.next(stream)
        #expect(r.watchID == id && r.canceled && r.compactRevision == last)
        stream.close()
    }

    @Test func startUpFinishesAnInterruptedSwap() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dataDir = DataDir(path: dir)
        try FileManager.default.createDirectory(atPath: dataDir.snapDirectory, withIntermediateDirectories: true)
        func backend(_ path: String, index: UInt64, marker: String) throws {
            let b = try Backend(path: path)
            try b.batch {
                try b.put(.meta, key: Array("marker".utf8), value: Array(marker.utf8))
                try b.setConsistentIndex(index, term: 2)
            }
            try b.close()
        }
        try backend(dataDir.backendPath, index: 40, marker: "old")
        let received = SnapshotInstaller.backendFile(in: dataDir.snapDirectory, index: 100)
        #expect(received.hasSuffix("/0000000000000064.snap.db"))
        try backend(received, index: 120, marker: "new")
        let stale = SnapshotInstaller.backendFile(in: dataDir.snapDirectory, index: 30)
        try backend(stale, index: 30, marker: "stale")
        let logger = Logger(label: "test")

        try SnapshotInstaller.recoverBackend(dataDir: dataDir, snapshotIndex: 100, options: .init(), logger: logger)
        let b = try Backend(path: dataDir.backendPath)
        #expect(try b.consistentIndex() == 120)
        #expect(try b.read { try $0.get(.meta, key: Array("marker".utf8)) } == Array("new".utf8))
        try b.close()
        #expect(!FileManager.default.fileExists(atPath: received))
        #expect(!FileManager.default.fileExists(atPath: stale))
        // Already swapped: a second start changes nothing.
        try SnapshotInstaller.recoverBackend(dataDir: dataDir, snapshotIndex: 100, options: .init(), logger: logger)
        #expect(try SnapshotInstaller.consistentIndex(ofBackendAt: dataDir.backendPath, options: .init()) == 120)
        // A backend behind its Raft snapshot with nothing to restore it from is refused.
        #expect(throws: ServerStartError.self) {
            try SnapshotInstaller.recoverBackend(dataDir: dataDir, snapshotIndex: 500, options: .init(), logger: logger)
        }
    }

    @Test func memberAttributesPersistInTheMembersBucket() throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let b = try Backend(path: dir + "/db")
        let big: UInt64 = 0xfd4a_d8ee_33d8_e6a8
        let members = [MemberRecord(id: 0xa1, name: "m1", peerURLs: ["http://127.0.0.1:1"]),
                       MemberRecord(id: big, name: "", peerURLs: ["http://127.0.0.1:2"])]
        try MembershipStore.save(members, in: b)
        let membership = ClusterMembership(members: try MembershipStore.load(from: b))
        #expect(membership.members.allSatisfy { $0.clientURLs.isEmpty })
        let urls = ["http://127.0.0.1:3", "http://127.0.0.1:4"]
        let record = try #require(membership.setAttributes(big, name: "m2", clientURLs: urls))
        #expect(membership.setAttributes(0x99, name: "x", clientURLs: urls) == nil)
        try b.batch {
            try MembershipStore.record(MembershipChange(operation: .update, member: record), result: record, in: b)
        }
        // A later peer-URL update keeps the published client URLs.
        var moved = record
        moved.peerURLs = ["http://127.0.0.1:5"]
        let updated = try #require(membership.apply(MembershipChange(operation: .update, member: MemberRecord(id: big, name: "", peerURLs: moved.peerURLs))))
        #expect(updated.clientURLs == urls && updated.name == "m2")
        try b.batch {
            try MembershipStore.record(MembershipChange(operation: .update, member: updated), result: updated, in: b)
        }
        try b.close()
        let reopened = try Backend(path: dir + "/db")
        let loaded = try MembershipStore.load(from: reopened)
        #expect(loaded.map(\.name) == ["m1", "m2"])
        #expect(loaded.map(\.clientURLs) == [[], urls])
        #expect(loaded.map(\.peerURLs) == [["http://127.0.0.1:1"], ["http://127.0.0.1:5"]])
        try reopened.close()
    }
}
