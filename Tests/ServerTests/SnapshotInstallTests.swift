import Foundation
import LMDBBackend
import Logging
import MVCC
@testable import Server
import ServerFormat
import Storage
import Testing

/// The pieces of a snapshot install that can be checked in one process: the state machine's
/// in-place restore, the start-up recovery of an interrupted swap, and member attributes in the
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
    private static func next(_ stream: WatchStream) async throws -> WatchResponse {
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

    /// The state machine restores in place from a leader's backend file: the same objects, a
    /// watch opened before catches up with what it missed and keeps going, and the lessor's
    /// leases come back with their keys, wired to the restored keyspace.
    @Test func stateMachineRestoresInPlaceKeepingWatchesAndLeases() async throws {
        let dir = try Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = Backend.Options()
        options.sync = false
        func open(_ path: String) throws -> StateMachine {
            try StateMachine.open(try Backend(path: path, options: options), lessor: LessorConfig(), store: MVCCStore.Options())
        }
        let machine = try open(dir + "/db")
        let leader = try open(dir + "/leader.db")
        for m in [machine, leader] { _ = try Self.put(m.store, "k/1", "a") }
        let (store, lessor) = (machine.store, machine.lessor)
        let stream = machine.store.makeWatchStream()
        defer { stream.close() }
        let id = try stream.watch(key: Array("k/".utf8), rangeEnd: Array("k0".utf8))
        // What the follower misses: a lease and a key attached to it.
        try leader.lessor.grant(id: 7, ttl: 60)
        let leased = try leader.store.put(PutRequest(key: Array("k/2".utf8), value: Array("b".utf8), lease: 7)).revision
        let file = SnapshotInstaller.backendFile(in: dir, index: 100)
        try leader.backend.copy(toPath: file)

        try machine.restore(fromFileAt: file)
        #expect(machine.store === store && machine.lessor === lessor)
        #expect(!FileManager.default.fileExists(atPath: file))
        #expect(try machine.lessor.keys(of: 7) == [Array("k/2".utf8)])
        machine.startWatchLoop()
        defer { machine.stopWatchLoop() }
        let caughtUp = try await Self.next(stream)
        #expect(caughtUp.watchID == id && caughtUp.events.map(\.kv.modRevision) == [leased])
        // Revoking the lease deletes its key through the bridge, in the restored keyspace.
        try machine.lessor.revoke(id: 7)
        let deleted = try await Self.next(stream)
        #expect(deleted.events.map(\.type) == [.delete] && deleted.events.first?.kv.key == Array("k/2".utf8))
        #expect(try machine.store.range(RangeRequest(key: Array("k/".utf8), rangeEnd: Array("k0".utf8))).kvs.count == 1)
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
