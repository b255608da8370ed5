import BoltFormat
import EtcdSnapshot
import Foundation
import LMDBBackend
import MVCC
import Raft
import Testing

#if canImport(Glibc)
import Glibc
#endif

final class TempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "swetcd-bolt-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Seeded tests draw from Raft's SplitMix64, so failures replay from their seed.
typealias SeededRandom = SplitMix64

/// A bucket tree in memory: the model the file must reproduce.
indirect enum Model: Equatable {
    case bucket([[UInt8]: Model])
    case value([UInt8])
}

/// Writes `model` (a bucket of buckets) with `BoltWriter`.
func write(_ entries: [[UInt8]: Model], to path: String) throws {
    let w = try BoltWriter(path: path)
    func build(_ entries: [[UInt8]: Model]) throws -> BoltBucketBuilder {
        let bucket = w.makeBucket()
        for k in entries.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            switch entries[k]! {
            case .value(let v): try bucket.put(k, v)
            case .bucket(let sub): try bucket.putBucket(k, try build(sub))
            }
        }
        return bucket
    }
    try w.finish(root: try build(entries), sync: false)
}

/// Reads a bucket back into a model.
func read(_ r: BoltReader, _ ref: BoltBucketRef) throws -> [[UInt8]: Model] {
    var out: [[UInt8]: Model] = [:]
    var last: [UInt8]?
    try r.forEach(ref) { k, v, nested in
        if let last { #expect(last.lexicographicallyPrecedes(k)) }
        last = k
        if let nested { out[k] = .bucket(try read(r, nested)) } else { out[k] = .value(v!) }
        return true
    }
    return out
}

func count(_ m: [[UInt8]: Model]) -> (buckets: Int, keys: Int) {
    var buckets = 0, keys = 0
    for v in m.values {
        switch v {
        case .value: keys += 1
        case .bucket(let sub):
            let c = count(sub)
            buckets += 1 + c.buckets
            keys += c.keys
        }
    }
    return (buckets, keys)
}

@Suite struct BoltWriterReaderTests {
    /// Buckets of every shape round-trip: empty, inline (small, flat), one leaf, several
    /// branch levels (long keys), values spanning overflow pages, nested buckets two deep; the
    /// file passes the full check with every page reachable exactly once.
    @Test func roundTripOfEveryShape() throws {
        let dir = TempDir()
        var rng = SeededRandom(seed: 7)
        var many: [[UInt8]: Model] = [:]
        for i in 0..<20_000 { many[b(String(format: "/registry/pods/ns-%05d/pod", i))] = .value(b("v\(i)")) }
        var longKeys: [[UInt8]: Model] = [:]
        for i in 0..<300 { longKeys[b("\(i)") + [UInt8](repeating: UInt8(65 + i % 26), count: 1500)] = .value([]) }
        var big: [[UInt8]: Model] = [:]
        for i in 0..<5 { big[b("big\(i)")] = .value((0..<(10_000 * (i + 1))).map { _ in UInt8.random(in: 0...255, using: &rng) }) }
        let model: [[UInt8]: Model] = [
            b("empty"): .bucket([:]),
            b("inline"): .bucket([b("a"): .value(b("1")), b("b"): .value(b("2"))]),
            b("many"): .bucket(many),
            b("long"): .bucket(longKeys),
            b("big"): .bucket(big),
            b("nested"): .bucket([b("child"): .bucket([b("grandchild"): .bucket([b("x"): .value(b("y"))]), b("k"): .value(b("v"))]),
                                  b("plain"): .value(b("p"))]),
        ]
        let path = dir.file("db")
        try write(model, to: path)
        let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
        #expect(size % 4096 == 0)
        let r = try BoltReader(path: path)
        #expect(r.pageSize == 4096)
        #expect(r.meta.txid == 2)
        #expect(Int(r.meta.pageCount) * 4096 == size)
        #expect(try read(r, r.root) == model)
        let report = try r.check()
        let c = count(model)
        #expect(report.buckets == c.buckets)
        #expect(report.keys == c.keys)
        #expect(report.freePages == 0)
        #expect(report.reachablePages == Int(r.meta.pageCount))
        // The same bytes through the in-memory reader.
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(try read(try BoltReader(bytes: bytes), .page(r.meta.rootPage)) == model)
        #expect(BoltReader.looksLikeBolt(Array(bytes.prefix(64))))
        // Lookup by name.
        #expect(try r.bucket(b("inline")) != nil)
        #expect(try r.bucket(b("absent")) == nil)
        if case .inline = try r.bucket(b("inline"))! {} else { Issue.record("a small flat bucket is inline") }
        if case .page = try r.bucket(b("many"))! {} else { Issue.record("a large bucket has its own pages") }
    }

    @Test func writerRefusesMisuse() throws {
        let dir = TempDir()
        let w = try BoltWriter(path: dir.file("db"))
        let bucket = w.makeBucket()
        try bucket.put(b("b"), [])
        #expect(throws: BoltError.self) { try bucket.put(b("a"), []) }
        #expect(throws: BoltError.self) { try bucket.put(b("b"), []) }
        #expect(throws: BoltError.self) { try bucket.put([], []) }
        #expect(throws: BoltError.self) { try bucket.put([UInt8](repeating: 1, count: 40_000), []) }
        #expect(throws: BoltError.self) { try BoltWriter(path: dir.file("db")) }  // exists
        #expect(throws: BoltError.self) { try BoltWriter(path: dir.file("x"), pageSize: 1000) }
    }

    @Test func clearErrorsForFilesThatAreNotBolt() throws {
        func message(_ bytes: [UInt8]) -> String {
            do {
                _ = try BoltReader(bytes: bytes)
                return "opened"
            } catch let e as BoltError { return e.message } catch { return "\(error)" }
        }
        #expect(message([]).hasPrefix("invalid database"))
        #expect(message([UInt8](repeating: 0, count: 8192)) == "invalid database")
        let dir = TempDir()
        try write([b("a"): .bucket([b("k"): .value(b("v"))])], to: dir.file("db"))
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("db"))))
        // Both metas damaged: the checksum says so.
        bytes[16 + 30] ^= 1
        bytes[4096 + 16 + 30] ^= 1
        #expect(message(bytes) == "checksum error in meta page")
        // One meta damaged: the other one is used.
        bytes[16 + 30] ^= 1
        #expect(message(bytes) == "opened")
        // No stored freelist (etcd 3.4 writes none): unreachable pages count as free, as in bbolt.
        var noFreelist = bytes
        for m in [16, 4096 + 16] {
            for i in 0..<8 { noFreelist[m + 32 + i] = 0xFF }
            let sum = BoltLayout.fnv64a(noFreelist[m..<(m + 56)])
            for i in 0..<8 { noFreelist[m + 56 + i] = UInt8(truncatingIfNeeded: sum >> (8 * UInt64(i))) }
        }
        let r = try BoltReader(bytes: noFreelist)
        #expect(r.meta.freelistPage == UInt64.max)
        #expect(try r.check().freePages == 1)
        // With a stored freelist, a page neither reachable nor free is an error.
        var leaked = bytes
        leaked += [UInt8](repeating: 0, count: 4096)
        for m in [16, 4096 + 16] {
            let hw = UInt64(leaked.count / 4096)
            for i in 0..<8 { leaked[m + 40 + i] = UInt8(truncatingIfNeeded: hw >> (8 * UInt64(i))) }
            let sum = BoltLayout.fnv64a(leaked[m..<(m + 56)])
            for i in 0..<8 { leaked[m + 56 + i] = UInt8(truncatingIfNeeded: sum >> (8 * UInt64(i))) }
        }
        #expect(throws: BoltError("page \(leaked.count / 4096 - 1): unreachable unfreed")) { try BoltReader(bytes: leaked).check() }
        // Truncated below the high-water mark.
        #expect(message(Array(bytes.prefix(3 * 4096))).contains("pages in use"))
    }
}

/// Seeded fuzzing of the reader: valid files with damage, including damage behind a fixed-up
/// meta checksum. Every trial must open and walk cleanly or throw a `BoltError`.
/// `BOLT_FUZZ_SEED` / `BOLT_FUZZ_TRIALS` replay or lengthen a run.
@Suite struct BoltReaderFuzzTests {
    @Test(.timeLimit(.minutes(3))) func damagedFilesFailCleanly() throws {
        let env = ProcessInfo.processInfo.environment
        let seed = UInt64(env["BOLT_FUZZ_SEED"] ?? "") ?? 1
        let trials = Int(env["BOLT_FUZZ_TRIALS"] ?? "") ?? 400
        var rng = SeededRandom(seed: seed)
        let dir = TempDir()
        var many: [[UInt8]: Model] = [:]
        for i in 0..<600 { many[b("key-\(i)")] = .value([UInt8](repeating: UInt8(i % 200), count: i % 50)) }
        let model: [[UInt8]: Model] = [
            b("a"): .bucket([b("x"): .value(b("1"))]),
            b("many"): .bucket(many),
            b("big"): .bucket([b("v"): .value([UInt8](repeating: 7, count: 9000))]),
            b("nested"): .bucket([b("inner"): .bucket(many), b("small"): .bucket([b("q"): .value(b("r"))])]),
        ]
        try write(model, to: dir.file("db"))
        let original = Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("db"))))
        var opened = 0, refused = 0
        let extremes: [UInt64] = [0, 1, 2, 3, 0xFF, 0xFFFF, 0xFFFF_FFFF, UInt64.max, UInt64.max - 1, 1 << 31, 1 << 63, 4096, 65535]
        for trial in 0..<trials {
            var bytes = original
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let o = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<5, using: &rng) {
                case 0: bytes[o] ^= UInt8.random(in: 1...255, using: &rng)
                case 1:
                    // An extreme integer at a page-relative field offset.
                    let page = o / 4096 * 4096
                    let field = page + [0, 8, 10, 12, 16, 20, 24, 28, 32, 40].randomElement(using: &rng)!
                    let v = extremes.randomElement(using: &rng)!
                    for i in 0..<8 where field + i < bytes.count { bytes[field + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
                case 2: bytes.removeLast(Int.random(in: 0...min(bytes.count - 1, 9000), using: &rng))
                case 3:
                    // Copy a random page over another.
                    let pages = bytes.count / 4096
                    if pages > 2 {
                        let from = Int.random(in: 0..<pages, using: &rng) * 4096, to = Int.random(in: 2..<pages, using: &rng) * 4096
                        bytes.replaceSubrange(to..<(to + 4096), with: bytes[from..<(from + 4096)])
                    }
                default:
                    bytes[o] = UInt8.random(in: 0...255, using: &rng)
                }
            }
            // Mostly, fix the meta checksums so the damage reaches the pages.
            if Int.random(in: 0..<4, using: &rng) != 0 {
                for m in [16, 4096 + 16] where m + 64 <= bytes.count {
                    let sum = BoltLayout.fnv64a(bytes[m..<(m + 56)])
                    for i in 0..<8 { bytes[m + 56 + i] = UInt8(truncatingIfNeeded: sum >> (8 * UInt64(i))) }
                }
            }
            do {
                let r = try BoltReader(bytes: bytes)
                _ = try r.check()
                _ = try read(r, r.root)
                opened += 1
            } catch is BoltError {
                refused += 1
            } catch {
                Issue.record("seed \(seed) trial \(trial): unexpected error \(error)")
            }
        }
        print("bolt fuzz seed \(seed): \(opened) opened, \(refused) refused (replay: BOLT_FUZZ_SEED=\(seed) BOLT_FUZZ_TRIALS=\(trials))")
        #expect(refused > 0)
        #expect(opened > 0)
    }
}
