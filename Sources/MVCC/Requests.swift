/// Errors of the keyspace, with etcd's texts (the server maps them to gRPC status codes).
public enum MVCCError: Error, Equatable, CustomStringConvertible, Sendable {
    case compacted
    case futureRevision
    case keyNotProvided
    case duplicateKey
    case keyNotFound
    case valueProvided
    case leaseProvided
    case leaseNotFound
    case duplicateWatchID
    case watcherNotFound
    /// Malformed data read from the backend.
    case corrupt(String)
    /// A backend failure interrupted a write half-way; the store refuses all further work
    /// (restart it: the WAL replay after the consistent index repairs the state).
    case stopped(String)

    public var description: String {
        switch self {
        case .compacted: "mvcc: required revision has been compacted"
        case .futureRevision: "mvcc: required revision is a future revision"
        case .keyNotProvided: "etcdserver: key is not provided"
        case .duplicateKey: "etcdserver: duplicate key given in txn request"
        case .keyNotFound: "etcdserver: key not found"
        case .valueProvided: "etcdserver: value is provided"
        case .leaseProvided: "etcdserver: lease is provided"
        case .leaseNotFound: "etcdserver: requested lease not found"
        case .duplicateWatchID: "mvcc: duplicate watch ID provided on the WatchStream"
        case .watcherNotFound: "mvcc: watcher not found"
        case .corrupt(let what): "mvcc: corrupt backend: \(what)"
        case .stopped(let why): "mvcc: store stopped after a failed write: \(why)"
        }
    }
}

/// etcd's RangeRequest. `rangeEnd` empty: the single key `key`; `[0]`: every key >= `key`;
/// otherwise the half-open range `[key, rangeEnd)`.
public struct RangeRequest: Sendable, Equatable {
    public enum SortOrder: Sendable { case none, ascend, descend }
    public enum SortTarget: Sendable { case key, version, create, mod, value }
    public var key: [UInt8]
    public var rangeEnd: [UInt8] = []
    /// At most this many kvs (0: no limit); `more` tells whether some were left out.
    public var limit: Int64 = 0
    /// Read at this revision (0: current).
    public var revision: Int64 = 0
    public var sortOrder: SortOrder = .none
    public var sortTarget: SortTarget = .key
    public var keysOnly = false
    public var countOnly = false
    public var minModRevision: Int64 = 0
    public var maxModRevision: Int64 = 0
    public var minCreateRevision: Int64 = 0
    public var maxCreateRevision: Int64 = 0

    public init(key: [UInt8], rangeEnd: [UInt8] = [], limit: Int64 = 0, revision: Int64 = 0) {
        self.key = key
        self.rangeEnd = rangeEnd
        self.limit = limit
        self.revision = revision
    }
}

/// etcd's RangeResponse (the server adds the header's cluster, member and term).
public struct RangeResponse: Sendable, Equatable {
    /// The store's current revision (the response header's revision).
    public var revision: Int64
    public var kvs: [KeyValue]
    public var more: Bool
    /// Keys in the range at the read revision, before limit and filters.
    public var count: Int64
}

/// etcd's PutRequest.
public struct PutRequest: Sendable, Equatable {
    public var key: [UInt8]
    public var value: [UInt8]
    public var lease: Int64
    public var prevKv = false
    /// Keep the current value (the key must exist).
    public var ignoreValue = false
    /// Keep the current lease (the key must exist).
    public var ignoreLease = false

    public init(key: [UInt8], value: [UInt8], lease: Int64 = 0, prevKv: Bool = false) {
        self.key = key
        self.value = value
        self.lease = lease
        self.prevKv = prevKv
    }
}

/// etcd's PutResponse: the new revision, and the previous version if asked for.
public struct PutResponse: Sendable, Equatable {
    public var revision: Int64
    public var prevKv: KeyValue?
}

/// etcd's DeleteRangeRequest; `rangeEnd` as in `RangeRequest`.
public struct DeleteRangeRequest: Sendable, Equatable {
    public var key: [UInt8]
    public var rangeEnd: [UInt8]
    public var prevKv: Bool

    public init(key: [UInt8], rangeEnd: [UInt8] = [], prevKv: Bool = false) {
        self.key = key
        self.rangeEnd = rangeEnd
        self.prevKv = prevKv
    }
}

/// etcd's DeleteRangeResponse: the revision after, keys deleted, their last versions if asked.
public struct DeleteRangeResponse: Sendable, Equatable {
    public var revision: Int64
    public var deleted: Int64
    public var prevKvs: [KeyValue]
}

/// One condition of a Txn, checked against every key of `[key, rangeEnd)` at the current
/// revision. A missing key compares with zeroes, except that a value compare then fails.
public struct Compare: Sendable, Equatable {
    public enum Result: Sendable { case equal, greater, less, notEqual }
    public enum Target: Sendable, Equatable {
        case version(Int64), create(Int64), mod(Int64), value([UInt8]), lease(Int64)
    }
    public var result: Result
    public var target: Target
    public var key: [UInt8]
    public var rangeEnd: [UInt8]

    public init(key: [UInt8], rangeEnd: [UInt8] = [], target: Target, result: Result) {
        self.key = key
        self.rangeEnd = rangeEnd
        self.target = target
        self.result = result
    }
}

/// An operation of a Txn branch.
public indirect enum RequestOp: Sendable, Equatable {
    case range(RangeRequest)
    case put(PutRequest)
    case deleteRange(DeleteRangeRequest)
    case txn(TxnRequest)
}

/// The response of one op of a Txn branch.
public indirect enum ResponseOp: Sendable, Equatable {
    case range(RangeResponse)
    case put(PutResponse)
    case deleteRange(DeleteRangeResponse)
    case txn(TxnResponse)
}

/// etcd's TxnRequest: if every compare holds, run `success`, else `failure`.
public struct TxnRequest: Sendable, Equatable {
    public var compare: [Compare]
    public var success: [RequestOp]
    public var failure: [RequestOp]

    public init(compare: [Compare] = [], success: [RequestOp] = [], failure: [RequestOp] = []) {
        self.compare = compare
        self.success = success
        self.failure = failure
    }
}

/// etcd's TxnResponse: the revision after, the branch taken, one response per op of it.
public struct TxnResponse: Sendable, Equatable {
    public var revision: Int64
    public var succeeded: Bool
    public var responses: [ResponseOp]
}
