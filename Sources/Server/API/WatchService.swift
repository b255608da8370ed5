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

    private func run(
        _ request: RPCAsyncSequence<Etcdserverpb_WatchRequest, any Error>,
        _ response: RPCWriter<Etcdserverpb_WatchResponse>
    ) async throws {
        let stream = server.makeWatchStream()
        let (outgoing, sink) = AsyncStream<Etcdserverpb_WatchResponse>.makeStream()
        let emit = WatchEmitter(sink: sink)
        let server = self.server
        let maxBytes = Int(clamping: server.config.maxRequestBytes)
        defer { stream.close() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The only writer to the client.
            group.addTask {
                for await r in outgoing { try await response.write(r) }
            }
            // Keyspace responses → client responses.
            group.addTask {
                while let wr = await stream.next() {
                    emit.state.withLock { st in
                        for r in Self.convert(wr, server: server, fragment: st.fragmenting.contains(wr.watchID), maxBytes: maxBytes) {
                            st.sink.yield(r)
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
            sink.finish()
            if server.closing.isFired {
                group.cancelAll()
                throw EtcdError.stopped.rpcError
            }
            try? await group.waitForAll()
        }
    }

    private static func handleRequests(
        _ request: RPCAsyncSequence<Etcdserverpb_WatchRequest, any Error>,
        stream: ServerWatchStream, emit: WatchEmitter, server: EtcdServer
    ) async {
        do {
            for try await req in request {
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
                        st.sink.yield(out)
                    }
                case .cancelRequest(let c)?:
                    emit.state.withLock { st in
                        if (try? stream.cancel(c.watchID)) != nil {
                            st.fragmenting.remove(c.watchID)
                            var out = Etcdserverpb_WatchResponse()
                            out.header = server.header()
                            out.watchID = c.watchID
                            out.canceled = true
                            st.sink.yield(out)
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
    let sink: AsyncStream<Etcdserverpb_WatchResponse>.Continuation
    var fragmenting: Set<Int64> = []
}

/// The state both tasks of a watch stream emit under, so a "created" response always precedes
/// that watch's events.
final class WatchEmitter: Sendable {
    let state: Mutex<WatchEmitState>
    init(sink: AsyncStream<Etcdserverpb_WatchResponse>.Continuation) { state = Mutex(WatchEmitState(sink: sink)) }
}

/// etcd's cancel reason for a watch the caller may not read: the gRPC status text of
/// "etcdserver: permission denied".
struct WatchPermissionDenied: Error, CustomStringConvertible {
    var description: String { "rpc error: code = PermissionDenied desc = etcdserver: permission denied" }
}
