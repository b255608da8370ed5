import Foundation
import LMDBBackend

/// What a `WatchStream` delivers: events of one watcher, a progress notification (no events;
/// `watchID == -1` for a stream-wide `requestProgress`), or a cancellation.
public struct WatchResponse: Sendable, Equatable {
    public var watchID: Int64
    public var events: [Event]
    /// Every event up to this revision has been delivered to this watcher (the header revision).
    public var revision: Int64
    /// Set, with `canceled`, when the start revision was compacted away.
    public var compactRevision: Int64 = 0
    public var canceled = false

    public init(watchID: Int64, events: [Event], revision: Int64, compactRevision: Int64 = 0, canceled: Bool = false) {
        self.watchID = watchID
        self.events = events
        self.revision = revision
        self.compactRevision = compactRevision
        self.canceled = canceled
    }

    /// Roughly the memory the response's events hold (keys and values), for buffer bounds.
    public var approximateBytes: Int {
        events.reduce(64) { $0 + $1.approximateBytes }
    }
}

extension Event {
    /// Roughly the memory the event holds (keys and values).
    var approximateBytes: Int {
        64 + kv.key.count + kv.value.count + (prevKv.map { 64 + $0.key.count + $0.value.count } ?? 0)
    }
}

/// Options of one watch (etcd's WatchCreateRequest).
public struct WatchOptions: Sendable {
    /// Include each event's previous key-value (when still retained).
    public var prevKV = false
    /// Do not deliver puts / deletes.
    public var noPut = false
    public var noDelete = false
    /// Receive `notifyProgress()` notifications.
    public var progressNotify = false
    public init(prevKV: Bool = false, noPut: Bool = false, noDelete: Bool = false, progressNotify: Bool = false) {
        self.prevKV = prevKV
        self.noPut = noPut
        self.noDelete = noDelete
        self.progressNotify = progressNotify
    }
}

/// One watch. All mutable state is guarded by the store's lock.
final class Watcher {
    enum State { case synced, unsynced, victim, gone }
    let id: Int64
    let key: [UInt8]
    let rangeEnd: [UInt8]
    let options: WatchOptions
    weak var stream: WatchStream?
    /// The next revision this watcher needs.
    var minRev: Int64
    var state = State.unsynced
    /// A response that found the stream full, to resend before anything else.
    var parked: WatchResponse?

    init(id: Int64, key: [UInt8], rangeEnd: [UInt8], options: WatchOptions, stream: WatchStream, minRev: Int64) {
        self.id = id
        self.key = key
        self.rangeEnd = rangeEnd
        self.options = options
        self.stream = stream
        self.minRev = minRev
    }

    var isSingleKey: Bool { rangeEnd.isEmpty }

    func matches(_ k: [UInt8]) -> Bool {
        if rangeEnd.isEmpty { return k == key }
        return MVCCStore.Interval(key: key, end: rangeEnd).contains(k)
    }
}

/// The store's watchers, by group. Synced watchers get events as writes happen; unsynced ones
/// are behind and catch up from the backend; victims wait for room in their stream.
struct WatchGroups {
    var syncedKeys: [[UInt8]: [ObjectIdentifier: Watcher]] = [:]
    var syncedRanges: [ObjectIdentifier: Watcher] = [:]
    var unsynced: [ObjectIdentifier: Watcher] = [:]
    var victims: [ObjectIdentifier: Watcher] = [:]
    /// Streams with a `requestProgress` not answered yet (some watcher not synced).
    var progressWaiting: [ObjectIdentifier: WatchStream] = [:]

    mutating func remove(_ w: Watcher) {
        let id = ObjectIdentifier(w)
        switch w.state {
        case .synced:
            if w.isSingleKey {
                syncedKeys[w.key]?[id] = nil
                if syncedKeys[w.key]?.isEmpty == true { syncedKeys[w.key] = nil }
            } else {
                syncedRanges[id] = nil
            }
        case .unsynced: unsynced[id] = nil
        case .victim: victims[id] = nil
        case .gone: break
        }
        w.state = .gone
    }

    mutating func add(_ w: Watcher, as state: Watcher.State) {
        remove(w)
        let id = ObjectIdentifier(w)
        switch state {
        case .synced:
            if w.isSingleKey { syncedKeys[w.key, default: [:]][id] = w } else { syncedRanges[id] = w }
        case .unsynced: unsynced[id] = w
        case .victim: victims[id] = w
        case .gone: break
        }
        w.state = state
    }

    var syncedCount: Int { syncedRanges.count + syncedKeys.values.reduce(0) { $0 + $1.count } }

    /// After the store was restored from another backend (``MVCCStore/restore(replacingBackend:)``):
    /// every synced or unsynced watcher that needs a revision up to `currentRevision` catches
    /// up from the backend (unsynced, as etcd marks them); one that needs a later revision
    /// waits synced for it. Victims keep their parked response and are retried as usual.
    mutating func restore(currentRevision: Int64) {
        var all = Array(syncedRanges.values) + Array(unsynced.values)
        for ws in syncedKeys.values { all += ws.values }
        for w in all { add(w, as: w.minRev > currentRevision ? .synced : .unsynced) }
    }
}

extension MVCCStore {
    /// Opens a stream of watches; its responses are read with `next()` or `for await`.
    public func makeWatchStream() -> WatchStream {
        WatchStream(store: self, capacity: max(1, options.watchStreamBuffer),
                    capacityBytes: max(1, options.watchStreamBufferBytes))
    }

    /// Watchers per group: (synced, unsynced, victims).
    public var watcherCounts: (synced: Int, unsynced: Int, victims: Int) {
        lock.withReadLock { (watch.syncedCount, watch.unsynced.count, watch.victims.count) }
    }

    // MARK: delivery (store lock held)

    /// Identifies an event (one change per key per revision) for the prevKV cache.
    struct PrevKey: Hashable {
        let key: [UInt8]
        let rev: Int64
    }

    /// Applies filters and prevKV, then pushes to the stream; parks the watcher when full.
    /// Afterwards the watcher has been given everything up to `upTo`. `cache` shares prevKV
    /// reads between the watchers of one notification or catch-up step.
    func deliverLocked(_ w: Watcher, _ events: [Event], upTo: Int64,
                       cache: inout [PrevKey: KeyValue?]) throws -> Bool {
        guard let stream = w.stream else {
            watch.remove(w)
            return true
        }
        var evs = events.filter { ev in
            !(ev.type == .put && w.options.noPut) && !(ev.type == .delete && w.options.noDelete)
        }
        if w.options.prevKV && !evs.isEmpty {
            var missing: [Int] = []
            for i in evs.indices {
                if let known = cache[PrevKey(key: evs[i].kv.key, rev: evs[i].kv.modRevision)] {
                    evs[i].prevKv = known
                } else {
                    missing.append(i)
                }
            }
            if !missing.isEmpty {
                try backend.read { r in
                    for i in missing {
                        var prev: KeyValue?
                        if let found = index.get(evs[i].kv.key)?.get(at: evs[i].kv.modRevision - 1) {
                            prev = try fetch(r, found.modified)
                        }
                        cache[PrevKey(key: evs[i].kv.key, rev: evs[i].kv.modRevision)] = .some(prev)
                        evs[i].prevKv = prev
                    }
                }
            }
        }
        w.minRev = upTo + 1
        if evs.isEmpty { return true }
        let resp = WatchResponse(watchID: w.id, events: evs, revision: upTo)
        if stream.push(resp) { return true }
        w.parked = resp
        watch.add(w, as: .victim)
        return false
    }

    /// Hands the events of the write at `rev` to the synced watchers.
    func notifyLocked(rev: Int64, events: [Event]) {
        if watch.syncedKeys.isEmpty && watch.syncedRanges.isEmpty { return }
        var batches: [ObjectIdentifier: (Watcher, [Event])] = [:]
        for ev in events {
            if let ws = watch.syncedKeys[ev.kv.key] {
                for (id, w) in ws where ev.kv.modRevision >= w.minRev { batches[id, default: (w, [])].1.append(ev) }
            }
            for (id, w) in watch.syncedRanges where w.matches(ev.kv.key) && ev.kv.modRevision >= w.minRev {
                batches[id, default: (w, [])].1.append(ev)
            }
        }
        var cache: [PrevKey: KeyValue?] = [:]
        for (_, (w, evs)) in batches {
            // A backend read failure for prevKV cannot stop the write that already happened:
            // deliver without prevKV rather than lose the events.
            if (try? deliverLocked(w, evs, upTo: rev, cache: &cache)) == nil {
                w.minRev = rev + 1
                let resp = WatchResponse(watchID: w.id, events: evs, revision: rev)
                if w.stream?.push(resp) != true { w.parked = resp; watch.add(w, as: .victim) }
            }
        }
    }

    // MARK: driving (called by the owner's loop or by tests)

    /// One catch-up step for the unsynced watchers: cancels those whose start revision was
    /// compacted, reads at most `watchCatchUpBatch` main revisions of history from the
    /// backend and delivers them; watchers that reach the current revision become synced.
    /// Returns how many watchers are still unsynced.
    @discardableResult
    public func syncWatchers() throws -> Int {
        try lock.withLock {
            try syncWatchersLocked()
            answerProgressLocked()
            return watch.unsynced.count
        }
    }

    func syncWatchersLocked() throws {
        guard !watch.unsynced.isEmpty else { return }
        var minRev = Int64.max
        for (_, w) in watch.unsynced {
            guard w.stream != nil else { watch.remove(w); continue }
            if w.minRev < compactMainRev {
                let resp = WatchResponse(watchID: w.id, events: [], revision: currentRev,
                                         compactRevision: compactMainRev, canceled: true)
                if w.stream?.push(resp) == true {
                    watch.remove(w)
                    w.stream?.watchers[w.id] = nil
                }
                continue
            }
            minRev = min(minRev, w.minRev)
        }
        guard minRev != Int64.max else { return }
        var upper = min(currentRev, minRev + max(1, options.watchCatchUpBatch) - 1)
        var events: [Event] = []
        if minRev <= upper {
            let byteLimit = max(1, options.watchCatchUpBytes)
            var bytes = 0
            let scanEnd = upper
            try backend.read { r in
                try r.scan(.key, from: Revision(main: minRev).bucketKey(), to: Revision(main: scanEnd + 1).bucketKey()) { k, v in
                    guard let (rv, tomb) = Revision.fromBucketKey(k) else {
                        throw MVCCError.corrupt("key-bucket key of \(k.count) bytes")
                    }
                    // Past the byte budget: end the step at the last complete revision.
                    if bytes >= byteLimit, let last = events.last, rv.main > last.kv.modRevision {
                        upper = last.kv.modRevision
                        return false
                    }
                    var kv = try KeyValue.decode(v)
                    if tomb { kv = KeyValue(key: kv.key, modRevision: rv.main) }
                    let ev = Event(type: tomb ? .delete : .put, kv: kv)
                    bytes += ev.approximateBytes
                    events.append(ev)
                    return true
                }
            }
        }
        // (Watchers below the compact revision wait for room for their cancellation.)
        var cache: [PrevKey: KeyValue?] = [:]
        for (_, w) in watch.unsynced where w.minRev <= upper && w.minRev >= compactMainRev {
            let mine = events.filter { $0.kv.modRevision >= w.minRev && w.matches($0.kv.key) }
            if try deliverLocked(w, mine, upTo: upper, cache: &cache), w.minRev > currentRev {
                watch.add(w, as: .synced)
            }
        }
    }

    /// Resends parked responses of slow watchers whose stream has room again. Called by
    /// `WatchStream.next()` after its buffer was full; owners may call it too.
    public func retryVictims() {
        lock.withLock { retryVictimsLocked() }
    }

    func retryVictimsLocked() {
        for (_, w) in watch.victims {
            guard let stream = w.stream else { watch.remove(w); continue }
            if let resp = w.parked {
                if !stream.push(resp) { continue }
                w.parked = nil
            }
            watch.add(w, as: w.minRev > currentRev ? .synced : .unsynced)
        }
        answerProgressLocked()
    }

    /// Sends a progress notification (no events, the current revision) to every synced
    /// watcher created with `progressNotify` (etcd does so every 10 minutes).
    public func notifyProgress() {
        lock.withLock {
            var all = Array(watch.syncedRanges.values)
            for ws in watch.syncedKeys.values { all += ws.values }
            for w in all where w.options.progressNotify {
                _ = w.stream?.push(WatchResponse(watchID: w.id, events: [], revision: currentRev))
            }
        }
    }

    func answerProgressLocked() {
        for (id, s) in watch.progressWaiting where s.allSyncedLocked {
            if s.push(WatchResponse(watchID: -1, events: [], revision: currentRev)) {
                watch.progressWaiting[id] = nil
            }
        }
    }

    /// Runs the catch-up and victim retries every `interval` until the task is cancelled.
    public func runWatchLoop(interval: Duration = .milliseconds(100)) -> Task<Void, Never> {
        Task.detached { [weak self] in
            while !Task.isCancelled {
                guard let self else { return }
                _ = try? self.syncWatchers()
                self.retryVictims()
                try? await Task.sleep(for: interval)
            }
        }
    }
}
