// The process's code pages: how much of the executable's and shared libraries' machine code is
// mapped into the process, and so counted in its resident memory.

#if canImport(Glibc)
import Glibc

/// Trims the code pages the process has mapped. The kernel maps code on first use, and with
/// each page up to 15 neighbours ("fault-around", 64 KiB), so by the end of start-up a server
/// has mapped about half of its 25 MiB executable and much of the Swift runtime and Foundation:
/// start-up code that never runs again, and neighbours that never run at all (docs/SERVER.md,
/// "Memory").
public enum CodePages {
    /// Unmaps every code page mapped so far and turns fault-around off for code
    /// (`MADV_DONTNEED` and `MADV_RANDOM` on each executable private file mapping listed in
    /// `/proc/self/smaps`), so from then on only pages that run are mapped, one at a time. Code
    /// pages are clean (never written), so they stay in the page cache, shared with other
    /// processes running the same files, and fault back in on their next use. A mapping with
    /// a written page (text relocations, a debugger's breakpoint) is left alone: unmapping would
    /// lose the change. Returns how many mappings it trimmed (0 where `/proc` is unreadable).
    @discardableResult
    public static func trim() -> Int {
        var trimmed = 0
        for mapping in executableMappings() where mapping.privateDirtyKiB == 0 {
            guard let address = UnsafeMutableRawPointer(bitPattern: mapping.start) else { continue }
            if madvise(address, mapping.length, MADV_RANDOM) == 0, madvise(address, mapping.length, MADV_DONTNEED) == 0 {
                trimmed += 1
            }
        }
        return trimmed
    }

    /// An executable private file mapping and what of it is resident.
    public struct Mapping: Sendable {
        public var start: UInt
        public var length: Int
        public var path: String
        public var rssKiB: Int
        /// Written (copied) pages; -1 when smaps did not say, which counts as written.
        public var privateDirtyKiB: Int
        /// Fault-around is off for it (`MADV_RANDOM`: "rr" among its VmFlags).
        public var randomAccess: Bool
    }

    /// The process's executable private file mappings ("r-xp" with a path), from
    /// `/proc/self/smaps`.
    public static func executableMappings() -> [Mapping] {
        guard let file = fopen("/proc/self/smaps", "r") else { return [] }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        var mappings: [Mapping] = []
        var current: Mapping?
        while getline(&line, &capacity, file) > 0, let line {
            let fields = String(cString: line).split(separator: " ", omittingEmptySubsequences: true)
            guard let first = fields.first else { continue }
            if first.hasSuffix(":") {
                // The attributes of the mapping above: "Rss:   123 kB", ..., "VmFlags: rd ex ...".
                let kib = fields.count >= 2 ? Int(fields[1]) : nil
                switch first {
                case "Rss:": current?.rssKiB = kib ?? 0
                case "Private_Dirty:": current?.privateDirtyKiB = kib ?? -1
                case "VmFlags:": current?.randomAccess = fields.dropFirst().contains { $0.hasPrefix("rr") }
                default: break
                }
                continue
            }
            // A mapping's header: "start-end perms offset dev inode [path]".
            if let done = current { mappings.append(done) }
            current = nil
            let range = first.split(separator: "-")
            guard fields.count >= 6, fields[1] == "r-xp", fields[5].hasPrefix("/"), range.count == 2,
                  let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16), end > start else { continue }
            current = Mapping(start: start, length: Int(end - start), path: String(fields[5].trimmingSuffix("\n")),
                              rssKiB: 0, privateDirtyKiB: -1, randomAccess: false)
        }
        if let done = current { mappings.append(done) }
        return mappings
    }
}

private extension Substring {
    func trimmingSuffix(_ suffix: String) -> Substring { hasSuffix(suffix) ? dropLast(suffix.count) : self }
}
#endif
