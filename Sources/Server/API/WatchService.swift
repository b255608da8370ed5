import EtcdProto
import Foundation
import GRPCCore
import MVCC
import Synchronization

/// etcd's Watch service on an ``EtcdServer``: one `WatchStream` per gRPC stream; create,
/// cancel and progress requests; prev_kv and filters; responses split into fragments when the
/// client asked for it and they exceed the request size limit.
public struct WatchService: Etcdserverpb_Watch.StreamingServiceProtocol {
    let server: EtcdServer

    /// The service for `server`.
    public init(server: EtcdServer) { self.server = server }

    public func watch(
        request: StreamingServerRequest<Etcdserverpb_WatchRequest>,
        context: ServerContext
    ) async throws -> StreamingServerResponse<Etcdserverpb_WatchResponse> {
        // A learner serves no streams (as etcd).
        if server.isLearner { throw EtcdError.notSupportedForLearner.rpcError }
        // clientv3 with WithRequireLeader sends `hasleader: true`: refuse without a leader.
        if request.metadata[stringValues: "hasleader"].contains(where: { $0 == "true" }), server.leaderID == 0 {
            throw EtcdError.noLeader.rpcError
        }
        return StreamingServerResponse { writer in
            try await run(request.messages, writer)
            return [:]
        }
    }

    /// Responses handed to the client's writer but not yet accepted by it, at most. The
    /// keyspace stream is read only when there is room, so a client that stops reading
    /// leaves its watchers parked as victims in the MVCC layer (whose buffer is bounded)
    /// instead of growing a queue here.
    static let outstandingResponses = 2

    private func run(
        _ request: RPCAsyncSequence<Etcdserverpb_WatchRequest, any Error>,
        _ response: RPCWriter<Etcdserverpb_WatchResponse>
    ) async throws {
        let stream = server.makeWatchStream()
        let outbox = WatchOutbox(capacity: Self.outstandingResponses)
        let emit = WatchEmitter(sink: outbox)
        let server = self.server
        let maxBytes = Int(clamping: server.config.maxRequestBytes)
        defer {
            stream.close()
            outbox.finish()
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The only writer to the client: each write returns once the transport took the
            // message (it waits while the connection's flow-control window is closed).
            group.addTask {
                while let r = await outbox.next() { try await response.write(r) }
            }
            // Keyspace responses → client responses, one at a time when there is room.
            group.addTask {
                while await outbox.waitForRoom(), let wr = await stream.next() {
                    emit.state.withLock { st in
                        for r in Self.convert(wr, server: server, fragment: st.fragmenting.contains(wr.watchID), maxBytes: maxBytes) {
                            st.sink.push(r)
                        }
                    }
                }
            }
            // Client requests, until the client ends the stream or the server stops.
            let clientDone = ShutdownSignal()
            let reader = Task {
                await Self.handleRequests(request, stream: stream, emit: emit, server: server)
                clientDone.fire()
            }
            await withTaskGroup(of: Void.self) { race in
                race.addTask { await clientDone.wait() }
                race.addTask { await server.closing.wait() }
                await race.next()
                race.cancelAll()
            }
            reader.cancel()
            stream.close()
            outbox.finish()
            if server.closing.isFired {
                group.cancelAll()
                throw EtcdError.stopped.rpcError
            }
            try? await group.waitForAll()
        }
    }

    private static func handleRequests(
        _ request: RPCAsyncSequence<Etcdserverpb_WatchRequest, any Error>,
        stream: WatchStream, emit: WatchEmitter, server: EtcdServer
    ) async {
        do {
            for try await req in request {
                // A client that sends requests but does not read the answers is held back
                // here (it stops being read), not queued.
                guard await emit.sink.waitForRoom() else { return }
                switch req.requestUnion {
                case .createRequest(let c)?:
                    // With auth enabled the caller needs read permission on the whole range;
                    // etcd answers a refused create as created and canceled at once.
                    let permitted = (try? server.authorize(key: c.key, rangeEnd: c.rangeEnd, write: false, try server.authInfo())) != nil
                    emit.state.withLock { st in
                        var out = Etcdserverpb_WatchResponse()
                        out.created = true
                        do {
                            guard permitted else { throw WatchPermissionDenied() }
                            let id = try stream.watch(
                                key: [UInt8](c.key), rangeEnd: [UInt8](c.rangeEnd), startRevision: c.startRevision,
                                options: WatchOptions(prevKV: c.prevKv, noPut: c.filters.contains(.noput),
                                                      noDelete: c.filters.contains(.nodelete),
                                                      progressNotify: c.progressNotify),
                                id: c.watchID == 0 ? -1 : c.watchID)
                            out.watchID = id
                            if c.fragment { st.fragmenting.insert(id) }
                        } catch {
                            out.watchID = -1
                            out.canceled = true
                            out.cancelReason = "\(error)"
                        }
                        out.header = server.header()
                        st.sink.push(out)
                    }
                case .cancelRequest(let c)?:
                    emit.state.withLock { st in
                        if (try? stream.cancel(c.watchID)) != nil {
                            st.fragmenting.remove(c.watchID)
                            var out = Etcdserverpb_WatchResponse()
                            out.header = server.header()
                            out.watchID = c.watchID
                            out.canceled = true
                            st.sink.push(out)
                        }
                    }
                case .progressRequest?:
                    stream.requestProgress()
                case nil:
                    continue
                }
            }
        } catch {
            // The client went away or the stream was cancelled.
        }
    }

    /// Turns a keyspace response into one client response, or several fragments when the watch
    /// asked for fragmentation and the events exceed `maxBytes`.
    static func convert(_ wr: WatchResponse, server: EtcdServer, fragment: Bool, maxBytes: Int) -> [Etcdserverpb_WatchResponse] {
        var base = Etcdserverpb_WatchResponse()
        base.header = server.header(revision: wr.revision)
        base.watchID = wr.watchID
        if wr.compactRevision != 0 {
            base.compactRevision = wr.compactRevision
            base.canceled = true
            base.cancelReason = "mvcc: required revision has been compacted"
        } else if wr.canceled {
            base.canceled = true
        }
        let events = wr.events.map(Mvccpb_Event.init)
        guard fragment, !events.isEmpty else {
            base.events = events
            return [base]
        }
        let total = events.reduce(0) { $0 + $1.kv.key.count + $1.kv.value.count + $1.prevKv.value.count + 32 }
        if total <= maxBytes {
            base.events = events
            return [base]
        }
        var out: [Etcdserverpb_WatchResponse] = []
        var current: [Mvccpb_Event] = []
        var size = 0
        for e in events {
            let s = e.kv.key.count + e.kv.value.count + e.prevKv.value.count + 32
            if !current.isEmpty && size + s > maxBytes {
                var r = base
                r.events = current
                r.fragment = true
                out.append(r)
                current = []
                size = 0
            }
            current.append(e)
            size += s
        }
        var last = base
        last.events = current
        out.append(last)
        return out
    }
}

struct WatchEmitState {
    let sink: WatchOutbox
    var fragmenting: Set<Int64> = []
}

/// The state both tasks of a watch stream emit under, so a "created" response always precedes
/// that watch's events.
final class WatchEmitter: Sendable {
    let state: Mutex<WatchEmitState>
    var sink: WatchOutbox { state.withLock { $0.sink } }
    init(sink: WatchOutbox) { state = Mutex(WatchEmitState(sink: sink)) }
}

/// The responses of one watch stream waiting for the client's writer: producers wait for room
/// (`waitForRoom`) before taking more work, then `push` without waiting (under the emitter's
/// lock), so the queue holds at most `capacity` plus the fragments of one response and one
/// control response per producer.
final class WatchOutbox: Sendable {
    private struct State {
        var queue: [Etcdserverpb_WatchResponse] = []
        var head = 0
        var finished = false
        var reader: CheckedContinuation<Etcdserverpb_WatchResponse?, Never>?
        var roomWaiters: [CheckedContinuation<Bool, Never>] = []
        var pending: Int { queue.count - head }
    }

    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) { self.capacity = max(1, capacity) }

    /// Responses queued and not yet taken by the writer.
    var count: Int { state.withLock { $0.pending } }

    /// Queues `r` (dropped once finished).
    func push(_ r: Etcdserverpb_WatchResponse) {
        let reader = state.withLock { st -> CheckedContinuation<Etcdserverpb_WatchResponse?, Never>? in
            guard !st.finished else { return nil }
            if let c = st.reader {
                st.reader = nil
                return c
            }
            st.queue.append(r)
            return nil
        }
        reader?.resume(returning: r)
    }

    /// Waits until fewer than `capacity` responses are queued; false once finished (also
    /// when the calling task is cancelled, which finishes nothing else).
    func waitForRoom() async -> Bool {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                let answer: Bool? = state.withLock { st in
                    if st.finished || Task.isCancelled { return false }
                    if st.pending < capacity { return true }
                    st.roomWaiters.append(c)
                    return nil
                }
                if let answer { c.resume(returning: answer) }
            }
        } onCancel: {
            let waiters = state.withLock { st -> [CheckedContinuation<Bool, Never>] in
                defer { st.roomWaiters = [] }
                return st.roomWaiters
            }
            for w in waiters { w.resume(returning: false) }
        }
    }

    /// The next queued response, waiting for one; nil once finished or cancelled.
    func next() async -> Etcdserverpb_WatchResponse? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Etcdserverpb_WatchResponse?, Never>) in
                let (ready, wake): (Etcdserverpb_WatchResponse??, [CheckedContinuation<Bool, Never>]) = state.withLock { st in
                    if st.pending > 0 {
                        let r = st.queue[st.head]
                        st.queue[st.head] = Etcdserverpb_WatchResponse()
                        st.head += 1
                        if st.head == st.queue.count {
                            st.queue.removeAll(keepingCapacity: true)
                            st.head = 0
                        }
                        var wake: [CheckedContinuation<Bool, Never>] = []
                        if st.pending < capacity {
                            wake = st.roomWaiters
                            st.roomWaiters = []
                        }
                        return (.some(r), wake)
                    }
                    if st.finished || Task.isCancelled { return (.some(nil), []) }
                    st.reader = c
                    return (nil, [])
                }
                for w in wake { w.resume(returning: true) }
                if let ready { c.resume(returning: ready) }
            }
        } onCancel: {
            let reader = state.withLock { st -> CheckedContinuation<Etcdserverpb_WatchResponse?, Never>? in
                defer { st.reader = nil }
                return st.reader
            }
            reader?.resume(returning: nil)
        }
    }

    /// Drops what is queued and wakes everyone: `next()` returns nil, `waitForRoom()` false.
    func finish() {
        let (reader, waiters) = state.withLock { st -> (CheckedContinuation<Etcdserverpb_WatchResponse?, Never>?, [CheckedContinuation<Bool, Never>]) in
            st.finished = true
            st.queue = []
            st.head = 0
            defer {
                st.reader = nil
                st.roomWaiters = []
            }
            return (st.reader, st.roomWaiters)
        }
        reader?.resume(returning: nil)
        for w in waiters { w.resume(returning: false) }
    }
}

/// etcd's cancel reason for a watch the caller may not read: the gRPC status text of
/// "etcdserver: permission denied".
struct WatchPermissionDenied: Error, CustomStringConvertible {
    var description: String { "rpc error: code = PermissionDenied desc = etcdserver: permission denied" }
}
