public import EtcdProto
import Foundation

/// The keyspace operations Lock and Election are built from (implemented by `EtcdServer`;
/// an in-memory fake in tests). Both services follow etcd's client-side recipes
/// (`concurrency.Mutex`, `concurrency.Election`), run on the server.
public protocol LockElectionBackend: Sendable {
    /// A response header at the current revision.
    func responseHeader() -> Etcdserverpb_ResponseHeader
    func range(_ request: Etcdserverpb_RangeRequest) async throws -> Etcdserverpb_RangeResponse
    func txn(_ request: Etcdserverpb_TxnRequest) async throws -> Etcdserverpb_TxnResponse
    func deleteRange(_ request: Etcdserverpb_DeleteRangeRequest) async throws -> Etcdserverpb_DeleteRangeResponse
    /// Waits for the first change to keys in [key, rangeEnd) at a revision above
    /// `afterRevision` (rangeEnd empty: the one key) and returns those events. Throws if the
    /// call is cancelled or the history was compacted.
    func nextEvents(key: [UInt8], rangeEnd: [UInt8], afterRevision: Int64) async throws -> [Mvccpb_Event]
}

/// Key helpers shared by Lock and Election.
enum CoordinationKeys {
    /// `<prefix>/<lease id in lowercase hex>` as etcd's recipes name a session's key.
    static func key(prefix: [UInt8], lease: Int64) -> [UInt8] {
        prefix + Array("/".utf8) + Array(String(UInt64(bitPattern: lease), radix: 16).utf8)
    }

    /// `<name>/`: the range every contender's key lives in.
    static func prefix(_ name: [UInt8]) -> [UInt8] { name + Array("/".utf8) }

    /// The end of the range of keys starting with `prefix`.
    static func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return end
            }
            end.removeLast()
        }
        return [0]   // every key: etcd's "\0"
    }
}

extension LockElectionBackend {
    /// Creates `key` with `value` under `lease` unless it exists, and reads it back: the
    /// create revision is this contender's place in the queue.
    func createOrGet(key: [UInt8], value: [UInt8], lease: Int64) async throws -> (kv: Mvccpb_KeyValue?, created: Bool, revision: Int64) {
        var cmp = Etcdserverpb_Compare()
        cmp.key = Data(key)
        cmp.target = .create
        cmp.result = .equal
        cmp.createRevision = 0
        var put = Etcdserverpb_PutRequest()
        put.key = Data(key)
        put.value = Data(value)
        put.lease = lease
        var get = Etcdserverpb_RangeRequest()
        get.key = Data(key)
        var txn = Etcdserverpb_TxnRequest()
        txn.compare = [cmp]
        var putOp = Etcdserverpb_RequestOp()
        putOp.requestPut = put
        var getOp = Etcdserverpb_RequestOp()
        getOp.requestRange = get
        txn.success = [putOp, getOp]
        txn.failure = [getOp]
        let response = try await self.txn(txn)
        let kv = response.responses.last?.responseRange.kvs.first
        return (kv, response.succeeded, response.header.revision)
    }

    /// Waits until no key under `prefix` has a create revision below `myRevision`: each time,
    /// the newest older contender is awaited until deleted (etcd's waitDeletes).
    func waitForOlderDeleted(prefix: [UInt8], myRevision: Int64) async throws -> Etcdserverpb_ResponseHeader {
        while true {
            try Task.checkCancellation()
            var get = Etcdserverpb_RangeRequest()
            get.key = Data(prefix)
            get.rangeEnd = Data(CoordinationKeys.prefixEnd(prefix))
            get.maxCreateRevision = myRevision - 1
            get.sortOrder = .descend
            get.sortTarget = .create
            let older = try await range(get)
            // Filtered here too, so a store that ignores max_create_revision stays correct.
            let blockers = older.kvs.filter { $0.createRevision < myRevision }
            guard let blocker = blockers.max(by: { $0.createRevision < $1.createRevision }) else { return older.header }
            _ = try await waitForDeletion(key: Array(blocker.key), afterRevision: older.header.revision)
        }
    }

    /// Waits until `key` is deleted after `afterRevision`.
    func waitForDeletion(key: [UInt8], afterRevision: Int64) async throws {
        var revision = afterRevision
        while true {
            let events = try await nextEvents(key: key, rangeEnd: [], afterRevision: revision)
            if events.contains(where: { $0.type == .delete }) { return }
            revision = events.map(\.kv.modRevision).max() ?? revision
        }
    }
}
