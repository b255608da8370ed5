import LMDBBackend

/// The changes of one write (one main revision) while it is being applied.
struct WriteState {
    let beginRev: Int64
    var events: [Event] = []
    var rev: Int64 { beginRev + 1 }
    /// The revision reads inside the write see (its own changes included).
    var readRev: Int64 { events.isEmpty ? beginRev : beginRev + 1 }
    var nextSub: Int64 { Int64(events.count) }
}

extension MVCCStore {
    /// Puts a key (etcd's Put): one new revision.
    public func put(_ req: PutRequest) throws -> PutResponse {
        try MVCCStore.checkPutShape(req)
        return try write { ws in
            try checkPut(req, readRev: ws.readRev)
            return try putLocked(req, &ws)
        }
    }

    /// Deletes the keys of a range (etcd's DeleteRange): one new revision if any key existed.
    public func deleteRange(_ req: DeleteRangeRequest) throws -> DeleteRangeResponse {
        try write { ws in
            if req.key.isEmpty { throw MVCCError.keyNotProvided }
            return try deleteLocked(req, &ws)
        }
    }

    /// Deletes the given keys in ONE revision (a lease revoke); returns the store revision after.
    @discardableResult
    public func deleteKeys(_ keys: [[UInt8]]) throws -> Int64 {
        try write { ws in
            for k in keys where !k.isEmpty {
                _ = try deleteLocked(DeleteRangeRequest(key: k), &ws)
            }
            return ws.readRev
        }
    }

    /// Runs a Txn (etcd's rules: compares on the state before the txn, nested txns' paths
    /// decided up front, checks before any change, one revision for all its changes).
    public func txn(_ req: TxnRequest) throws -> TxnResponse {
        try MVCCStore.checkTxnShape(req)
        return try write { ws in
            let path = try decidePath(req, readRev: ws.readRev)
            try checkPath(req, path: path, readRev: ws.readRev)
            var next = 0
            var resp = try executeTxn(req, path: path, next: &next, &ws)
            MVCCStore.setRevision(&resp, ws.readRev)
            return resp
        }
    }

    /// Runs `body` as one write, then records the new revision and notifies watchers.
    func write<T>(_ body: (inout WriteState) throws -> T) throws -> T {
        try lock.withLock { try backend.batch { try writeLocked(body) } }
    }

    private func writeLocked<T>(_ body: (inout WriteState) throws -> T) throws -> T {
        if let f = failure { throw MVCCError.stopped(f) }
        var ws = WriteState(beginRev: currentRev)
        let result: T
        do {
            result = try body(&ws)
            if !ws.events.isEmpty {
                try backend.put(.meta, key: MVCCStore.currentRevKey, value: BigEndian.bytes(UInt64(ws.rev)))
            }
        } catch {
            // Checks run before any change, so only a backend failure gets here with changes
            // made: index and backend may disagree now, so stop serving.
            if !ws.events.isEmpty { failure = "\(error)" }
            throw error
        }
        if !ws.events.isEmpty {
            currentRev = ws.rev
            notifyLocked(rev: currentRev, events: ws.events)
        }
        return result
    }

    /// The request-only checks etcd's gRPC layer makes.
    static func checkPutShape(_ req: PutRequest) throws {
        if req.key.isEmpty { throw MVCCError.keyNotProvided }
        if req.ignoreValue && !req.value.isEmpty { throw MVCCError.valueProvided }
        if req.ignoreLease && req.lease != 0 { throw MVCCError.leaseProvided }
    }

    func checkPut(_ req: PutRequest, readRev: Int64) throws {
        if req.ignoreValue || req.ignoreLease {
            if index.get(req.key)?.get(at: readRev) == nil { throw MVCCError.keyNotFound }
        }
        if req.lease != 0, let hooks = leaseHooks, !hooks.leaseExists(req.lease) {
            throw MVCCError.leaseNotFound
        }
    }

    func putLocked(_ req: PutRequest, _ ws: inout WriteState) throws -> PutResponse {
        let rev = Revision(main: ws.rev, sub: ws.nextSub)
        let ki = index.get(req.key)
        let current = ki?.get(at: ws.readRev)
        var prev: KeyValue?
        if let c = current, req.prevKv || req.ignoreValue || req.ignoreLease || leaseHooks != nil {
            prev = try backend.read { try fetch($0, c.modified) }
        }
        var kv = KeyValue(key: req.key, createRevision: current?.created.main ?? rev.main,
                          modRevision: rev.main, version: (current?.version ?? 0) + 1,
                          value: req.value, lease: req.lease)
        if req.ignoreValue { kv.value = prev?.value ?? [] }
        if req.ignoreLease { kv.lease = prev?.lease ?? 0 }
        try backend.put(.key, key: rev.bucketKey(), value: kv.encoded())
        index.getOrInsert(req.key).put(rev)
        ws.events.append(Event(type: .put, kv: kv))
        if let hooks = leaseHooks {
            if let old = prev?.lease, old != 0, old != kv.lease { hooks.detach(key: req.key, lease: old) }
            if kv.lease != 0 { hooks.attach(key: req.key, lease: kv.lease) }
        }
        return PutResponse(revision: ws.rev, prevKv: req.prevKv ? prev : nil)
    }

    func deleteLocked(_ req: DeleteRangeRequest, _ ws: inout WriteState) throws -> DeleteRangeResponse {
        let readRev = ws.readRev
        var victims: [(KeyIndex, Revision)] = []
        scanRange(req.key, req.rangeEnd) { ki in
            if let c = ki.get(at: readRev) { victims.append((ki, c.modified)) }
            return true
        }
        var prevs: [KeyValue] = []
        let needPrev = req.prevKv || leaseHooks != nil
        for (ki, modified) in victims {
            let rev = Revision(main: ws.rev, sub: ws.nextSub)
            if needPrev, let p = try backend.read({ try fetch($0, modified) }) {
                if req.prevKv { prevs.append(p) }
                if p.lease != 0 { leaseHooks?.detach(key: ki.key, lease: p.lease) }
            }
            try backend.put(.key, key: rev.bucketKey(tombstone: true), value: KeyValue(key: ki.key).encoded())
            ki.tombstone(rev)
            ws.events.append(Event(type: .delete, kv: KeyValue(key: ki.key, modRevision: rev.main)))
        }
        return DeleteRangeResponse(revision: ws.readRev, deleted: Int64(victims.count), prevKvs: prevs)
    }

    // MARK: txn

    func compareHolds(_ c: Compare, readRev: Int64) throws -> Bool {
        var kvs: [KeyValue] = []
        let (revs, _) = revisions(c.key, c.rangeEnd, at: readRev, limit: 0)
        try backend.read { r in
            for rv in revs { if let kv = try fetch(r, rv) { kvs.append(kv) } }
        }
        if kvs.isEmpty {
            if case .value = c.target { return false }
            return MVCCStore.compare(c, KeyValue(key: c.key))
        }
        return kvs.allSatisfy { MVCCStore.compare(c, $0) }
    }

    static func compare(_ c: Compare, _ kv: KeyValue) -> Bool {
        func ord(_ a: Int64, _ b: Int64) -> Int { a == b ? 0 : (a < b ? -1 : 1) }
        let r: Int
        switch c.target {
        case .value(let v): r = compareBytes(kv.value, v)
        case .version(let v): r = ord(kv.version, v)
        case .create(let v): r = ord(kv.createRevision, v)
        case .mod(let v): r = ord(kv.modRevision, v)
        case .lease(let v): r = ord(kv.lease, v)
        }
        switch c.result {
        case .equal: return r == 0
        case .notEqual: return r != 0
        case .greater: return r > 0
        case .less: return r < 0
        }
    }

    /// The branch taken by the txn and, in order, by every nested txn on that path.
    func decidePath(_ req: TxnRequest, readRev: Int64) throws -> [Bool] {
        var path: [Bool] = []
        func walk(_ t: TxnRequest) throws {
            let ok = try t.compare.allSatisfy { try compareHolds($0, readRev: readRev) }
            path.append(ok)
            for op in ok ? t.success : t.failure { if case .txn(let inner) = op { try walk(inner) } }
        }
        try walk(req)
        return path
    }

    /// Checks the ops on `path` before anything changes, as etcd: every put (ignore flags
    /// need the key, leases must exist), then every range's revision.
    func checkPath(_ req: TxnRequest, path: [Bool], readRev: Int64) throws {
        func walk(_ t: TxnRequest, _ i: inout Int, _ check: (RequestOp) throws -> Void) rethrows {
            let ok = path[i]
            i += 1
            for op in ok ? t.success : t.failure {
                if case .txn(let inner) = op { try walk(inner, &i, check) } else { try check(op) }
            }
        }
        var i = 0
        try walk(req, &i) { op in if case .put(let p) = op { try checkPut(p, readRev: readRev) } }
        i = 0
        try walk(req, &i) { op in if case .range(let r) = op { _ = try resolve(r.revision, readRev: readRev) } }
    }

    func executeTxn(_ req: TxnRequest, path: [Bool], next: inout Int,
                    _ ws: inout WriteState) throws -> TxnResponse {
        let ok = path[next]
        next += 1
        var out: [ResponseOp] = []
        for op in ok ? req.success : req.failure {
            switch op {
            case .range(let r): out.append(.range(try rangeLocked(r, readRev: ws.readRev)))
            case .put(let p): out.append(.put(try putLocked(p, &ws)))
            case .deleteRange(let d): out.append(.deleteRange(try deleteLocked(d, &ws)))
            case .txn(let t): out.append(.txn(try executeTxn(t, path: path, next: &next, &ws)))
            }
        }
        return TxnResponse(revision: ws.readRev, succeeded: ok, responses: out)
    }

    static func setRevision(_ resp: inout TxnResponse, _ rev: Int64) {
        resp.revision = rev
        for i in resp.responses.indices {
            switch resp.responses[i] {
            case .range(var r): r.revision = rev; resp.responses[i] = .range(r)
            case .put(var p): p.revision = rev; resp.responses[i] = .put(p)
            case .deleteRange(var d): d.revision = rev; resp.responses[i] = .deleteRange(d)
            case .txn(var t): setRevision(&t, rev); resp.responses[i] = .txn(t)
            }
        }
    }

    /// Empty keys and etcd's duplicate-key rule: in one branch (nested txns included) no key is
    /// put twice and no put falls inside a deleted range; a nested txn's success and failure
    /// branches may put the same key since only one runs.
    static func checkTxnShape(_ req: TxnRequest) throws {
        for c in req.compare where c.key.isEmpty { throw MVCCError.keyNotProvided }
        for op in req.success + req.failure {
            switch op {
            case .range(let r): if r.key.isEmpty { throw MVCCError.keyNotProvided }
            case .put(let p): try checkPutShape(p)
            case .deleteRange(let d): if d.key.isEmpty { throw MVCCError.keyNotProvided }
            case .txn(let t): try checkTxnShape(t)
            }
        }
        _ = try branchWrites(req.success)
        _ = try branchWrites(req.failure)
    }

    /// A deleted interval [from, to); `to == nil` is unbounded.
    struct Interval {
        var from: [UInt8]
        var to: [UInt8]?
        init(key: [UInt8], end: [UInt8]) {
            from = key
            if end.isEmpty { to = key + [0] } else if end == [0] { to = nil } else { to = end }
        }
        func contains(_ k: [UInt8]) -> Bool {
            compareBytes(k, from) >= 0 && (to == nil || compareBytes(k, to!) < 0)
        }
    }

    /// The keys put and ranges deleted by `ops` (recursively); throws duplicateKey.
    static func branchWrites(_ ops: [RequestOp]) throws -> (puts: Set<[UInt8]>, dels: [Interval]) {
        var dels: [Interval] = []
        for op in ops { if case .deleteRange(let d) = op { dels.append(Interval(key: d.key, end: d.rangeEnd)) } }
        var puts = Set<[UInt8]>()
        func hitsDelete(_ k: [UInt8]) -> Bool { dels.contains { $0.contains(k) } }
        for op in ops {
            guard case .txn(let t) = op else { continue }
            let yes = try branchWrites(t.success)
            let no = try branchWrites(t.failure)
            for k in yes.puts {
                if puts.contains(k) || hitsDelete(k) { throw MVCCError.duplicateKey }
                puts.insert(k)
            }
            for k in no.puts {
                if (puts.contains(k) && !yes.puts.contains(k)) || hitsDelete(k) { throw MVCCError.duplicateKey }
                puts.insert(k)
            }
            dels += yes.dels + no.dels
        }
        for op in ops {
            guard case .put(let p) = op else { continue }
            if puts.contains(p.key) || hitsDelete(p.key) { throw MVCCError.duplicateKey }
            puts.insert(p.key)
        }
        return (puts, dels)
    }
}
