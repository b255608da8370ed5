import Foundation
import Raft
import Testing
@testable import Storage

@Suite struct WALTests {
    let meta = WALMetadata(memberID: 0x1234, clusterID: 0xABCD).encoded

    func entries(_ range: ClosedRange<UInt64>, term: UInt64, size: Int = 10) -> [WALEntry] {
        range.map { WALEntry(index: $0, term: term, data: Array(repeating: UInt8(truncatingIfNeeded: $0), count: size)) }
    }

    @Test func writeCloseReopenRoundTrip() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let wal = try WAL.create(directory: dir, metadata: meta, options: WALOptions(segmentSize: 1 << 20))
        #expect(wal.segmentFiles == ["0000000000000000-0000000000000000.wal"])
        #expect(try walFileSize(dir + "/" + wal.segmentFiles[0]) == 1 << 20)
        let hs = WALHardState(term: 1, vote: 7, commit: 2)
        #expect(try wal.save(hardState: hs, entries: entries(1...3, term: 1)))
        #expect(try wal.save(hardState: WALHardState(term: 1, vote: 7, commit: 3), entries: []) == false)
        #expect(try wal.save(hardState: nil, entries: entries(4...4, term: 1, size: 0)))
        try wal.close()
        #expect(throws: WALError.closed) { try wal.sync() }

        let (again, got) = try WAL.open(directory: dir, options: WALOptions(segmentSize: 1 << 20))
        defer { try? again.close() }
        #expect(got.metadata == meta)
        #expect(WALMetadata(decoding: got.metadata) == WALMetadata(memberID: 0x1234, clusterID: 0xABCD))
        #expect(got.hardState == WALHardState(term: 1, vote: 7, commit: 3))
        #expect(got.entries == entries(1...3, term: 1) + entries(4...4, term: 1, size: 0))
        #expect(got.tornTail == nil)
        #expect(again.lastIndex == 4)
        #expect(try WAL.read(directory: dir) == got)
    }

    @Test func laterEntriesReplaceEarlierOnesFromTheirIndex() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let wal = try WAL.create(directory: dir, metadata: meta)
        try wal.save(hardState: WALHardState(term: 1), entries: entries(1...5, term: 1))
        try wal.save(hardState: WALHardState(term: 2), entries: entries(3...4, term: 2, size: 3))
        #expect(wal.lastIndex == 4)
        try wal.close()
        let got = try WAL.read(directory: dir)
        #expect(got.entries == entries(1...2, term: 1) + entries(3...4, term: 2, size: 3))
        #expect(got.hardState.term == 2)
    }

    @Test func entriesMustBeConsecutive() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let wal = try WAL.create(directory: tmp.sub("wal"), metadata: meta)
        try wal.save(hardState: nil, entries: entries(1...2, term: 1))
        #expect(throws: WALError.self) { try wal.save(hardState: nil, entries: entries(4...5, term: 1)) }
        #expect(throws: WALError.self) { try wal.save(hardState: nil, entries: entries(3...3, term: 1) + entries(5...5, term: 1)) }
        #expect(throws: WALError.self) { try wal.save(hardState: nil, entries: entries(0...0, term: 1)) }
        // Rejected batches wrote nothing; the log is still usable.
        try wal.save(hardState: nil, entries: entries(3...3, term: 1))
        try wal.close()
        #expect(try WAL.read(directory: tmp.sub("wal")).entries == entries(1...3, term: 1))
    }

    @Test func mustSyncRule() {
        let a = WALHardState(term: 1, vote: 2, commit: 3)
        #expect(!WAL.mustSync(WALHardState(term: 1, vote: 2, commit: 9), previous: a, entryCount: 0))
        #expect(WAL.mustSync(WALHardState(term: 2, vote: 2, commit: 3), previous: a, entryCount: 0))
        #expect(WAL.mustSync(WALHardState(term: 1, vote: 3, commit: 3), previous: a, entryCount: 0))
        #expect(WAL.mustSync(a, previous: a, entryCount: 1))
    }

    @Test func segmentsAreCutAndReadBack() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let opts = WALOptions(segmentSize: 4096, maxSegmentFiles: 0)
        let wal = try WAL.create(directory: dir, metadata: meta, options: opts)
        var all: [WALEntry] = []
        for i in 0..<40 {
            let batch = entries(UInt64(i * 5 + 1)...UInt64(i * 5 + 5), term: 3, size: 100)
            all += batch
            try wal.save(hardState: WALHardState(term: 3, vote: 1, commit: UInt64(i * 5)), entries: batch)
        }
        let files = wal.segmentFiles
        #expect(files.count > 5)
        for (i, f) in files.enumerated() {
            let name = try #require(WALSegmentName(parsing: f))
            #expect(name.sequence == UInt64(i))
            // A finished segment is trimmed to its records; each new one starts after the last entry.
            if i + 1 < files.count {
                #expect(try walFileSize(dir + "/" + f) <= 4096 + 600)
                let next = try #require(WALSegmentName(parsing: files[i + 1]))
                #expect(next.firstIndex % 5 == 1)
            }
        }
        try wal.close()
        let got = try WAL.read(directory: dir)
        #expect(got.entries == all)
        #expect(got.hardState == WALHardState(term: 3, vote: 1, commit: 195))
        // Every segment carries the metadata and the hard state of its start.
        let tail = try WALSegmentName(parsing: files.last!).map { name -> [WALRecord] in
            var recs: [WALRecord] = []
            _ = try name.scan(try walFileBytes(dir + "/" + files.last!), file: "", isLast: true) { _, r in recs.append(r) }
            return recs
        }
        #expect(tail?[1] == .metadata(meta))
        if case .hardState = tail?[2] {} else { Issue.record("segment does not restate the hard state: \(String(describing: tail))") }
    }

    @Test func readFromSnapshotAndReleaseOldSegments() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let opts = WALOptions(segmentSize: 4096, maxSegmentFiles: 1)
        let wal = try WAL.create(directory: dir, metadata: meta, options: opts)
        for i in 0..<30 {
            try wal.save(hardState: WALHardState(term: 1, commit: UInt64(i * 4)), entries: entries(UInt64(i * 4 + 1)...UInt64(i * 4 + 4), term: 1, size: 100))
        }
        let marker = WALSnapshotMarker(index: 100, term: 1, confState: [1, 2, 3])
        try wal.saveSnapshot(marker)
        try wal.save(hardState: nil, entries: entries(121...122, term: 1))
        let before = wal.segmentFiles
        #expect(before.count >= 4)
        let removed = try wal.releaseLockTo(100)
        let holding = try #require(before.map { WALSegmentName(parsing: $0)! }.lastIndex { $0.firstIndex <= 100 })
        #expect(removed == Array(before[..<holding]))
        #expect(wal.segmentFiles == Array(before[holding...]))
        #expect(try FileIO.list(dir).filter { $0.hasSuffix(".wal") } == wal.segmentFiles)
        try wal.close()

        let (w2, got) = try WAL.open(directory: dir, snapshot: WALSnapshotMarker(index: 100, term: 1), options: opts)
        #expect(got.snapshot == marker)
        #expect(got.entries.map(\.index) == Array(101...122))
        #expect(w2.lastIndex == 122)
        try w2.close()
        #expect(throws: WALError.snapshotMismatch(index: 100, walTerm: 1, wantedTerm: 2)) {
            try WAL.read(directory: dir, snapshot: WALSnapshotMarker(index: 100, term: 2))
        }
        #expect(throws: WALError.snapshotNotFound(index: 110, term: 1)) {
            try WAL.read(directory: dir, snapshot: WALSnapshotMarker(index: 110, term: 1))
        }
        // The start of the log is gone.
        #expect(throws: WALError.self) { try WAL.read(directory: dir) }
        #expect(try WAL.snapshotMarkers(directory: dir) == [marker])
    }

    @Test func releaseKeepsAtLeastMaxSegmentFiles() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let wal = try WAL.create(directory: dir, metadata: meta, options: WALOptions(segmentSize: 4096, maxSegmentFiles: 5))
        for i in 0..<40 {
            try wal.save(hardState: nil, entries: entries(UInt64(i * 4 + 1)...UInt64(i * 4 + 4), term: 1, size: 200))
        }
        let count = wal.segmentFiles.count
        #expect(count > 5)
        try wal.releaseLockTo(160)
        #expect(wal.segmentFiles.count == 5)
        try wal.close()
    }

    @Test func createRecoversFromAnInterruptedCreate() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        // A crash during create leaves only <dir>.tmp, possibly with a partial segment.
        try FileIO.makeDirectory(dir + ".tmp")
        try walWriteFile(dir + ".tmp/0000000000000000-0000000000000000.wal", [1, 2, 3])
        #expect(throws: WALError.notFound("no WAL directory at \(dir)")) { try WAL.open(directory: dir) }
        let wal = try WAL.create(directory: dir, metadata: meta)
        try wal.close()
        #expect(!FileIO.exists(dir + ".tmp"))
        #expect(try WAL.read(directory: dir).metadata == meta)
        // Anything else in the temp directory is not ours to delete.
        let other = tmp.sub("other")
        try FileIO.makeDirectory(other + ".tmp")
        try walWriteFile(other + ".tmp/keep.txt", [1])
        #expect(throws: WALError.self) { try WAL.create(directory: other, metadata: meta) }
        #expect(FileIO.exists(other + ".tmp/keep.txt"))
    }

    @Test func directoryIsLockedWhileOpen() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let wal = try WAL.create(directory: dir, metadata: meta)
        #expect(throws: WALError.locked(dir)) { try WAL.open(directory: dir) }
        #expect(throws: WALError.alreadyExists(dir)) { try WAL.create(directory: dir, metadata: meta) }
        try wal.close()
        let (w2, _) = try WAL.open(directory: dir)
        try w2.close()
    }

    @Test func tornTailIsCutAndWritingContinues() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let wal = try WAL.create(directory: dir, metadata: meta, options: WALOptions(segmentSize: 8192))
        try wal.save(hardState: WALHardState(term: 1), entries: entries(1...3, term: 1))
        try wal.save(hardState: nil, entries: entries(4...4, term: 1, size: 50))
        try wal.close()
        let file = dir + "/" + wal.segmentFiles[0]
        var bytes = try walFileBytes(file)
        let recs = try WAL.dumpRecords(file)
        let last = try #require(recs.last)
        // Tear the last record: keep half of it, zeros after.
        let cutAt = Int(last.offset) + last.size / 2
        for i in cutAt..<bytes.count { bytes[i] = 0 }
        bytes[cutAt - 1] ^= 0x40
        try walWriteFile(file, bytes)

        let (w2, got) = try WAL.open(directory: dir, options: WALOptions(segmentSize: 8192))
        #expect(got.entries == entries(1...3, term: 1))
        #expect(got.tornTail?.offset == last.offset)
        #expect(try walFileSize(file) == 8192)
        try w2.save(hardState: nil, entries: entries(4...5, term: 1))
        try w2.close()
        let again = try WAL.read(directory: dir)
        #expect(again.entries == entries(1...5, term: 1))
        #expect(again.tornTail == nil)
    }

    @Test func damageFollowedByValidRecordsNamesFileAndOffset() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let wal = try WAL.create(directory: dir, metadata: meta)
        for i in 0..<5 { try wal.save(hardState: nil, entries: entries(UInt64(i + 1)...UInt64(i + 1), term: 1, size: 40)) }
        try wal.close()
        let file = dir + "/" + wal.segmentFiles[0]
        let recs = try WAL.dumpRecords(file)
        let victim = recs[recs.count - 3]
        var bytes = try walFileBytes(file)
        bytes[Int(victim.offset) + 20] ^= 1
        try walWriteFile(file, bytes)
        let err = #expect(throws: WALError.self) { try WAL.open(directory: dir) }
        #expect(err == .corrupt(file: file, offset: victim.offset, reason: "record CRC mismatch (a valid record follows at offset \(recs[recs.count - 2].offset))"))
        #expect("\(err!)".contains(file) && "\(err!)".contains("offset \(victim.offset)"))
        // Nothing was modified.
        #expect(try walFileBytes(file) == bytes)
    }

    @Test func corruptionInAnEarlierSegmentIsFatal() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let opts = WALOptions(segmentSize: 4096)
        let wal = try WAL.create(directory: dir, metadata: meta, options: opts)
        for i in 0..<20 { try wal.save(hardState: nil, entries: entries(UInt64(i * 4 + 1)...UInt64(i * 4 + 4), term: 1, size: 200)) }
        try wal.close()
        let file = dir + "/" + wal.segmentFiles[1]
        var bytes = try walFileBytes(file)
        // Damage the very last record of a finished segment.
        let last = try #require(WAL.dumpRecords(file).last)
        bytes[bytes.count - 1 - (last.size - WALFrame.headerSize) / 2] ^= 0x80
        try walWriteFile(file, bytes)
        let err = #expect(throws: WALError.self) { try WAL.open(directory: dir, options: opts) }
        guard case let .corrupt(f, off, _)? = err else { Issue.record("wrong error \(String(describing: err))"); return }
        #expect(f == file && off == last.offset)
    }

    @Test func missingSegmentInTheMiddleIsFatal() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let wal = try WAL.create(directory: dir, metadata: meta, options: WALOptions(segmentSize: 4096))
        for i in 0..<20 { try wal.save(hardState: nil, entries: entries(UInt64(i * 4 + 1)...UInt64(i * 4 + 4), term: 1, size: 200)) }
        try wal.close()
        try FileIO.remove(dir + "/" + wal.segmentFiles[2])
        #expect(throws: WALError.self) { try WAL.read(directory: dir) }
    }

    @Test func dumpReportsDamageAndCarriesOn() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let wal = try WAL.create(directory: dir, metadata: meta, options: WALOptions(segmentSize: 4096))
        try wal.save(hardState: WALHardState(term: 2, vote: 1, commit: 0), entries: entries(1...6, term: 2, size: 30))
        try wal.saveSnapshot(WALSnapshotMarker(index: 3, term: 2))
        try wal.close()
        let file = dir + "/" + wal.segmentFiles[0]
        let clean = try WAL.dumpRecords(file)
        #expect(clean.map(\.kind) == [.segmentHeader, .metadata] + Array(repeating: .entry, count: 6) + [.hardState, .snapshot])
        #expect(clean[2].index == 1 && clean[2].term == 2 && clean[9].index == 3)
        #expect(zip(clean, clean.dropFirst()).allSatisfy { $0.offset + Int64($0.size) == $1.offset })

        // Damage the third entry and put garbage after the last record.
        var bytes = try walFileBytes(file)
        bytes[Int(clean[4].offset) + 13] ^= 0xFF
        let end = Int(clean[9].offset) + clean[9].size
        for i in end..<(end + 20) { bytes[i] = 0x5A }
        try walWriteFile(file, bytes)
        var events: [WALDumpEvent] = []
        try WAL.dump(directory: dir) { events.append($0) }
        #expect(events.count == clean.count + 1)
        #expect(events[4] == .damage(WALDumpDamage(file: file, offset: clean[4].offset, length: Int64(clean[4].size),
                                                   reason: "record CRC mismatch", atEnd: false)))
        #expect(events[5] == .record(clean[5]))
        guard case let .damage(tail)? = events.last else { Issue.record("tail garbage not reported"); return }
        #expect(tail.offset == Int64(end) && tail.atEnd)
    }

    @Test func garbageIsAnErrorNotACrash() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        try FileIO.makeDirectory(dir)
        var rng = SplitMix64(seed: 42)
        for _ in 0..<20 {
            let name = dir + "/0000000000000000-0000000000000000.wal"
            try walWriteFile(name, walBytes(Int.random(in: 0..<3000, using: &rng), &rng))
            #expect(throws: WALError.self) { try WAL.read(directory: dir) }
        }
    }
}

extension WAL {
    /// Records of one segment file, with offsets, via the dump API.
    static func dumpRecords(_ file: String) throws -> [WALDumpRecord] {
        var out: [WALDumpRecord] = []
        try WAL.dump(directory: FileIO.parent(file)) { event in
            if case let .record(r) = event, r.file == file { out.append(r) }
        }
        return out
    }
}

/// The tail is written with zeros ahead of the records, so a sync after a write does not also
/// convert preallocated (unwritten) extents; the zeros read as preallocated space.
@Suite struct WALZeroAheadTests {
    let meta = WALMetadata(memberID: 0x1234, clusterID: 0xABCD).encoded

    @Test func theTailIsWrittenAMiBAheadOfTheRecords() throws {
        let tmp = try WALTempDir()
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        let segment: Int64 = 8 << 20
        let wal = try WAL.create(directory: dir, metadata: meta, options: WALOptions(segmentSize: segment))
        let file = dir + "/" + wal.segmentFiles[0]
        let mib: Int64 = 1 << 20
        func overlaps(_ ranges: [Range<Int64>], _ r: Range<Int64>) -> Bool { ranges.contains { $0.overlaps(r) } }
        // Where the file system keeps no unwritten extents (or filefrag is missing) there is
        // nothing to see.
        guard let fresh = try walUnwrittenExtents(file), overlaps(fresh, 4096..<segment) else { return }

        func batch(_ first: UInt64, count: Int, size: Int) -> [WALEntry] {
            (first..<first + UInt64(count)).map { WALEntry(index: $0, term: 1, data: Array(repeating: 7, count: size)) }
        }
        // About 40 KiB of records: written up to a MiB past them, not further.
        try wal.save(hardState: WALHardState(term: 1), entries: batch(1, count: 10, size: 4000))
        let first = try #require(try walUnwrittenExtents(file))
        #expect(!overlaps(first, 0..<mib), "\(first)")
        #expect(overlaps(first, 2 * mib..<segment), "\(first)")
        // Records up to about 1.2 MiB: the written part moved on with them.
        for i in 0..<12 { try wal.save(hardState: nil, entries: batch(11 + UInt64(i) * 10, count: 10, size: 10_000)) }
        let later = try #require(try walUnwrittenExtents(file))
        #expect(!overlaps(later, 0..<mib + mib / 2), "\(later)")
        #expect(overlaps(later, 3 * mib..<segment), "\(later)")
        try wal.close()

        // The zeros read as preallocated space: everything comes back, no torn tail.
        let (again, got) = try WAL.open(directory: dir, options: WALOptions(segmentSize: segment))
        defer { try? again.close() }
        #expect(got.entries.count == 130)
        #expect(got.entries.last?.index == 130)
        #expect(got.tornTail == nil)
    }
}
