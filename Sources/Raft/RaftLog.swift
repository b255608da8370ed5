/// Entries and snapshot not yet persisted by the application.
struct Unstable {
    var snapshot: Snapshot?
    var entries: [Entry] = []
    /// Index of `entries[0]` (or where the next unstable entry would go).
    var offset: UInt64

    var lastIndex: UInt64? {
        if let e = entries.last { return e.index }
        return snapshot?.metadata.index
    }

    mutating func truncateAndAppend(_ ents: [Entry]) {
        guard let first = ents.first?.index else { return }
        if first == offset + UInt64(entries.count) {
            entries.append(contentsOf: ents)
        } else if first <= offset {
            // Replaces everything unstable; storage entries from `first` on are shadowed and
            // will be overwritten when these are persisted.
            offset = first
            entries = ents
        } else {
            entries.removeSubrange(Int(first - offset)...)
            entries.append(contentsOf: ents)
        }
    }
}

/// The node's view of the log: persisted entries (storage) plus unstable ones.
struct RaftLog {
    let storage: any RaftStorage
    var unstable: Unstable
    /// Highest index known committed.
    var committed: UInt64
    /// Highest index handed to the application (in a `Ready`), not necessarily applied yet.
    var applying: UInt64
    /// Highest index the application has applied.
    var applied: UInt64
    let maxCommittedSize: UInt64

    init(storage: any RaftStorage, maxCommittedSize: UInt64) throws {
        self.storage = storage
        let first = try storage.firstIndex()
        let last = try storage.lastIndex()
        unstable = Unstable(offset: last + 1)
        committed = first - 1
        applying = first - 1
        applied = first - 1
        self.maxCommittedSize = maxCommittedSize
    }

    func firstIndex() throws -> UInt64 {
        if let s = unstable.snapshot { return s.metadata.index + 1 }
        return try storage.firstIndex()
    }

    func lastIndex() throws -> UInt64 {
        if let l = unstable.lastIndex { return l }
        return try storage.lastIndex()
    }

    func lastTerm() throws -> UInt64 { try term(lastIndex()) }

    /// The last index of the log prefix the application reported durable (through `advance`):
    /// entries and snapshot still unstable are excluded.
    func persistedIndex() throws -> UInt64 {
        min(try storage.lastIndex(), unstable.offset - 1)
    }

    func term(_ i: UInt64) throws -> UInt64 {
        let first = try firstIndex()
        if i + 1 < first { throw RaftStorageError.compacted }
        if try i > lastIndex() { throw RaftStorageError.unavailable }
        if let s = unstable.snapshot, s.metadata.index == i { return s.metadata.term }
        if i >= unstable.offset, !unstable.entries.isEmpty {
            let k = Int(i - unstable.offset)
            if k < unstable.entries.count { return unstable.entries[k].term }
        }
        return try storage.term(i)
    }

    func matchTerm(_ i: UInt64, _ t: UInt64) -> Bool {
        guard let x = try? term(i) else { return false }
        return x == t
    }

    /// The vote rule: a candidate's log (`li`, `t`) is at least as up to date as ours.
    func isUpToDate(lastIndex li: UInt64, term t: UInt64) throws -> Bool {
        let lt = try lastTerm()
        let ourLast = try lastIndex()
        return t > lt || (t == lt && li >= ourLast)
    }

    /// Entries in `[lo, hi)` limited to `maxBytes` (at least one entry).
    func slice(_ lo: UInt64, _ hi: UInt64, maxBytes: UInt64) throws -> [Entry] {
        if lo >= hi { return [] }
        if try lo < firstIndex() { throw RaftStorageError.compacted }
        if try hi > lastIndex() + 1 { throw RaftStorageError.unavailable }
        var out: [Entry] = []
        var size: UInt64 = 0
        if lo < unstable.offset {
            let stored = try storage.entries(lo, min(hi, unstable.offset), maxBytes: maxBytes)
            // Storage may return fewer entries because of the byte limit.
            if UInt64(stored.count) < min(hi, unstable.offset) - lo { return stored }
            out = stored
            for e in stored { size += e.size }
        }
        if hi > unstable.offset {
            let from = max(lo, unstable.offset)
            for i in from..<hi {
                let e = unstable.entries[Int(i - unstable.offset)]
                size += e.size
                if !out.isEmpty && size > maxBytes { break }
                out.append(e)
            }
        }
        return out
    }

    func entries(from lo: UInt64, maxBytes: UInt64) throws -> [Entry] {
        try slice(lo, try lastIndex() + 1, maxBytes: maxBytes)
    }

    /// The index of the first entry whose term differs from the log (or is new); 0 if none.
    func findConflict(_ ents: [Entry]) -> UInt64 {
        for e in ents where !matchTerm(e.index, e.term) { return e.index }
        return 0
    }

    /// The largest index <= `index` whose term is <= `term`, and that term (0 if unknown).
    func findConflictByTerm(_ index: UInt64, _ term: UInt64) -> (index: UInt64, term: UInt64) {
        var i = index
        while true {
            guard let t = try? self.term(i) else { return (i, 0) }
            if t <= term || i == 0 { return (i, t) }
            i -= 1
        }
    }

    /// Appends after (`index`, `logTerm`) if that entry matches; returns the last new index.
    mutating func maybeAppend(index: UInt64, logTerm: UInt64, commit: UInt64,
                              entries ents: [Entry]) throws -> UInt64? {
        guard matchTerm(index, logTerm) else { return nil }
        for (k, e) in ents.enumerated() where e.index != index + 1 + UInt64(k) {
            throw RaftError.logInvariant("append entries are not consecutive after \(index)")
        }
        let lastNew = index + UInt64(ents.count)
        let ci = findConflict(ents)
        if ci != 0 {
            if ci <= committed {
                throw RaftError.logInvariant("entry \(ci) conflicts with committed \(committed)")
            }
            try append(Array(ents[Int(ci - index - 1)...]))
        }
        try commitTo(min(commit, lastNew))
        return lastNew
    }

    @discardableResult
    mutating func append(_ ents: [Entry]) throws -> UInt64 {
        guard let first = ents.first else { return try lastIndex() }
        if first.index <= committed {
            throw RaftError.logInvariant("append at \(first.index) would overwrite committed \(committed)")
        }
        if try first.index > lastIndex() + 1 {
            throw RaftError.logInvariant("append at \(first.index) leaves a gap")
        }
        unstable.truncateAndAppend(ents)
        return try lastIndex()
    }

    mutating func commitTo(_ c: UInt64) throws {
        guard c > committed else { return }
        guard try c <= lastIndex() else {
            throw RaftError.logInvariant("commit \(c) beyond last index")
        }
        committed = c
    }

    /// Commits up to `index` if its entry is of `term` (the current-term commit rule).
    mutating func maybeCommit(_ index: UInt64, term t: UInt64) throws -> Bool {
        if index > committed, index != UInt64.max, (try? term(index)) == t {
            try commitTo(index)
            return true
        }
        return false
    }

    mutating func restore(_ s: Snapshot) {
        committed = s.metadata.index
        unstable = Unstable(snapshot: s, entries: [], offset: s.metadata.index + 1)
    }

    func snapshot() throws -> Snapshot {
        if let s = unstable.snapshot { return s }
        return try storage.snapshot()
    }

    func hasNextCommittedEntries() throws -> Bool {
        if unstable.snapshot != nil { return false }
        return committed > max(applying, try firstIndex() - 1)
    }

    func nextCommittedEntries() throws -> [Entry] {
        if unstable.snapshot != nil { return [] }
        let lo = max(applying + 1, try firstIndex())
        if lo > committed { return [] }
        return try slice(lo, committed + 1, maxBytes: maxCommittedSize)
    }

    mutating func stableTo(index: UInt64, term t: UInt64) {
        guard index >= unstable.offset else { return }
        let k = Int(index - unstable.offset)
        guard k < unstable.entries.count, unstable.entries[k].term == t else { return }
        unstable.entries.removeFirst(k + 1)
        unstable.offset = index + 1
    }

    mutating func stableSnapTo(_ index: UInt64) {
        if unstable.snapshot?.metadata.index == index { unstable.snapshot = nil }
    }

    mutating func appliedTo(_ i: UInt64) {
        if i > applied { applied = i }
        if i > applying { applying = i }
    }
}
