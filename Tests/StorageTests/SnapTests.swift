import Foundation
import Raft
import Testing
@testable import Storage

@Suite struct SnapTests {
    func snapshotter(_ tmp: WALTempDir) throws -> Snapshotter {
        let dir = tmp.sub("snap")
        try FileIO.makeDirectory(dir)
        return Snapshotter(directory: dir)
    }

    @Test func saveLoadRoundTrip() throws {
        let tmp = try WALTempDir("snap")
        defer { tmp.cleanup() }
        let s = try snapshotter(tmp)
        let snap = StoredSnapshot(index: 0x1234, term: 3, confState: [9, 8], data: Array(0..<200))
        let path = try s.save(snap)
        #expect(FileIO.lastComponent(path) == "0000000000000003-0000000000001234.snap")
        #expect(try s.load(fileName: FileIO.lastComponent(path)) == snap)
        #expect(try s.loadNewest().snapshot == snap)
        #expect(try FileIO.list(s.directory) == ["0000000000000003-0000000000001234.snap"])
        let empty = StoredSnapshot(index: 1, term: 1, data: [])
        try s.save(empty)
        #expect(try s.load(fileName: "0000000000000001-0000000000000001.snap") == empty)
    }

    @Test func newestValidMatchingSnapshotWins() throws {
        let tmp = try WALTempDir("snap")
        defer { tmp.cleanup() }
        let s = try snapshotter(tmp)
        for i in 1...4 { try s.save(StoredSnapshot(index: UInt64(i * 10), term: 2, data: [UInt8(i)])) }
        // Damage the newest.
        let newest = s.directory + "/0000000000000002-0000000000000028.snap"
        var b = try walFileBytes(newest)
        b[b.count - 5] ^= 1  // the one data byte
        try walWriteFile(newest, b)
        let r = try s.loadNewest()
        #expect(r.snapshot?.index == 30)
        #expect(r.skipped == [SkippedSnapshot(file: "0000000000000002-0000000000000028.snap", reason: "CRC mismatch")])
        // Only snapshots the WAL has a marker for.
        let m = try s.loadNewest(matching: [WALSnapshotMarker(index: 10, term: 2), WALSnapshotMarker(index: 20, term: 2)])
        #expect(m.snapshot?.index == 20)
        #expect(m.skipped.count == 2)
        #expect(try s.loadNewest(matching: []).snapshot == nil)
    }

    @Test func damagedFilesGiveErrorsNotCrashes() throws {
        let tmp = try WALTempDir("snap")
        defer { tmp.cleanup() }
        let s = try snapshotter(tmp)
        let path = try s.save(StoredSnapshot(index: 5, term: 1, confState: [1], data: Array(repeating: 7, count: 100)))
        let name = FileIO.lastComponent(path)
        let good = try walFileBytes(path)
        var rng = SplitMix64(seed: 3)
        for cut in [0, 10, 47, 52, good.count - 1] {
            try walWriteFile(path, Array(good[..<cut]))
            #expect(throws: SnapshotError.self) { try s.load(fileName: name) }
        }
        for _ in 0..<50 {
            var b = good
            b[Int.random(in: 0..<b.count, using: &rng)] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &rng)
            try walWriteFile(path, b)
            #expect(throws: SnapshotError.self) { try s.load(fileName: name) }
        }
        // A valid file under another name is refused too.
        try walWriteFile(path, good)
        try FileIO.rename(path, s.directory + "/0000000000000001-0000000000000006.snap")
        #expect(throws: SnapshotError.self) { try s.load(fileName: "0000000000000001-0000000000000006.snap") }
    }

    @Test func purgeKeepsTheNewest() throws {
        let tmp = try WALTempDir("snap")
        defer { tmp.cleanup() }
        let s = try snapshotter(tmp)
        for i in 1...8 { try s.save(StoredSnapshot(index: UInt64(i), term: UInt64(1 + i / 4), data: [])) }
        try walWriteFile(s.directory + "/0000000000000009-0000000000000009.snap.tmp", [1])
        let removed = try s.purge(keep: 5)
        #expect(removed.count == 4)
        #expect(try s.fileNames().map { Snapshotter.parse($0)!.index } == [4, 5, 6, 7, 8])
        #expect(try FileIO.list(s.directory).count == 5)
        #expect(try s.purge(keep: 0).isEmpty)
    }
}
