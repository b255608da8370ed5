import Foundation
import Raft
import Testing
@testable import Storage

/// Crash tests: a WAL history is written once per seed, then many simulated crashes are cut
/// out of it. A crash during batch c leaves: everything up to the last synced batch intact,
/// the later (unsynced) bytes cut at a random offset, and optionally bit flips in the torn
/// last record or whole lost (zeroed) pages of the unsynced region. Reopening must give the
/// state after a prefix of the records that includes every synced batch, must accept new
/// writes, and those must survive another reopen.
///
/// WAL_CRASH_SEED=<n> replays one seed; WAL_CRASH_HISTORIES / WAL_CRASH_TRIALS lengthen the run.
@Suite struct WALCrashTests {
    static let segmentSize: Int64 = 65536
    let meta = WALMetadata(memberID: 7, clusterID: 9).encoded

    /// A position in the record stream: segment sequence and byte offset.
    struct Pos: Comparable {
        var seg: Int
        var off: Int
        static func < (a: Pos, b: Pos) -> Bool { (a.seg, a.off) < (b.seg, b.off) }
    }

    struct Batch {
        var end: Pos
        var synced: Bool
    }

    /// Log state the WAL must reproduce.
    struct Model: Equatable {
        var entries: [WALEntry] = []
        var hardState = WALHardState()

        mutating func apply(_ r: WALRecord) {
            switch r {
            case let .entry(e):
                entries.removeSubrange(entries.prefix { $0.index < e.index }.count...)
                entries.append(e)
            case let .hardState(h):
                hardState = h
            default:
                break
            }
        }
    }

    struct History {
        var batches: [Batch]
        var start: Pos
        var images: [[UInt8]]
        var files: [String]
        /// Every record in stream order with its file position.
        var records: [(pos: Pos, end: Int, record: WALRecord)]
        var lastTerm: UInt64
    }

    func writeHistory(seed: UInt64, dir: String) throws -> History {
        var rng = SplitMix64(seed: seed)
        let wal = try WAL.create(directory: dir, metadata: meta, options: WALOptions(segmentSize: Self.segmentSize))
        let p0 = wal.tailPosition
        var batches: [Batch] = []
        var last: UInt64 = 0
        var term: UInt64 = 1
        var model = Model()
        for _ in 0..<Int.random(in: 60...90, using: &rng) {
            var first = last + 1
            if last > 0 && Int.random(in: 0..<8, using: &rng) == 0 {
                term += 1
                first = UInt64.random(in: (last > 4 ? last - 4 : 1)...last, using: &rng)
            }
            // Some batches only move the commit index (not synced); some span several pages.
            let n = Bool.random(using: &rng) ? 0 : Int.random(in: 1...8, using: &rng)
            let big = Int.random(in: 0..<4, using: &rng) == 0
            let ents = (0..<n).map { i in
                WALEntry(index: first + UInt64(i), term: term,
                         data: walBytes(Int.random(in: 0...(big ? 3000 : 400), using: &rng), &rng))
            }
            if n > 0 { last = first + UInt64(n) - 1 }
            var hs = wal.hardState
            hs.term = term
            if Bool.random(using: &rng) { hs.vote = UInt64.random(in: 0...3, using: &rng) }
            hs.commit = UInt64.random(in: 0...max(last, 1), using: &rng)
            let synced = try wal.save(hardState: hs, entries: ents)
            for e in ents { model.apply(.entry(e)) }
            if hs != model.hardState && !hs.isEmpty { model.apply(.hardState(hs)) }
            let p = wal.tailPosition
            batches.append(Batch(end: Pos(seg: Int(p.sequence), off: Int(p.offset)), synced: synced))
        }
        let files = wal.segmentFiles
        try wal.close()
        var records: [(pos: Pos, end: Int, record: WALRecord)] = []
        try WAL.dump(directory: dir) { ev in
            guard case let .record(r) = ev else { Issue.record("damage in an intact WAL: \(ev)"); return }
            let seg = files.firstIndex(of: FileIO.lastComponent(r.file))!
            records.append((Pos(seg: seg, off: Int(r.offset)), Int(r.offset) + r.size, r.record))
        }
        var replay = Model()
        for r in records { replay.apply(r.record) }
        #expect(replay == model, "seed \(seed): the WAL does not hold what was written")
        let images = try files.map { try walFileBytes(dir + "/" + $0) }
        return History(batches: batches, start: Pos(seg: Int(p0.sequence), off: Int(p0.offset)),
                       images: images, files: files, records: records, lastTerm: term)
    }

    @Test func recoveredStateIsASyncedPrefix() throws {
        let env = ProcessInfo.processInfo.environment
        let fixed = env["WAL_CRASH_SEED"].flatMap { UInt64($0) }
        let histories = fixed == nil ? Int(env["WAL_CRASH_HISTORIES"] ?? "") ?? 3 : 1
        let trials = Int(env["WAL_CRASH_TRIALS"] ?? "") ?? 60
        let tmp = try WALTempDir("crash")
        defer { tmp.cleanup() }
        var stats = Stats()
        for h in 0..<histories {
            let seed = fixed ?? UInt64.random(in: 0...UInt64.max)
            let hdir = tmp.sub("h\(h)")
            let history = try writeHistory(seed: seed, dir: hdir)
            var rng = SplitMix64(seed: seed ^ 0x5EED)
            for t in 0..<trials {
                let ok = try crashTrial(history, dir: tmp.sub("h\(h)-t\(t)"), rng: &rng,
                                        label: "WAL_CRASH_SEED=\(seed) trial \(t)", stats: &stats)
                if !ok { return }
            }
        }
        // The run must have exercised what it claims to.
        if histories * trials >= 100 {
            #expect(stats.tornTails > 0 && stats.flips > 0 && stats.lostPages > 0,
                    "weak coverage: \(stats)")
        }
        print("WAL crash tests: \(histories * trials) crashes, \(stats)")
    }

    /// A flipped bit in any record that valid records follow (or in any record of a finished
    /// segment) is corruption, not a torn tail: opening fails naming the file and the offset.
    @Test func damageBeforeValidRecordsNamesFileAndOffset() throws {
        let seed = ProcessInfo.processInfo.environment["WAL_CRASH_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64.max)
        let tmp = try WALTempDir("crash-mid")
        defer { tmp.cleanup() }
        let history = try writeHistory(seed: seed, dir: tmp.sub("h"))
        var rng = SplitMix64(seed: seed ^ 0xBAD)
        let lastSeg = history.files.count - 1
        let candidates = history.records.indices.filter { i in
            history.records[i].pos.seg < lastSeg || (i + 1 < history.records.count && history.records[i + 1].pos.seg == lastSeg)
        }
        let dir = tmp.sub("wal")
        try FileIO.makeDirectory(dir)
        for (i, f) in history.files.enumerated() { try walWriteFile(dir + "/" + f, history.images[i]) }
        for t in 0..<40 {
            let victim = history.records[candidates.randomElement(using: &rng)!]
            let file = dir + "/" + history.files[victim.pos.seg]
            var image = history.images[victim.pos.seg]
            let at = Int.random(in: victim.pos.off..<victim.end, using: &rng)
            image[at] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &rng)
            try walWriteFile(file, image)
            let label = "WAL_CRASH_SEED=\(seed) trial \(t): flip at \(file) byte \(at) in the record at \(victim.pos.off)"
            do {
                _ = try WAL.read(directory: dir)
                Issue.record("\(label): read succeeded")
                return
            } catch let WALError.corrupt(f, offset, reason) {
                guard f == file && offset == Int64(victim.pos.off) else {
                    Issue.record("\(label): error names \(f) offset \(offset): \(reason)")
                    return
                }
            }
            // Opening for writing refuses too and leaves the file as it was.
            #expect(throws: WALError.self, "\(label)") { try WAL.open(directory: dir, options: WALOptions(segmentSize: Self.segmentSize)) }
            #expect(try walFileBytes(file) == image, "\(label): file modified")
            try walWriteFile(file, history.images[victim.pos.seg])
        }
    }

    /// A batch spanning several pages of which a middle one never reached the disk: the records
    /// from the lost page on are cut (they were never synced), although later ones are intact.
    /// The same stretch filled with garbage instead of zeros is corruption.
    @Test func tornMultiPageWriteIsCutButGarbageIsNot() throws {
        let tmp = try WALTempDir("crash-pages")
        defer { tmp.cleanup() }
        let dir = tmp.sub("wal")
        var rng = SplitMix64(seed: 11)
        let wal = try WAL.create(directory: dir, metadata: meta, options: WALOptions(segmentSize: 1 << 20))
        let a = (1...3).map { WALEntry(index: $0, term: 1, data: walBytes(100, &rng)) }
        let b = (4...11).map { WALEntry(index: $0, term: 1, data: walBytes(3000, &rng)) }
        try wal.save(hardState: WALHardState(term: 1, commit: 3), entries: a)
        let synced = Int(wal.tailPosition.offset)
        try wal.save(hardState: nil, entries: b)
        try wal.close()
        let file = dir + "/" + wal.segmentFiles[0]
        let original = try walFileBytes(file)
        let page = (synced + 4096 + 4095) & ~4095
        let recs = try WAL.dumpRecords(file)
        let keep = recs.filter { $0.kind == .entry && Int($0.offset) + $0.size <= page }.count

        var image = original
        for i in page..<(page + 4096) { image[i] = 0 }
        try walWriteFile(file, image)
        let got = try WAL.read(directory: dir)
        #expect(got.entries == Array((a + b).prefix(keep)))
        #expect(keep > 3 && keep < 10)
        #expect(got.tornTail != nil)

        var garbage = original
        for i in page..<(page + 4096) { garbage[i] = UInt8.random(in: 1...255, using: &rng) }
        try walWriteFile(file, garbage)
        let damaged = try #require(recs.last { Int($0.offset) <= page })
        #expect(throws: WALError.corrupt(file: file, offset: damaged.offset,
                                         reason: "record CRC mismatch (a valid record follows at offset \(recs.first { Int($0.offset) >= page + 4096 }!.offset))")) {
            try WAL.read(directory: dir)
        }
    }

    struct Stats {
        var tornTails = 0, flips = 0, lostPages = 0, droppedRecords = 0, tempSegments = 0, trimmedSegments = 0
    }

    /// One simulated crash during a random batch; false after a recorded failure.
    func crashTrial(_ h: History, dir: String, rng: inout SplitMix64, label: String, stats: inout Stats) throws -> Bool {
        let c = Int.random(in: 0..<h.batches.count, using: &rng)
        let prev = c == 0 ? h.start : h.batches[c - 1].end
        let seg = prev.seg
        let segRecords = h.records.filter { $0.pos.seg == seg }
        let usedEnd = segRecords.last!.end
        let limit = h.batches[c].end.seg == seg ? h.batches[c].end.off : usedEnd
        let syncedEnd = h.batches[..<c].last(where: \.synced)?.end ?? h.start
        #expect(syncedEnd.seg == seg, "\(label): synced point in another segment")
        var cut = Int.random(in: prev.off...limit, using: &rng)
        // Batch c filled the segment: maybe the crash came after the cut trimmed it.
        let trimmed = h.batches[c].end.seg > seg && Int.random(in: 0..<3, using: &rng) == 0
        if trimmed {
            cut = usedEnd
            stats.trimmedSegments += 1
        }
        let cutEnd = cut

        var image = h.images[seg]
        if image.count < Int(Self.segmentSize) { image += [UInt8](repeating: 0, count: Int(Self.segmentSize) - image.count) }
        let original = image
        for i in cut..<image.count { image[i] = 0 }
        let mode = trimmed ? 0 : Int.random(in: 0..<4, using: &rng)
        var what = trimmed ? "segment trimmed at \(cut)" : "cut at \(cut)"
        if mode == 1 || mode == 3, cut > 0,
           let lastRec = segRecords.last(where: { $0.pos.off < cut }), lastRec.pos.off >= syncedEnd.off {
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let at = Int.random(in: lastRec.pos.off..<cut, using: &rng)
                image[at] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &rng)
                what += ", flip at \(at)"
                stats.flips += 1
            }
        }
        if mode >= 2 {
            let firstPage = (syncedEnd.off + 4095) & ~4095
            if firstPage < cut {
                for _ in 0..<Int.random(in: 1...2, using: &rng) {
                    let page = firstPage + 4096 * Int.random(in: 0...((cut - 1 - firstPage) / 4096), using: &rng)
                    for i in page..<min(page + 4096, image.count) { image[i] = 0 }
                    what += ", lost page at \(page)"
                    stats.lostPages += 1
                }
            }
        }
        let firstChange = image.indices.first { image[$0] != original[$0] } ?? image.count

        // Lay out the crashed directory: segments up to the crashed one, maybe a half-made next one.
        try FileIO.makeDirectory(dir)
        for i in 0..<seg { try walWriteFile(dir + "/" + h.files[i], h.images[i]) }
        let crashedFile = dir + "/" + h.files[seg]
        try walWriteFile(crashedFile, trimmed ? Array(image[..<cut]) : image)
        if h.batches[c].end.seg > seg && Bool.random(using: &rng) {
            try walWriteFile(dir + "/" + h.files[seg + 1] + ".tmp", walBytes(300, &rng))
            what += ", half-made next segment"
            stats.tempSegments += 1
        }
        let context = "\(label) (crash in batch \(c), \(what))"

        // Expected: every record that ends before the first changed byte.
        var expected = Model()
        var required = 0
        var kept = 0
        for r in h.records where r.pos.seg < seg || (r.pos.seg == seg && r.end <= firstChange) {
            expected.apply(r.record)
            kept += 1
        }
        for r in h.records where r.pos.seg < syncedEnd.seg || (r.pos.seg == syncedEnd.seg && r.end <= syncedEnd.off) {
            required += 1
        }
        #expect(kept >= required, "\(context): the damage reaches synced records")

        let opened: (wal: WAL, contents: WALContents)
        do {
            opened = try WAL.open(directory: dir, options: WALOptions(segmentSize: Self.segmentSize))
        } catch {
            Issue.record("\(context): reopen failed: \(error)")
            return false
        }
        let got = opened.contents
        if got.tornTail != nil { stats.tornTails += 1 }
        if h.records.contains(where: { $0.pos.seg == seg && $0.pos.off > firstChange + 4096 && $0.end <= cutEnd }) {
            stats.droppedRecords += 1
        }
        guard got.entries == expected.entries, got.hardState == expected.hardState, got.metadata == meta else {
            Issue.record("""
                \(context): recovered \(got.entries.count) entries (last \(got.entries.last.map { "\($0.index)/\($0.term)" } ?? "-")), \
                hard state \(got.hardState); expected \(expected.entries.count) (last \(expected.entries.last.map { "\($0.index)/\($0.term)" } ?? "-")), \
                \(expected.hardState)
                """)
            return false
        }
        #expect(try FileIO.list(dir).allSatisfy { !$0.hasSuffix(".tmp") }, "\(context): temp segment left behind")

        // Writing continues after the repair and survives another reopen.
        let wal = opened.wal
        let next = (expected.entries.last?.index ?? 0) + 1
        let more = [WALEntry(index: next, term: h.lastTerm + 1, data: walBytes(900, &rng)),
                    WALEntry(index: next + 1, term: h.lastTerm + 1, data: [1, 2, 3])]
        let hs = WALHardState(term: h.lastTerm + 1, vote: 1, commit: next)
        #expect(try wal.save(hardState: hs, entries: more))
        try wal.close()
        for e in more { expected.apply(.entry(e)) }
        expected.apply(.hardState(hs))
        let again = try WAL.read(directory: dir)
        guard again.entries == expected.entries, again.hardState == expected.hardState, again.tornTail == nil else {
            Issue.record("\(context): second reopen differs: \(again.entries.count) entries, \(again.hardState), torn \(String(describing: again.tornTail))")
            return false
        }
        try? FileManager.default.removeItem(atPath: dir)
        return true
    }
}
