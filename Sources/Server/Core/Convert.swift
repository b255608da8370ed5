import EtcdProto
import Foundation
import MVCC

// Conversions between etcd's wire messages (EtcdProto) and the keyspace's value types (MVCC).

extension RangeRequest {
    init(_ p: Etcdserverpb_RangeRequest) {
        self.init(key: [UInt8](p.key), rangeEnd: [UInt8](p.rangeEnd), limit: p.limit, revision: p.revision)
        switch p.sortOrder {
        case .ascend: sortOrder = .ascend
        case .descend: sortOrder = .descend
        default: sortOrder = .none
        }
        switch p.sortTarget {
        case .version: sortTarget = .version
        case .create: sortTarget = .create
        case .mod: sortTarget = .mod
        case .value: sortTarget = .value
        default: sortTarget = .key
        }
        keysOnly = p.keysOnly
        countOnly = p.countOnly
        minModRevision = p.minModRevision
        maxModRevision = p.maxModRevision
        minCreateRevision = p.minCreateRevision
        maxCreateRevision = p.maxCreateRevision
    }
}

extension PutRequest {
    init(_ p: Etcdserverpb_PutRequest) {
        self.init(key: [UInt8](p.key), value: [UInt8](p.value), lease: p.lease, prevKv: p.prevKv)
        ignoreValue = p.ignoreValue
        ignoreLease = p.ignoreLease
    }
}

extension DeleteRangeRequest {
    init(_ p: Etcdserverpb_DeleteRangeRequest) {
        self.init(key: [UInt8](p.key), rangeEnd: [UInt8](p.rangeEnd), prevKv: p.prevKv)
    }
}

extension Compare {
    init(_ p: Etcdserverpb_Compare) {
        let target: Target
        switch p.target {
        case .create: target = .create(p.createRevision)
        case .mod: target = .mod(p.modRevision)
        case .value: target = .value([UInt8](p.value))
        case .lease: target = .lease(p.lease)
        default: target = .version(p.version)
        }
        let result: Result
        switch p.result {
        case .greater: result = .greater
        case .less: result = .less
        case .notEqual: result = .notEqual
        default: result = .equal
        }
        self.init(key: [UInt8](p.key), rangeEnd: [UInt8](p.rangeEnd), target: target, result: result)
    }
}

extension TxnRequest {
    init(_ p: Etcdserverpb_TxnRequest) {
        func op(_ o: Etcdserverpb_RequestOp) -> RequestOp {
            switch o.request {
            case .requestRange(let r): return .range(RangeRequest(r))
            case .requestPut(let r): return .put(PutRequest(r))
            case .requestDeleteRange(let r): return .deleteRange(DeleteRangeRequest(r))
            case .requestTxn(let r): return .txn(TxnRequest(r))
            // An empty op: a range without a key, which the store rejects with its own error.
            case nil: return .range(RangeRequest(key: []))
            }
        }
        self.init(compare: p.compare.map(Compare.init), success: p.success.map(op), failure: p.failure.map(op))
    }
}

extension Mvccpb_KeyValue {
    init(_ kv: KeyValue) {
        self.init()
        key = Data(kv.key)
        createRevision = kv.createRevision
        modRevision = kv.modRevision
        version = kv.version
        value = Data(kv.value)
        lease = kv.lease
    }
}

extension Mvccpb_Event {
    init(_ e: Event) {
        self.init()
        type = e.type == .put ? .put : .delete
        kv = Mvccpb_KeyValue(e.kv)
        if let p = e.prevKv { prevKv = Mvccpb_KeyValue(p) }
    }
}

extension Etcdserverpb_RangeResponse {
    init(_ r: RangeResponse) {
        self.init()
        kvs = r.kvs.map(Mvccpb_KeyValue.init)
        more = r.more
        count = r.count
    }
}

extension Etcdserverpb_PutResponse {
    init(_ r: PutResponse) {
        self.init()
        if let p = r.prevKv { prevKv = Mvccpb_KeyValue(p) }
    }
}

extension Etcdserverpb_DeleteRangeResponse {
    init(_ r: DeleteRangeResponse) {
        self.init()
        deleted = r.deleted
        prevKvs = r.prevKvs.map(Mvccpb_KeyValue.init)
    }
}

extension Etcdserverpb_TxnResponse {
    /// The Txn response; every nested response header gets `header` (as etcd fills them).
    init(_ r: TxnResponse, header: Etcdserverpb_ResponseHeader) {
        self.init()
        self.header = header
        succeeded = r.succeeded
        responses = r.responses.map { op in
            var out = Etcdserverpb_ResponseOp()
            switch op {
            case .range(let x):
                var m = Etcdserverpb_RangeResponse(x); m.header = header
                out.response = .responseRange(m)
            case .put(let x):
                var m = Etcdserverpb_PutResponse(x); m.header = header
                out.response = .responsePut(m)
            case .deleteRange(let x):
                var m = Etcdserverpb_DeleteRangeResponse(x); m.header = header
                out.response = .responseDeleteRange(m)
            case .txn(let x):
                out.response = .responseTxn(Etcdserverpb_TxnResponse(x, header: header))
            }
            return out
        }
    }
}
