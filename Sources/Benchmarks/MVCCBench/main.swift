// mvcc-bench: throughput of the MVCC keyspace on the LMDB backend, and index memory.
//
//   swift run -c release mvcc-bench [--keys N] [--value-bytes N] [--reads N] [--dir PATH] [--no-sync]
//
// Phases: N puts of distinct keys (one revision each, batches of 10000 ops committed with
// LMDB's fsync unless --no-sync); the anonymous RSS grown meanwhile (the in-memory index,
// the LMDB map's file pages excluded); random single-key ranges; ranges of 100 keys; 
// kube-style CAS txns (compare mod revision, then put); a compaction of all history; the
// index rebuilt from the backend as at a restart.
import Foundation
import LMDBBackend
import MVCC

func argument(_ name: String, _ fallback: Int) -> Int {
    let args = CommandLine.arguments
    if let i = args.firstIndex(of: name), i + 1 < args.count, let v = Int(args[i + 1]) { return v }
    return fallback
}

func kibibytes(_ field: String) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    return 0
}

func measure(_ label: String, ops: Int, _ body: () throws -> Void) rethrows {
    let clock = ContinuousClock()
    let t = try clock.measure(body)
    let secs = Double(t.components.seconds) + Double(t.components.attoseconds) / 1e18
    let padded = label.padding(toLength: 36, withPad: " ", startingAt: 0)
    print(padded + String(format: "%10d ops %8.2f s %12.0f ops/s", ops, secs, Double(ops) / secs))
}

let keys = argument("--keys", 1_000_000)
let valueBytes = argument("--value-bytes", 128)
let reads = argument("--reads", 200_000)
let sync = !CommandLine.arguments.contains("--no-sync")
let base = CommandLine.arguments.firstIndex(of: "--dir").map { CommandLine.arguments[$0 + 1] }
    ?? NSTemporaryDirectory() + "mvcc-bench-\(getpid())"
try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: base) }

var options = Backend.Options()
options.sync = sync
let backend = try Backend(path: base + "/db", options: options)
let store = try MVCCStore(backend: backend)
print("keys \(keys), value \(valueBytes) B, LMDB sync at commit: \(sync), batch \(options.batchLimit) ops")

func key(_ i: Int) -> [UInt8] { Array("/registry/pods/ns\(i % 100)/pod-\(i)".utf8) }
let value = [UInt8](repeating: 0x61, count: valueBytes)

let anonBefore = kibibytes("RssAnon")
try measure("put (distinct keys)", ops: keys) {
    for i in 0..<keys { _ = try store.put(PutRequest(key: key(i), value: value)) }
    try backend.commit()
}
let anonAfter = kibibytes("RssAnon")
let perMillion = Double(anonAfter - anonBefore) / 1024 * 1_000_000 / Double(max(keys, 1))
print("index memory (RssAnon delta)".padding(toLength: 36, withPad: " ", startingAt: 0)
      + String(format: "%10.1f MiB per million keys", perMillion))
print(String(format: "RSS total %0.1f MiB, db file %0.1f MiB, in use %0.1f MiB",
             Double(kibibytes("VmRSS")) / 1024, Double(try backend.fileSize()) / 1_048_576,
             Double(try backend.sizeInUse()) / 1_048_576))

try measure("reopen: rebuild the index", ops: keys) {
    _ = try MVCCStore(backend: backend)
}

var rng = SystemRandomNumberGenerator()
try measure("range: one key", ops: reads) {
    for _ in 0..<reads { _ = try store.range(RangeRequest(key: key(Int.random(in: 0..<keys, using: &rng)))) }
}
let pages = max(1, reads / 20)
try measure("range: 100 keys of a prefix (limit)", ops: pages) {
    for _ in 0..<pages {
        let ns = Int.random(in: 0..<100, using: &rng)
        _ = try store.range(RangeRequest(key: Array("/registry/pods/ns\(ns)/".utf8),
                                         rangeEnd: Array("/registry/pods/ns\(ns)0".utf8), limit: 100))
    }
}
let updates = min(keys, reads)
try measure("txn: CAS on mod revision + put", ops: updates) {
    for _ in 0..<updates {
        let k = key(Int.random(in: 0..<keys, using: &rng))
        guard let cur = try store.range(RangeRequest(key: k)).kvs.first else { continue }
        _ = try store.txn(TxnRequest(
            compare: [Compare(key: k, target: .mod(cur.modRevision), result: .equal)],
            success: [.put(PutRequest(key: k, value: value))],
            failure: [.range(RangeRequest(key: k))]))
    }
    try backend.commit()
}
let streams = (0..<10).map { _ in store.makeWatchStream() }
for s in streams {
    _ = try s.watch(key: Array("/registry/pods/".utf8), rangeEnd: Array("/registry/pods0".utf8),
                    options: WatchOptions(prevKV: true))
}
var delivered = 0
try measure("put + 10 prefix watchers with prevKV", ops: updates) {
    for i in 0..<updates {
        _ = try store.put(PutRequest(key: key(i), value: value))
        if i % 64 == 63 {
            for s in streams { while let r = s.poll() { delivered += r.events.count } }
            _ = try store.syncWatchers()
        }
    }
    for s in streams { while let r = s.poll() { delivered += r.events.count } }
}
print("watch events delivered: \(delivered) (expected \(10 * updates))")
for s in streams { s.close() }

try measure("compact all history (revisions)", ops: Int(store.currentRevision)) {
    try store.compact(store.currentRevision)
    try backend.commit()
}
