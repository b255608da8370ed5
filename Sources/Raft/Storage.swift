import Synchronization

/// Errors a ``RaftStorage`` reports; the core reacts to each (e.g. sends a snapshot when
/// entries are compacted).
public enum RaftStorageError: Error, Equatable, Sendable {
    /// The requested index precedes the first available entry.
    case compacted
    /// The requested index is beyond the last entry.
    case unavailable
    /// A snapshot older than the current one was offered.
    case snapshotOutOfDate
    /// No snapshot can be produced right now; the core retries later.
    case snapshotTemporarilyUnavailable
}

/// Read access to the persisted log, hard state and snapshot.
///
/// The core only reads through this protocol; the application writes to the storage (e.g.
/// ``MemoryStorage/append(_:)``) with the contents of each ``Ready`` before calling
/// ``RaftNode/advance(_:)``. Index 0 / the snapshot index act as a sentinel whose term is known.
public protocol RaftStorage: AnyObject {
    /// The persisted hard state and configuration (from the last snapshot and applied changes).
    func initialState() throws -> (HardState, ConfState)
    /// Entries in `[lo, hi)`, at least one if any exist, and otherwise at most `maxBytes` bytes.
    func entries(_ lo: UInt64, _ hi: UInt64, maxBytes: UInt64) throws -> [Entry]
    /// Term of the entry at `index`; valid from `firstIndex() - 1` to `lastIndex()`.
    func term(_ index: UInt64) throws -> UInt64
    /// Index of the first entry still available (snapshot index + 1).
    func firstIndex() throws -> UInt64
    /// Index of the last entry.
    func lastIndex() throws -> UInt64
    /// The most recent snapshot.
    func snapshot() throws -> Snapshot
}

/// An in-memory ``RaftStorage`` for tests and simulations. Thread-safe.
public final class MemoryStorage: RaftStorage, Sendable {
    struct State {
        var hardState = HardState()
        var snapshot = Snapshot()
        /// entries[0] is a sentinel at the snapshot's index and term.
        var entries: [Entry] = [Entry(term: 0, index: 0)]

        var offset: UInt64 { entries[0].index }
        var last: UInt64 { offset + UInt64(entries.count) - 1 }
    }

    private let state = Mutex(State())

    /// An empty storage (a new node with no log).
    public init() {}

    /// The stored hard state.
    public var hardState: HardState { state.withLock { $0.hardState } }

    /// Records the hard state.
    public func setHardState(_ hs: HardState) { state.withLock { $0.hardState = hs } }

    public func initialState() throws -> (HardState, ConfState) {
        state.withLock { ($0.hardState, $0.snapshot.metadata.confState) }
    }

    public func entries(_ lo: UInt64, _ hi: UInt64, maxBytes: UInt64) throws -> [Entry] {
        try state.withLock { s in
            guard lo > s.offset else { throw RaftStorageError.compacted }
            guard hi <= s.last + 1, lo <= hi else { throw RaftStorageError.unavailable }
            var out: [Entry] = []
            var size: UInt64 = 0
            var i = lo
            while i < hi {
                let e = s.entries[Int(i - s.offset)]
                size += e.size
                if !out.isEmpty && size > maxBytes { break }
                out.append(e)
                i += 1
            }
            return out
        }
    }

    public func term(_ index: UInt64) throws -> UInt64 {
        try state.withLock { s in
            guard index >= s.offset else { throw RaftStorageError.compacted }
            guard index <= s.last else { throw RaftStorageError.unavailable }
            return s.entries[Int(index - s.offset)].term
        }
    }

    public func firstIndex() throws -> UInt64 { state.withLock { $0.offset + 1 } }

    public func lastIndex() throws -> UInt64 { state.withLock { $0.last } }

    public func snapshot() throws -> Snapshot { state.withLock { $0.snapshot } }

    /// Replaces the whole contents with a snapshot (as received from a leader).
    public func applySnapshot(_ snap: Snapshot) throws {
        try state.withLock { s in
            guard snap.metadata.index >= s.snapshot.metadata.index else {
                throw RaftStorageError.snapshotOutOfDate
            }
            s.snapshot = snap
            s.entries = [Entry(term: snap.metadata.term, index: snap.metadata.index)]
        }
    }

    /// Records a snapshot of the application state at `index` (which must be in the log) and
    /// returns it. Does not compact; call ``compact(_:)`` for that.
    @discardableResult
    public func createSnapshot(index: UInt64, confState: ConfState, data: [UInt8]) throws -> Snapshot {
        try state.withLock { s in
            guard index > s.snapshot.metadata.index else { throw RaftStorageError.snapshotOutOfDate }
            guard index <= s.last else { throw RaftStorageError.unavailable }
            let term = s.entries[Int(index - s.offset)].term
            s.snapshot = Snapshot(metadata: SnapshotMetadata(index: index, term: term, confState: confState),
                                  data: data)
            return s.snapshot
        }
    }

    /// Discards entries up to and including `index` (keeping it as the sentinel).
    public func compact(_ index: UInt64) throws {
        try state.withLock { s in
            guard index > s.offset else { throw RaftStorageError.compacted }
            guard index <= s.last else { throw RaftStorageError.unavailable }
            let cut = Int(index - s.offset)
            let sentinel = Entry(term: s.entries[cut].term, index: index)
            s.entries = [sentinel] + s.entries[(cut + 1)...]
        }
    }

    /// Appends entries, replacing any conflicting suffix. Entries already compacted are
    /// skipped; a gap after the last index throws ``RaftStorageError/unavailable``.
    public func append(_ newEntries: [Entry]) throws {
        guard let first = newEntries.first else { return }
        try state.withLock { s in
            let firstKept = s.offset + 1
            let lastNew = first.index + UInt64(newEntries.count) - 1
            if lastNew < firstKept { return }
            var ents = newEntries[...]
            if first.index < firstKept { ents = ents.dropFirst(Int(firstKept - first.index)) }
            guard let start = ents.first?.index else { return }
            guard start <= s.last + 1 else { throw RaftStorageError.unavailable }
            let keep = Int(start - s.offset)
            s.entries.removeSubrange(keep...)
            s.entries.append(contentsOf: ents)
        }
    }
}
