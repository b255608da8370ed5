import Crypto
import Foundation
import EtcdProto
import GRPCCore
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import Server

/// A snapshot of fixed bytes, read in whatever pieces the service asks for.
final class BytesSnapshotReader: SnapshotReader {
    let bytes: [UInt8]
    let claimedSize: Int64
    let offset = Mutex(0)
    let closed = Mutex(false)
    init(_ bytes: [UInt8], claimedSize: Int64? = nil) {
        self.bytes = bytes
        self.claimedSize = claimedSize ?? Int64(bytes.count)
    }
    var size: Int64 { claimedSize }
    func read(maxBytes: Int) throws -> [UInt8] {
        offset.withLock { o in
            let end = min(bytes.count, o + maxBytes)
            defer { o = end }
            return Array(bytes[o..<end])
        }
    }
    func close() { closed.withLock { $0 = true } }
}

/// A Maintenance backend with canned answers.
final class FakeMaintenanceBackend: MaintenanceBackend, ClusterBackend {
    let snapshot: BytesSnapshotReader
    let isLeader: Bool
    let moved = Mutex<[UInt64]>([])
    init(snapshot: BytesSnapshotReader = BytesSnapshotReader([]), isLeader: Bool = true) {
        self.snapshot = snapshot
        self.isLeader = isLeader
    }
    func responseHeader() -> Etcdserverpb_ResponseHeader {
        var h = Etcdserverpb_ResponseHeader()
        h.clusterID = 11; h.memberID = 22; h.revision = 33; h.raftTerm = 4
        return h
    }
    func status() async throws -> Etcdserverpb_StatusResponse {
        var s = Etcdserverpb_StatusResponse()
        s.header = responseHeader()
        s.version = "3.5.17"; s.dbSize = 4096; s.leader = 22; s.raftIndex = 9; s.raftTerm = 4
        s.raftAppliedIndex = 9; s.dbSizeInUse = 2048
        return s
    }
    func alarm(_ request: Etcdserverpb_AlarmRequest) async throws -> Etcdserverpb_AlarmResponse {
        var r = Etcdserverpb_AlarmResponse()
        r.header = responseHeader()
        return r
    }
    func hash() async throws -> Etcdserverpb_HashResponse { Etcdserverpb_HashResponse() }
    func hashKV(_ request: Etcdserverpb_HashKVRequest) async throws -> Etcdserverpb_HashKVResponse {
        var r = Etcdserverpb_HashKVResponse()
        r.hash = 0xdead
        r.compactRevision = request.revision
        return r
    }
    func openSnapshot() async throws -> any SnapshotReader { snapshot }
    func moveLeader(to target: UInt64) async throws {
        guard isLeader else { throw RPCError(code: .failedPrecondition, message: "etcdserver: not leader") }
        moved.withLock { $0.append(target) }
    }
    func memberList(linearizable: Bool) async throws -> [Etcdserverpb_Member] {
        var m = Etcdserverpb_Member()
        m.id = 22; m.name = "default"; m.peerUrls = ["http://127.0.0.1:2380"]; m.clientUrls = ["http://127.0.0.1:2379"]
        return [m]
    }
}

@Suite struct MaintenanceTests {
    @Test func snapshotStreamsChunksThenTheSHA256Trailer() async throws {
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let reader = BytesSnapshotReader(data)
        let service = MaintenanceService(backend: FakeMaintenanceBackend(snapshot: reader), chunkSize: 300)
        let messages = Mutex<[Etcdserverpb_SnapshotResponse]>([])
        try await service.streamSnapshot { m in messages.withLock { $0.append(m) } }
        let got = messages.withLock { $0 }
        #expect(got.map(\.blob.count) == [300, 300, 300, 100, 32])
        #expect(got.map(\.remainingBytes) == [732, 432, 132, 32, 0])
        #expect(Array(got.dropLast().map { Array($0.blob) }.joined()) == data)
        #expect(got.last.map { Array($0.blob) } == Array(SHA256.hash(data: data)))
        #expect(got.first?.header.revision == 33)
        #expect(reader.closed.withLock { $0 })
    }

    @Test func aSnapshotShorterThanAnnouncedFailsWithoutTrailer() async throws {
        let reader = BytesSnapshotReader([1, 2, 3], claimedSize: 10)
        let service = MaintenanceService(backend: FakeMaintenanceBackend(snapshot: reader))
        let count = Mutex(0)
        await #expect(throws: RPCError.self) {
            try await service.streamSnapshot { _ in count.withLock { $0 += 1 } }
        }
        #expect(count.withLock { $0 } == 1)   // the data chunk, no trailer
        #expect(reader.closed.withLock { $0 })
    }

    @Test func defragmentAndDowngradeAreUnimplemented() async throws {
        let service = MaintenanceService(backend: FakeMaintenanceBackend())
        let error = await #expect(throws: RPCError.self) {
            _ = try await Gateway.withContext("/x/y") { try await service.defragment(request: .init(), context: $0) }
        }
        #expect(error?.code == .unimplemented)
    }

    @Test func fileSnapshotReaderReadsAndRemovesItsFile() throws {
        let path = "/tmp/swetcd-maint-\(UInt64.random(in: 0...UInt64.max)).db"
        let bytes = Array(repeating: UInt8(9), count: 5000)
        FileManagerless.write(path, bytes)
        let reader = try FileSnapshotReader(path: path, removeOnClose: true)
        #expect(reader.size == 5000)
        var total: [UInt8] = []
        while case let chunk = try reader.read(maxBytes: 4096), !chunk.isEmpty { total += chunk }
        #expect(total == bytes)
        reader.close()
        #expect(throws: RPCError.self) { try FileSnapshotReader(path: path, removeOnClose: false) }
    }
}

/// Writes a file with POSIX calls (keeps the test free of Foundation's file APIs).
enum FileManagerless {
    static func write(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
    }
}
