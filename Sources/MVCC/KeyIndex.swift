import LMDBBackend

/// One life of a key: from the put that created it to the delete (tombstone) that ended it.
struct Generation {
    /// Version of the last revision in `revs`.
    var version: Int64 = 0
    var created = Revision(main: 0)
    /// Revisions in increasing order; the last is the tombstone when the generation is closed.
    var revs = RevisionList()
}

/// A list of revisions keeping the first inline: after compaction most keys hold exactly
/// one revision, which then needs no array allocation.
struct RevisionList {
    private var head = Revision(main: 0)
    private var tail: [Revision] = []
    private var hasHead = false

    var isEmpty: Bool { !hasHead }
    var count: Int { hasHead ? tail.count + 1 : 0 }

    subscript(i: Int) -> Revision { i == 0 ? head : tail[i - 1] }

    mutating func append(_ r: Revision) {
        if hasHead { tail.append(r) } else { head = r; hasHead = true }
    }

    /// Drops the first `n` (1...count) revisions.
    mutating func removeFirst(_ n: Int) {
        guard n > 0 else { return }
        if n >= count {
            self = RevisionList()
            return
        }
        head = tail[n - 1]
        tail.removeFirst(n)
    }
}

/// The revisions of one key, as generations: zero or more closed ones (each ending with its
/// tombstone) and the current one, whose `revs` is empty while the key is deleted. The
/// current generation lives inline and `closed` is usually empty (no allocation), so a key
/// costs one object plus one small array.
final class KeyIndex {
    let key: [UInt8]
    var modified = Revision(main: 0)
    var closed: [Generation] = []
    var current = Generation()

    init(key: [UInt8]) { self.key = key }

    /// True when nothing is left (after compaction removed everything).
    var isEmpty: Bool { closed.isEmpty && current.revs.isEmpty }

    /// Whether the key has a live version now.
    var isLive: Bool { !current.revs.isEmpty }

    /// Generations are numbered oldest first; the last (`closed.count`) is the current one.
    private var generationCount: Int { closed.count + 1 }
    private func generation(_ i: Int) -> Generation { i < closed.count ? closed[i] : current }

    func put(_ rev: Revision, version: Int64? = nil, created: Revision? = nil) {
        if current.revs.isEmpty { current.created = created ?? rev }
        current.revs.append(rev)
        current.version = version ?? (current.version + 1)
        modified = rev
    }

    /// Closes the current generation with a tombstone at `rev`; false if not live.
    @discardableResult
    func tombstone(_ rev: Revision) -> Bool {
        guard isLive else { return false }
        put(rev)
        closed.append(current)
        current = Generation()
        return true
    }

    /// The generation holding the key's state at main revision `atRev`, if it was live then.
    private func generationIndex(at atRev: Int64) -> Int? {
        var i = generationCount - 1
        while i >= 0 {
            let g = generation(i)
            if g.revs.isEmpty { i -= 1; continue }
            if i != generationCount - 1, g.revs[g.revs.count - 1].main <= atRev { return nil }
            if g.revs[0].main <= atRev { return i }
            i -= 1
        }
        return nil
    }

    /// The key's (mod revision, creation, version) at main revision `atRev`, nil if absent.
    func get(at atRev: Int64) -> (modified: Revision, created: Revision, version: Int64)? {
        // Common case: reading at or after the last change touches this object only.
        if atRev >= modified.main {
            return isLive ? (modified, current.created, current.version) : nil
        }
        guard let gi = generationIndex(at: atRev) else { return nil }
        let g = generation(gi)
        // Last revision with main <= atRev.
        var lo = 0, hi = g.revs.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if g.revs[mid].main <= atRev { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        return (g.revs[lo - 1], g.created, g.version - Int64(g.revs.count - lo))
    }

    /// The generation to keep from and the index in it of the newest revision <= atRev
    /// (-1 when none), adding that revision to `keep`.
    private func compactPoint(_ atRev: Int64, _ keep: inout Set<Revision>) -> (gen: Int, rev: Int) {
        var gi = 0
        while gi < generationCount - 1 {
            let g = generation(gi)
            if g.revs[g.revs.count - 1].main > atRev { break }
            gi += 1
        }
        let revs = generation(gi).revs
        var ri = revs.count - 1
        while ri >= 0, revs[ri].main > atRev { ri -= 1 }
        if ri >= 0 { keep.insert(revs[ri]) }
        return (gi, ri)
    }

    /// Removes revisions at or below `atRev` except the newest of the key's state then; a
    /// tombstone at or below `atRev` goes too. Adds the revisions <= atRev kept to `keep`.
    func compact(_ atRev: Int64, keep: inout Set<Revision>) {
        let (gi, ri) = compactPoint(atRev, &keep)
        if ri > 0 {
            if gi < closed.count { closed[gi].revs.removeFirst(ri) } else { current.revs.removeFirst(ri) }
        }
        // Generations before `gi` ended at or below atRev: drop them (tombstones included).
        if gi > 0 { closed.removeFirst(gi) }
    }

    /// The revisions <= atRev that `compact(atRev)` would keep, without changing anything.
    func keep(_ atRev: Int64, into keep: inout Set<Revision>) {
        _ = compactPoint(atRev, &keep)
    }
}

/// An ordered map from key bytes to `KeyIndex`: a sorted list of sorted chunks.
///
/// Lookup O(log n); insert/remove O(log n + B) plus O(n / B) when a chunk splits or empties
/// (B = `chunkSize`, 512); ordered scans O(log n + k). Memory is two arrays of references
/// per chunk on top of the keys and key indexes themselves.
struct OrderedKeyMap {
    struct Chunk {
        var keys: [[UInt8]] = []
        var values: [KeyIndex] = []
    }
    static let chunkSize = 512
    private(set) var chunks: [Chunk] = []
    private(set) var count = 0

    /// Index of the chunk that does or would hold `key`.
    private func chunkIndex(_ key: [UInt8]) -> Int {
        var lo = 0, hi = chunks.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if let last = chunks[mid].keys.last, compareBytes(last, key) < 0 { lo = mid + 1 } else { hi = mid }
        }
        return min(lo, max(chunks.count - 1, 0))
    }

    private static func lowerBound(_ keys: [[UInt8]], _ key: [UInt8]) -> Int {
        var lo = 0, hi = keys.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if compareBytes(keys[mid], key) < 0 { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    func get(_ key: [UInt8]) -> KeyIndex? {
        guard !chunks.isEmpty else { return nil }
        let c = chunkIndex(key)
        let i = OrderedKeyMap.lowerBound(chunks[c].keys, key)
        if i < chunks[c].keys.count, chunks[c].keys[i] == key { return chunks[c].values[i] }
        return nil
    }

    mutating func getOrInsert(_ key: [UInt8]) -> KeyIndex {
        if chunks.isEmpty { chunks.append(Chunk()) }
        let c = chunkIndex(key)
        let i = OrderedKeyMap.lowerBound(chunks[c].keys, key)
        if i < chunks[c].keys.count, chunks[c].keys[i] == key { return chunks[c].values[i] }
        let ki = KeyIndex(key: key)
        chunks[c].keys.insert(key, at: i)
        chunks[c].values.insert(ki, at: i)
        count += 1
        if chunks[c].keys.count >= 2 * OrderedKeyMap.chunkSize {
            let half = chunks[c].keys.count / 2
            let right = Chunk(keys: Array(chunks[c].keys[half...]), values: Array(chunks[c].values[half...]))
            chunks[c].keys.removeSubrange(half...)
            chunks[c].values.removeSubrange(half...)
            chunks.insert(right, at: c + 1)
        }
        return ki
    }

    mutating func remove(_ key: [UInt8]) {
        guard !chunks.isEmpty else { return }
        let c = chunkIndex(key)
        let i = OrderedKeyMap.lowerBound(chunks[c].keys, key)
        guard i < chunks[c].keys.count, chunks[c].keys[i] == key else { return }
        chunks[c].keys.remove(at: i)
        chunks[c].values.remove(at: i)
        count -= 1
        if chunks[c].keys.isEmpty { chunks.remove(at: c) }
    }

    /// Position (chunk, index) of the first key >= `key`.
    private func lowerPosition(_ key: [UInt8]) -> (Int, Int) {
        let c = chunkIndex(key)
        return (c, OrderedKeyMap.lowerBound(chunks[c].keys, key))
    }

    /// Visits keys in `[from, to)` (`to == nil`: unbounded) in order while `body` is true.
    /// The end position is found once, so the scan itself compares no keys.
    func scan(from: [UInt8], to: [UInt8]?, _ body: (KeyIndex) throws -> Bool) rethrows {
        guard !chunks.isEmpty else { return }
        var (c, i) = lowerPosition(from)
        let (endC, endI) = to.map(lowerPosition) ?? (chunks.count, 0)
        while c < endC || (c == endC && i < endI) {
            let values = chunks[c].values
            let stop = c == endC ? endI : values.count
            while i < stop {
                if try !body(values[i]) { return }
                i += 1
            }
            c += 1
            i = 0
        }
    }
}
