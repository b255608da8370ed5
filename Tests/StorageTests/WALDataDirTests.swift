import Foundation
import Testing
@testable import Storage

@Suite struct WALDataDirTests {
    /// The first 80 bytes of a WAL segment written by etcd 3.4 (its own framing: a 64-bit
    /// length word, then a protobuf record).
    static let etcdSegmentHead: [UInt8] = [
        0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x84, 0x08, 0x04, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x01, 0x10, 0xBB, 0x81, 0xC7, 0xFC, 0x05,
        0x1A, 0x16, 0x08, 0xCD, 0xD2, 0x91, 0x8B, 0xD2, 0xB8, 0x81, 0xCF, 0x8E, 0x01, 0x10, 0xB2, 0x98,
        0xEA, 0xF1, 0x94, 0x83, 0x86, 0xFC, 0xCD, 0x01, 0x0E, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x82,
        0x08, 0x05, 0x10, 0x94, 0xBB, 0xC7, 0xED, 0x0E, 0x1A, 0x04, 0x08, 0x00, 0x10, 0x00, 0x00, 0x00,
    ]

    @Test func layoutPaths() {
        let d = DataDir(path: "/var/lib/swetcd")
        #expect(d.walDirectory == "/var/lib/swetcd/member/wal")
        #expect(d.snapDirectory == "/var/lib/swetcd/member/snap")
        #expect(d.backendPath == "/var/lib/swetcd/member/snap/db")
    }

    @Test func emptyThenOurs() throws {
        let tmp = try WALTempDir("datadir")
        defer { tmp.cleanup() }
        let d = DataDir(path: tmp.sub("data"))
        #expect(try d.inspect() == .empty)
        try FileIO.makeDirectory(d.path)
        try FileIO.makeDirectory(d.path + "/lost+found")
        #expect(try d.inspect() == .empty)
        #expect(try d.prepare() == .empty)
        #expect(FileIO.isDirectory(d.snapDirectory))
        // Prepared but no WAL yet (an interrupted first start) is still empty.
        #expect(try d.inspect() == .empty)
        let wal = try WAL.create(directory: d.walDirectory, metadata: [1])
        try wal.close()
        #expect(try d.inspect() == .ours)
        #expect(try d.prepare() == .ours)
        // The --auto-tls certificates (`fixtures`) are not foreign.
        try FileIO.makeDirectory(d.path + "/fixtures")
        #expect(try d.inspect() == .ours)
        // A snapshot file and the backend are ours too.
        try Snapshotter(directory: d.snapDirectory).save(StoredSnapshot(index: 1, term: 1, data: [1]))
        try walWriteFile(d.backendPath, [0])
        #expect(try d.inspect() == .ours)
    }

    @Test func etcdDataDirIsForeignAndUntouched() throws {
        let tmp = try WALTempDir("datadir")
        defer { tmp.cleanup() }
        let d = DataDir(path: tmp.sub("data"))
        for p in [d.path, d.memberDirectory, d.walDirectory, d.snapDirectory] { try FileIO.makeDirectory(p) }
        let seg = d.walDirectory + "/0000000000000000-0000000000000000.wal"
        try walWriteFile(seg, Self.etcdSegmentHead + [UInt8](repeating: 0, count: 4000))
        try walWriteFile(d.backendPath, [1, 2, 3])
        guard case let .foreign(reason) = try d.inspect() else { Issue.record("etcd dir not foreign"); return }
        #expect(reason.contains("not a swetcd WAL"))
        #expect(throws: WALError.self) { try d.prepare() }
        #expect(throws: WALError.self) { try WAL.open(directory: d.walDirectory) }
        #expect(try walFileBytes(seg).prefix(80) == Self.etcdSegmentHead[...])
        #expect(try walFileSize(seg) == 80 + 4000)
    }

    @Test func otherContentsAreForeign() throws {
        let tmp = try WALTempDir("datadir")
        defer { tmp.cleanup() }
        let d = DataDir(path: tmp.sub("data"))
        try FileIO.makeDirectory(d.path)
        try walWriteFile(d.path + "/notes.txt", [1])
        #expect(try { if case .foreign = try d.inspect() { true } else { false } }())
        try FileIO.remove(d.path + "/notes.txt")
        try d.prepare()
        try walWriteFile(d.snapDirectory + "/db", [1])
        // A backend without a WAL is not something we leave behind.
        #expect(try { if case .foreign = try d.inspect() { true } else { false } }())
        let file = tmp.sub("plain")
        try walWriteFile(file, [1])
        #expect(try { if case .foreign = try DataDir(path: file).inspect() { true } else { false } }())
    }
}
