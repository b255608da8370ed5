import Foundation
import MVCC
import Synchronization

/// A stream of watches on the server's keyspace (one gRPC Watch stream) that survives the
/// keyspace being replaced by a snapshot from the leader: each watch remembers the next
/// revision it needs, and after a swap it is re-created on the new keyspace from that
/// revision with the same ID, so it sees every event exactly once, in order. A watch whose
/// next revision the new keyspace has compacted away is cancelled with the compact revision,
/// as etcd does.
public final class ServerWatchStream: AsyncSequence, Sendable {
    public typealias Element = WatchResponse

    private struct Spec {
        var key: [UInt8]
        var rangeEnd: [UInt8]
        var options: WatchOptions
        var nextRevision: Int64
    }

    private struct State {
        var store: MVCCStore
        var inner: WatchStream
        var specs: [Int64: Spec] = [:]
        var closed = false
        var progressRequested = false
    }

    private let state: Mutex<State>
    private let registry: WatchStreamRegistry

    init(store: MVCCStore, registry: WatchStreamRegistry) {
        state = Mutex(State(store: store, inner: store.makeWatchStream()))
        self.registry = registry
    }

    /// Starts watching `key` (`rangeEnd` as in a range request) from `startRevision` (0: the
    /// next change); `id` -1 picks a free ID. Returns the watch ID.
    @discardableResult
    public func watch(key: [UInt8], rangeEnd: [UInt8] = [], startRevision: Int64 = 0,
                      options: WatchOptions = WatchOptions(), id: Int64 = -1) throws -> Int64 {
        try state.withLock { st in
            let next = startRevision > 0 ? startRevision : st.store.currentRevision + 1
            let wid = try st.inner.watch(key: key, rangeEnd: rangeEnd, startRevision: startRevision, options: options, id: id)
            st.specs[wid] = Spec(key: key, rangeEnd: rangeEnd, options: options, nextRevision: next)
            return wid
        }
    }

    /// Stops watch `id`: none of its responses is delivered after this returns.
    public func cancel(_ id: Int64) throws {
        try state.withLock { st in
            try st.inner.cancel(id)
            st.specs[id] = nil
        }
    }

    /// Asks for a progress notification (`watchID == -1`) once every watch is synced.
    public func requestProgress() {
        state.withLock { st in
            st.progressRequested = true
            st.inner.requestProgress()
        }
    }

    /// Cancels every watch and ends the stream (`next()` returns nil).
    public func close() {
        let inner = state.withLock { st -> WatchStream in
            st.closed = true
            st.specs.removeAll()
            return st.inner
        }
        inner.close()
        registry.remove(self)
    }

    /// The next response, waiting for one; nil once the stream is closed or the calling task
    /// is cancelled.
    public func next() async -> WatchResponse? {
        while true {
            guard let inner = state.withLock({ $0.closed ? nil : $0.inner }) else { return nil }
            if let r = await inner.next() {
                let deliver = state.withLock { st -> Bool in
                    // Read from a keyspace that was replaced meanwhile: the re-created watch
                    // delivers it again from the new keyspace.
                    guard st.inner === inner else { return false }
                    note(r, &st)
                    return true
                }
                if deliver { return r }
                continue
            }
            let swapped = state.withLock { !$0.closed && $0.inner !== inner }
            if swapped && !Task.isCancelled { continue }
            return nil
        }
    }

    /// Records how far each watch has got.
    private func note(_ r: WatchResponse, _ st: inout State) {
        if r.watchID == -1 {
            st.progressRequested = false
            for (id, spec) in st.specs { st.specs[id]?.nextRevision = Swift.max(spec.nextRevision, r.revision + 1) }
            return
        }
        if r.canceled {
            st.specs[r.watchID] = nil
        } else if let spec = st.specs[r.watchID] {
            st.specs[r.watchID]?.nextRevision = Swift.max(spec.nextRevision, r.revision + 1)
        }
    }

    /// Moves every watch to `store`, from the revision it needs next (Raft loop thread, after a
    /// snapshot install).
    func rebind(to store: MVCCStore) {
        let old = state.withLock { st -> WatchStream? in
            guard !st.closed else { return nil }
            let old = st.inner
            let fresh = store.makeWatchStream()
            for (id, spec) in st.specs.sorted(by: { $0.key < $1.key }) {
                _ = try? fresh.watch(key: spec.key, rangeEnd: spec.rangeEnd, startRevision: spec.nextRevision,
                                     options: spec.options, id: id)
            }
            if st.progressRequested { fresh.requestProgress() }
            st.store = store
            st.inner = fresh
            return old
        }
        // Wakes a reader waiting on the old stream; it continues on the new one.
        old?.close()
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let stream: ServerWatchStream
        public mutating func next() async -> WatchResponse? { await stream.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(stream: self) }
}

/// The open server watch streams (weakly held).
final class WatchStreamRegistry: Sendable {
    private struct Entry: @unchecked Sendable { weak var stream: ServerWatchStream? }
    private let streams = Mutex<[ObjectIdentifier: Entry]>([:])

    func add(_ s: ServerWatchStream) { streams.withLock { $0[ObjectIdentifier(s)] = Entry(stream: s) } }
    func remove(_ s: ServerWatchStream) { _ = streams.withLock { $0.removeValue(forKey: ObjectIdentifier(s)) } }

    /// The streams still open.
    var all: [ServerWatchStream] {
        streams.withLock { map in
            map = map.filter { $0.value.stream != nil }
            return map.values.compactMap(\.stream)
        }
    }
}
