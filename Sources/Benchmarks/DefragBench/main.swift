// defrag-bench: the longest stall a writer and a reader see while the backend defragments.
//
//     swift run -c release defrag-bench [--dir /tmp] [--size-mib 1024] [--value-bytes 1024]
//                                       [--rate 2000] [--before 3] [--after 2] [--sync 1]
//
// Fills a fresh backend to about --size-mib (unsynced, big batches), deletes every other
// block of 256 keys so about half the file is free pages, and reopens it (synced commits, etcd's 100 ms /
// 10000-operation batching). Then a writer thread applies puts as the server's apply loop
// does (`batch { put; setConsistentIndex }`, `commitIfDue`) at --rate per second on a fixed
// schedule, and a reader thread reads random keys in a loop. Each put's latency is measured
// from its scheduled start, so a stall also counts against the puts queued behind it. After
// --before seconds `defragment()` runs; --after seconds later the run ends. Printed: the
// worst and p99.9 put latency and the worst read before and during the defragmentation, and
// the defragmentation's own figures (copy time, replayed batches, pause, sizes).
#if canImport(Glibc)
import Glibc
import LMDBBackend
#endif
import Foundation
import Synchronization

func argument(_ name: String, _ fallback: String) -> String {
    let args = CommandLine.arguments
    if let i = args.firstIndex(of: name), i + 1 < args.count { return args[i + 1] }
    return fallback
}

let dirBase = argument("--dir", NSTemporaryDirectory())
let sizeMiB = Int(argument("--size-mib", "1024")) ?? 1024
let valueBytes = Int(argument("--value-bytes", "1024")) ?? 1024
let rate = Double(argument("--rate", "2000")) ?? 2000
let beforeSeconds = Double(argument("--before", "3")) ?? 3
let afterSeconds = Double(argument("--after", "2")) ?? 2
let syncCommits = argument("--sync", "1") != "0"

let dir = dirBase + "/defrag-bench-\(getpid())"
try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: dir) }
let path = dir + "/db"

/// Fixed-width keys: key order is number order, so a block of numbers fills whole pages.
func key(_ i: Int) -> [UInt8] {
    let hex = String(i, radix: 16)
    return Array(("key-" + String(repeating: "0", count: max(0, 8 - hex.count)) + hex).utf8)
}
// LMDB stores two 1 KiB values (plus key and node header) per 4 KiB page: about 2x.
let keyCount = sizeMiB * (1 << 20) / (valueBytes * 2)
let value = [UInt8](repeating: 0x61, count: valueBytes)

func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

// Fill, then free every other block of keys.
do {
    let start = ContinuousClock.now
    var o = Backend.Options()
    o.sync = false
    o.initialMapSize = 4 << 30
    let be = try Backend(path: path, options: o)
    for i in 0..<keyCount { try be.put(.key, key: key(i), value: value) }
    try be.commit()
    // Every other block of 256 keys: whole pages become free.
    for i in 0..<keyCount where (i / 256) % 2 == 1 { try be.delete(.key, key: key(i)) }
    try be.commit()
    try be.close()
    print("filled \(keyCount) keys of \(valueBytes) bytes, deleted half, in \(String(format: "%.1f", seconds(ContinuousClock.now - start))) s")
}

var options = Backend.Options()
options.sync = syncCommits
options.initialMapSize = 4 << 30
let backend = try Backend(path: path, options: options)
print("db file \(try backend.fileSize() >> 20) MiB, in use \(try backend.sizeInUse() >> 20) MiB; sync commits: \(syncCommits)")

/// Latencies (ns) of the writer and reader, split into before and during the defragmentation.
struct Samples {
    var puts: [[UInt64]] = [[], [], []]
    var worstRead: [UInt64] = [0, 0, 0]
    var reads = [0, 0, 0]
    var failure: String?
}
let samples = Mutex(Samples())
let phase = Atomic<Int>(0)   // 0 before, 1 during, 2 after
let stop = Atomic<Bool>(false)
let done = DispatchSemaphore(value: 0)

let writer = Thread {
    let origin = ContinuousClock.now
    let interval = 1.0 / rate
    var n = 0
    var index: UInt64 = 0
    var rng = SystemRandomNumberGenerator()
    while !stop.load(ordering: .relaxed) {
        let scheduled = origin + .nanoseconds(Int64(Double(n) * interval * 1e9))
        let now = ContinuousClock.now
        if scheduled > now {
            let wait = scheduled - now
            usleep(UInt32(max(0, min(seconds(wait) * 1e6, 1e6))))
            continue
        }
        n += 1
        index += 1
        do {
            let k = key(Int.random(in: 0..<keyCount, using: &rng))
            try backend.batch {
                try backend.put(.key, key: k, value: value)
                try backend.setConsistentIndex(index)
            }
            try backend.commitIfDue()
        } catch {
            samples.withLock { $0.failure = "\(error)" }
            break
        }
        let latency = ContinuousClock.now - scheduled
        let p = phase.load(ordering: .relaxed)
        let ns = UInt64(seconds(latency) * 1e9)
        samples.withLock { $0.puts[p].append(ns) }
    }
    done.signal()
}
let reader = Thread {
    var rng = SystemRandomNumberGenerator()
    while !stop.load(ordering: .relaxed) {
        let start = ContinuousClock.now
        _ = try? backend.read { try $0.get(.key, key: key(Int.random(in: 0..<keyCount, using: &rng))) }
        let ns = UInt64(seconds(ContinuousClock.now - start) * 1e9)
        let p = phase.load(ordering: .relaxed)
        samples.withLock {
            $0.worstRead[p] = max($0.worstRead[p], ns)
            $0.reads[p] += 1
        }
    }
    done.signal()
}
writer.start()
reader.start()
usleep(UInt32(beforeSeconds * 1e6))
phase.store(1, ordering: .relaxed)
let result = try backend.defragment()
phase.store(2, ordering: .relaxed)
usleep(UInt32(afterSeconds * 1e6))
stop.store(true, ordering: .relaxed)
done.wait()
done.wait()
try backend.close()

let s = samples.withLock { $0 }
if let f = s.failure { print("writer failed: \(f)") }
func ms(_ ns: UInt64) -> String { String(format: "%.1f ms", Double(ns) / 1e6) }
// A request stalled by the final pause completes just as defragment() returns: it may count
// as "after", so the figures after the run are printed too.
for (i, name) in ["before defrag", "during defrag", "after defrag"].enumerated() {
    let sorted = s.puts[i].sorted()
    let p999 = sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.999))]
    print("\(name): \(sorted.count) puts, worst \(ms(sorted.last ?? 0)), p99.9 \(ms(p999)); "
          + "\(s.reads[i]) reads, worst \(ms(s.worstRead[i]))")
}
print(String(format: "defrag: %.2f s total, copy %.2f s, %d batches replayed, pause %.1f ms, %d MiB -> %d MiB",
             seconds(result.total), seconds(result.copyDuration), result.replayedBatches,
             seconds(result.pause) * 1000, Int(result.sizeBefore >> 20), Int(result.sizeAfter >> 20)))
