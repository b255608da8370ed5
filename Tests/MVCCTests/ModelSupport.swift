import Raft
import Foundation
@testable import MVCC


/// Seeds for randomized tests: `MVCC_MODEL_SEEDS` (count) and `MVCC_MODEL_SEED` (first).
func modelSeeds(default count: Int) -> [UInt64] {
    let env = ProcessInfo.processInfo.environment
    let n = env["MVCC_MODEL_SEEDS"].flatMap(Int.init) ?? count
    let first = env["MVCC_MODEL_SEED"].flatMap(UInt64.init) ?? 1
    return (0..<UInt64(n)).map { first + $0 }
}

func modelSteps(default n: Int) -> Int {
    ProcessInfo.processInfo.environment["MVCC_MODEL_STEPS"].flatMap(Int.init) ?? n
}

func lexLess(_ a: [UInt8], _ b: [UInt8]) -> Bool { a.lexicographicallyPrecedes(b) }

/// The reference: the whole history as a list of (revision, state change) per key, with
/// every rule written the plain way. Compaction only records the revision (reads below it
/// fail); it never changes what a read at or above it returns.
final class Model {
    var rev: Int64 = 1   // an empty store is at revision 1, as etcd's
    var compactRev: Int64 = -1
    /// Per key, its versions in revision order; nil marks a delete.
    var log: [[UInt8]: [(rev: Int64, kv: KeyValue?)]] = [:]
    var events: [Event] = []

    func state(at r: Int64) -> [[UInt8]: KeyValue] {
        var out: [[UInt8]: KeyValue] = [:]
        for (k, entries) in log {
            if let last = entries.last(where: { $0.rev <= r }), let kv = last.kv { out[k] = kv }
        }
        return out
    }

    static func inRange(_ k: [UInt8], _ key: [UInt8], _ end: [UInt8]) -> Bool {
        if end.isEmpty { return k == key }
        if end == [0] { return !lexLess(k, key) }
        return !lexLess(k, key) && lexLess(k, end)
    }

    func checkRev(_ r: Int64, readRev: Int64) throws -> Int64 {
        if r > readRev { throw MVCCError.futureRevision }
        let at = r <= 0 ? readRev : r
        if at < compactRev { throw MVCCError.compacted }
        return at
    }

    static func range(_ state: [[UInt8]: KeyValue], _ req: RangeRequest, header: Int64) -> RangeResponse {
        var kvs = state.values.filter { inRange($0.key, req.key, req.rangeEnd) }.sorted { lexLess($0.key, $1.key) }
        let count = Int64(kvs.count)
        if req.countOnly { return RangeResponse(revision: header, kvs: [], more: false, count: count) }
        kvs = kvs.filter { kv in
            (req.minModRevision == 0 || kv.modRevision >= req.minModRevision)
                && (req.maxModRevision == 0 || kv.modRevision <= req.maxModRevision)
                && (req.minCreateRevision == 0 || kv.createRevision >= req.minCreateRevision)
                && (req.maxCreateRevision == 0 || kv.createRevision <= req.maxCreateRevision)
        }
        let desc = req.sortOrder == .descend
        if req.sortTarget != .key || desc {
            func key(_ kv: KeyValue) -> [Int64]? {
                switch req.sortTarget {
                case .version: [kv.version]
                case .create: [kv.createRevision]
                case .mod: [kv.modRevision]
                case .key, .value: nil
                }
            }
            kvs.sort { a, b in
                let bytesA = req.sortTarget == .value ? a.value : a.key
                let bytesB = req.sortTarget == .value ? b.value : b.key
                if let x = key(a), let y = key(b), x != y { return desc ? x[0] > y[0] : x[0] < y[0] }
                if key(a) == nil, bytesA != bytesB { return desc ? lexLess(bytesB, bytesA) : lexLess(bytesA, bytesB) }
                return lexLess(a.key, b.key)
            }
        }
        var more = false
        if req.limit > 0 && kvs.count > Int(req.limit) { kvs = Array(kvs.prefix(Int(req.limit))); more = true }
        if req.keysOnly { kvs = kvs.map { var c = $0; c.value = []; return c } }
        return RangeResponse(revision: header, kvs: kvs, more: more, count: count)
    }

    func range(_ req: RangeRequest) throws -> RangeResponse {
        let at = try checkRev(req.revision, readRev: rev)
        return Model.range(state(at: at), req, header: rev)
    }

    /// One write in progress.
    struct Work {
        var cur: [[UInt8]: KeyValue]
        let newRev: Int64
        var changes: [Event] = []
    }

    func put(_ p: PutRequest, _ w: inout Work) -> PutResponse {
        let prev = w.cur[p.key]
        var kv = KeyValue(key: p.key, createRevision: prev?.createRevision ?? w.newRev, modRevision: w.newRev,
                          version: (prev?.version ?? 0) + 1, value: p.value, lease: p.lease)
        if p.ignoreValue { kv.value = prev?.value ?? [] }
        if p.ignoreLease { kv.lease = prev?.lease ?? 0 }
        w.cur[p.key] = kv
        w.changes.append(Event(type: .put, kv: kv))
        return PutResponse(revision: 0, prevKv: p.prevKv ? prev : nil)
    }

    func delete(_ d: DeleteRangeRequest, _ w: inout Work) -> DeleteRangeResponse {
        let victims = w.cur.values.filter { Model.inRange($0.key, d.key, d.rangeEnd) }.sorted { lexLess($0.key, $1.key) }
        for v in victims {
            w.cur[v.key] = nil
            w.changes.append(Event(type: .delete, kv: KeyValue(key: v.key, modRevision: w.newRev)))
        }
        return DeleteRangeResponse(revision: 0, deleted: Int64(victims.count), prevKvs: d.prevKv ? victims : [])
    }

    func commit(_ w: Work) -> Int64 {
        guard !w.changes.isEmpty else { return rev }
        rev = w.newRev
        for e in w.changes {
            log[e.kv.key, default: []].append((rev, e.type == .put ? e.kv : nil))
        }
        events += w.changes
        return rev
    }

    func put(_ p: PutRequest) throws -> PutResponse {
        if (p.ignoreValue || p.ignoreLease) && state(at: rev)[p.key] == nil { throw MVCCError.keyNotFound }
        var w = Work(cur: state(at: rev), newRev: rev + 1)
        var r = put(p, &w)
        r.revision = commit(w)
        return r
    }

    func deleteRange(_ d: DeleteRangeRequest) -> DeleteRangeResponse {
        var w = Work(cur: state(at: rev), newRev: rev + 1)
        var r = delete(d, &w)
        r.revision = commit(w)
        return r
    }

    static func holds(_ c: Compare, _ st: [[UInt8]: KeyValue]) -> Bool {
        let kvs = st.values.filter { inRange($0.key, c.key, c.rangeEnd) }
        func test(_ kv: KeyValue) -> Bool {
            let o: Int
            func cmp<T: Comparable>(_ a: T, _ b: T) -> Int { a < b ? -1 : (a == b ? 0 : 1) }
            switch c.target {
            case .value(let v): o = kv.value == v ? 0 : (lexLess(kv.value, v) ? -1 : 1)
            case .version(let v): o = cmp(kv.version, v)
            case .create(let v): o = cmp(kv.createRevision, v)
            case .mod(let v): o = cmp(kv.modRevision, v)
            case .lease(let v): o = cmp(kv.lease, v)
            }
            switch c.result {
            case .equal: return o == 0
            case .notEqual: return o != 0
            case .less: return o < 0
            case .greater: return o > 0
            }
        }
        if kvs.isEmpty {
            if case .value = c.target { return false }
            return test(KeyValue(key: c.key))
        }
        return kvs.allSatisfy(test)
    }

    /// Txns from the generator never break the duplicate-key rule and read only at revision 0.
    func txn(_ t: TxnRequest) throws -> TxnResponse {
        let start = state(at: rev)
        var w = Work(cur: start, newRev: rev + 1)
        func run(_ t: TxnRequest) throws -> TxnResponse {
            let ok = t.compare.allSatisfy { Model.holds($0, start) }
            var out: [ResponseOp] = []
            let branch = ok ? t.success : t.failure
            // Checks first (ignore flags need the key at the start).
            for op in branch {
                if case .put(let p) = op, (p.ignoreValue || p.ignoreLease), start[p.key] == nil {
                    throw MVCCError.keyNotFound
                }
            }
            for op in branch {
                switch op {
                case .range(let r): out.append(.range(Model.range(w.cur, r, header: 0)))
                case .put(let p): out.append(.put(put(p, &w)))
                case .deleteRange(let d): out.append(.deleteRange(delete(d, &w)))
                case .txn(let inner): out.append(.txn(try run(inner)))
                }
            }
            return TxnResponse(revision: 0, succeeded: ok, responses: out)
        }
        var resp = try run(t)
        let r = commit(w)
        MVCCStore.setRevision(&resp, r)
        return resp
    }

    func compact(_ r: Int64) throws {
        if r <= compactRev { throw MVCCError.compacted }
        if r > rev { throw MVCCError.futureRevision }
        compactRev = r
    }
}

/// The operations the randomized tests draw.
enum ModelOp: CustomStringConvertible {
    case put(PutRequest), delete(DeleteRangeRequest), txn(TxnRequest), range(RangeRequest), compact(Int64)
    var description: String {
        switch self {
        case .put(let p): "put \(s(p.key))"
        case .delete(let d): "delete \(s(d.key))..\(s(d.rangeEnd))"
        case .txn: "txn"
        case .range(let r): "range \(s(r.key))..\(s(r.rangeEnd))@\(r.revision)"
        case .compact(let r): "compact \(r)"
        }
    }
}

struct OpGenerator {
    var rng: SplitMix64
    let keys = ["a", "ab", "abc", "b", "ba", "c", "d", "e", "f/1", "f/2", "f/3"]

    mutating func key() -> [UInt8] { b(keys.randomElement(using: &rng)!) }
    mutating func value() -> [UInt8] { b(String(Int.random(in: 0..<50, using: &rng))) }
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }

    mutating func rangeEnd(for k: [UInt8]) -> [UInt8] {
        switch Int.random(in: 0..<4, using: &rng) {
        case 0: return []
        case 1: return [0]
        case 2: return k + [0xFF]
        default: return key()
        }
    }

    mutating func put(existing: Bool) -> PutRequest {
        var p = PutRequest(key: key(), value: value(), lease: Int64.random(in: 0...2, using: &rng), prevKv: chance(0.5))
        if existing && chance(0.1) { p.ignoreValue = true; p.value = [] }
        if existing && chance(0.1) { p.ignoreLease = true; p.lease = 0 }
        return p
    }

    mutating func rangeRequest(model: Model, inTxn: Bool = false) -> RangeRequest {
        let k = key()
        var r = RangeRequest(key: k, rangeEnd: rangeEnd(for: k))
        if !inTxn {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0: r.revision = model.rev + Int64.random(in: 1...3, using: &rng)
            case 1: r.revision = Int64.random(in: 0...max(0, model.compactRev), using: &rng)
            case 2...5: r.revision = Int64.random(in: max(1, model.compactRev)...max(1, model.rev), using: &rng)
            default: r.revision = 0
            }
        }
        if chance(0.3) { r.limit = Int64.random(in: 1...4, using: &rng) }
        if chance(0.3) {
            r.sortTarget = [.key, .version, .create, .mod, .value].randomElement(using: &rng)!
            r.sortOrder = [.none, .ascend, .descend].randomElement(using: &rng)!
        }
        if chance(0.1) { r.countOnly = true }
        if chance(0.1) { r.keysOnly = true }
        if chance(0.1) { r.minModRevision = Int64.random(in: 0...max(0, model.rev), using: &rng) }
        if chance(0.1) { r.maxModRevision = Int64.random(in: 0...max(0, model.rev), using: &rng) }
        if chance(0.1) { r.minCreateRevision = Int64.random(in: 0...max(0, model.rev), using: &rng) }
        if chance(0.1) { r.maxCreateRevision = Int64.random(in: 0...max(0, model.rev), using: &rng) }
        return r
    }

    mutating func compare(model: Model) -> Compare {
        let k = key()
        let end: [UInt8] = chance(0.2) ? rangeEnd(for: k) : []
        let n = Int64.random(in: 0...max(1, model.rev), using: &rng)
        let target: Compare.Target
        switch Int.random(in: 0..<5, using: &rng) {
        case 0: target = .value(value())
        case 1: target = .version(Int64.random(in: 0...3, using: &rng))
        case 2: target = .create(n)
        case 3: target = .mod(n)
        default: target = .lease(Int64.random(in: 0...2, using: &rng))
        }
        return Compare(key: k, rangeEnd: end, target: target,
                       result: [.equal, .notEqual, .less, .greater].randomElement(using: &rng)!)
    }

    /// A branch whose writes touch distinct single keys (so the duplicate-key rule holds).
    mutating func branch(model: Model, used: inout Set<[UInt8]>, depth: Int) -> [RequestOp] {
        var ops: [RequestOp] = []
        for _ in 0..<Int.random(in: 0...3, using: &rng) {
            switch Int.random(in: 0..<4, using: &rng) {
            case 0:
                var p = put(existing: false)
                if used.contains(p.key) { continue }
                p.ignoreValue = false
                p.ignoreLease = false
                used.insert(p.key)
                ops.append(.put(p))
            case 1:
                let k = key()
                if used.contains(k) { continue }
                used.insert(k)
                ops.append(.deleteRange(DeleteRangeRequest(key: k, prevKv: chance(0.5))))
            case 2:
                ops.append(.range(rangeRequest(model: model, inTxn: true)))
            default:
                if depth < 2 { ops.append(.txn(txn(model: model, used: &used, depth: depth + 1))) }
            }
        }
        return ops
    }

    mutating func txn(model: Model, used: inout Set<[UInt8]>, depth: Int) -> TxnRequest {
        let cmps = (0..<Int.random(in: 0...2, using: &rng)).map { _ in compare(model: model) }
        // Both branches draw from one `used` set: stricter than etcd needs, always valid.
        return TxnRequest(compare: cmps, success: branch(model: model, used: &used, depth: depth),
                          failure: branch(model: model, used: &used, depth: depth))
    }

    mutating func next(model: Model, compactWeight: Double = 0.03) -> ModelOp {
        if chance(compactWeight), model.rev > 0 {
            return .compact(Int64.random(in: max(0, model.compactRev - 1)...model.rev, using: &rng))
        }
        switch Int.random(in: 0..<10, using: &rng) {
        case 0...3: return .put(put(existing: true))
        case 4: 
            let k = key()
            return .delete(DeleteRangeRequest(key: k, rangeEnd: chance(0.5) ? rangeEnd(for: k) : [], prevKv: chance(0.5)))
        case 5, 6:
            var used = Set<[UInt8]>()
            return .txn(txn(model: model, used: &used, depth: 0))
        default: return .range(rangeRequest(model: model))
        }
    }
}

/// Applies `op` to both and returns a description of any difference (nil when equal).
func applyBoth(_ op: ModelOp, store: MVCCStore, model: Model) -> String? {
    func same<T: Equatable>(_ a: () throws -> T, _ m: () throws -> T) -> String? {
        let got = Result { try a() }
        let want = Result { try m() }
        switch (got, want) {
        case (.success(let x), .success(let y)): return x == y ? nil : "store \(x)\nmodel \(y)"
        case (.failure(let x), .failure(let y)):
            return "\(x)" == "\(y)" ? nil : "store error \(x), model error \(y)"
        case (.success(let x), .failure(let y)): return "store \(x), model error \(y)"
        case (.failure(let x), .success(let y)): return "store error \(x), model \(y)"
        }
    }
    switch op {
    case .put(let p): return same({ try store.put(p) }, { try model.put(p) })
    case .delete(let d): return same({ try store.deleteRange(d) }, { model.deleteRange(d) })
    case .txn(let t): return same({ try store.txn(t) }, { try model.txn(t) })
    case .range(let r): return same({ try store.range(r) }, { try model.range(r) })
    case .compact(let r):
        return same({ try store.compact(r); return store.compactRevision }, { try model.compact(r); return model.compactRev })
    }
}
