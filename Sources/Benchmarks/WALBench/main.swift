// wal-bench: fsynced WAL appends per second, with and without batching.
//
//     swift run -c release wal-bench [--dir /tmp] [--seconds 3] [--entry-bytes 256] [--batches 1,16,128]
//
// Each run creates a fresh WAL under --dir (64 MiB segments), appends batches of N entries
// with one fdatasync per batch for --seconds, and reports batches (= fsyncs) and entries per
// second, then how fast `WAL.read` replays what was written. The filesystem type of --dir is
// printed, since fsync cost depends on it.
#if canImport(Glibc)
import Glibc
#endif
import Storage

func argument(_ name: String, _ fallback: String) -> String {
    let args = CommandLine.arguments
    if let i = args.firstIndex(of: name), i + 1 < args.count { return args[i + 1] }
    return fallback
}

/// The filesystem type of the mount holding `path`, from /proc/mounts.
func filesystemName(_ path: String) -> String {
    guard let real = realpath(path, nil) else { return "unknown" }
    let target = String(cString: real)
    free(real)
    guard let f = fopen("/proc/mounts", "r") else { return "unknown" }
    defer { fclose(f) }
    var best = ("", "unknown")
    var line: UnsafeMutablePointer<CChar>?
    var cap = 0
    while getline(&line, &cap, f) > 0 {
        let fields = String(cString: line!).split(separator: " ")
        guard fields.count >= 3 else { continue }
        let mount = String(fields[1])
        let inside = target == mount || target.hasPrefix(mount == "/" ? "/" : mount + "/")
        if inside && mount.count >= best.0.count { best = (mount, String(fields[2])) }
    }
    free(line)
    return "\(best.1) mounted at \(best.0)"
}

let base = argument("--dir", "/tmp")
let seconds = Double(argument("--seconds", "3")) ?? 3
let entryBytes = Int(argument("--entry-bytes", "256")) ?? 256
let batchSizes = argument("--batches", "1,16,128").split(separator: ",").compactMap { Int($0) }

print("wal-bench: dir \(base) (\(filesystemName(base))), \(entryBytes)-byte entries, \(seconds) s per run")
print("entries/batch  batches(fsyncs)/s  entries/s  MiB/s   segments  replay entries/s")
let payload = [UInt8](repeating: 0xA5, count: entryBytes)
for n in batchSizes {
    var template = Array("\(base)/wal-bench-XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        print("cannot create a directory under \(base)")
        exit(1)
    }
    let root = String(cString: made)
    let dir = root + "/wal"
    do {
        let wal = try WAL.create(directory: dir, metadata: WALMetadata(memberID: 1, clusterID: 1).encoded)
        var index: UInt64 = 0
        var batches = 0
        var synced = 0
        let clock = ContinuousClock()
        let start = clock.now
        let limit = Duration.milliseconds(Int64(seconds * 1000))
        while clock.now - start < limit {
            var entries: [WALEntry] = []
            entries.reserveCapacity(n)
            for _ in 0..<n {
                index += 1
                entries.append(WALEntry(index: index, term: 1, data: payload))
            }
            if try wal.save(hardState: WALHardState(term: 1, vote: 1, commit: index), entries: entries) { synced += 1 }
            batches += 1
        }
        let elapsed = clock.now - start
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let segs = wal.segmentFiles.count
        try wal.close()
        precondition(synced == batches, "every batch with entries must be synced")
        // Replay: what a restart reads back.
        let t0 = clock.now
        let read = try WAL.read(directory: dir)
        let replay = clock.now - t0
        precondition(read.entries.count == Int(index), "replay lost entries")
        let rsecs = Double(replay.components.seconds) + Double(replay.components.attoseconds) / 1e18
        let eps = Double(index) / secs
        let pad = { (s: String, w: Int) in String(repeating: " ", count: max(0, w - s.count)) + s }
        print(pad("\(n)", 13), pad(String(Int(Double(batches) / secs)), 18), pad(String(Int(eps)), 10),
              pad(String(format2(eps * Double(entryBytes) / 1_048_576)), 6), pad("\(segs)", 10),
              pad(String(Int(Double(index) / rsecs)), 16))
    } catch {
        print("wal-bench failed: \(error)")
        exit(1)
    }
    // Remove the run's files.
    if let d = opendir(dir) {
        while let e = readdir(d) {
            let name = withUnsafePointer(to: &e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name != "." && name != ".." { unlink(dir + "/" + name) }
        }
        closedir(d)
    }
    rmdir(dir)
    rmdir(root)
}

func format2(_ v: Double) -> String {
    let r = (v * 10).rounded() / 10
    return String(r)
}
