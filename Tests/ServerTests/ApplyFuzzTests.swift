import EtcdProto
import Foundation
import Raft
import Testing
@testable import Server

/// Seeded random requests with extreme values, through the real log and apply path of an
/// in-process member: whatever a committed entry holds, applying it succeeds or answers that
/// request with an error, the member stays up, and a restart replays the log without stopping.
/// A trap anywhere on the way kills the test process, which fails the run.
///
/// `APPLY_FUZZ_SEEDS` (3), `APPLY_FUZZ_STEPS` (250) lengthen the run; `APPLY_FUZZ_SEED` replays one.
@Suite("Apply: fuzzed requests never stop a member", .serialized)
struct ApplyFuzzTests {
    static var seeds: [UInt64] {
        let env = ProcessInfo.processInfo.environment
        if let one = env["APPLY_FUZZ_SEED"].flatMap(UInt64.init) { return [one] }
        let n = env["APPLY_FUZZ_SEEDS"].flatMap(UInt64.init) ?? 3
        return Array(1...max(n, 1))
    }
    static var steps: Int { ProcessInfo.processInfo.environment["APPLY_FUZZ_STEPS"].flatMap(Int.init) ?? 250 }

    @Test func internalRequestsThroughTheLog() async throws {
        for seed in Self.seeds {
            let f = CoreFixture()
            defer { f.remove() }
            var gen = FuzzGen(seed: seed)
            var s = try await f.start()
            for step in 0..<Self.steps {
                var req = gen.internalRequest()
                // The proposer sets the header id; whatever else is in the request is kept.
                req.header = Swetcd_Internal_RequestHeader()
                _ = try? await s.propose(req)
                #expect(!s.fatal.isFired, "seed \(seed) step \(step): the member stopped: \(s.fatalReason ?? "")\n  request: \(req)\n  replay: APPLY_FUZZ_SEED=\(seed)")
                if s.fatal.isFired { break }
            }
            // Every entry was applied (or answered with an error) and the member moved past it.
            let canary = try await s.put(putRequest("canary", "\(seed)"))
            #expect(canary.header.revision > 1 && s.appliedIndex > UInt64(Self.steps))
            await s.stop()
            // Restart: everything after the backend's consistent index is applied again.
            s = try await f.start()
            let r = try await s.range(rangeRequest("canary"))
            #expect(r.kvs.first?.value == Data("\(seed)".utf8), "seed \(seed): canary lost over a restart")
            #expect(!s.fatal.isFired)
            await s.stop()
        }
    }

    @Test func clientRequestsThroughTheAPI() async throws {
        for seed in Self.seeds {
            let f = CoreFixture()
            defer { f.remove() }
            var gen = FuzzGen(seed: seed &+ 1_000)
            let s = try await f.start()
            for step in 0..<Self.steps {
                switch gen.int(9) {
                case 0: _ = try? await s.put(gen.put())
                case 1: _ = try? await s.range(gen.range())
                case 2: _ = try? await s.deleteRange(gen.delete())
                case 3: _ = try? await s.txn(gen.txn(depth: 0))
                case 4:
                    var c = Etcdserverpb_CompactionRequest()
                    c.revision = gen.int64()
                    c.physical = gen.bool()
                    _ = try? await s.compact(c)
                case 5:
                    var g = Etcdserverpb_LeaseGrantRequest()
                    g.id = gen.int64()
                    g.ttl = gen.int64()
                    _ = try? await s.leaseGrant(g)
                case 6:
                    var r = Etcdserverpb_LeaseRevokeRequest()
                    r.id = gen.int64()
                    _ = try? await s.leaseRevoke(r)
                case 7: _ = try? await s.leaseRenew(gen.int64())
                default:
                    var t = Etcdserverpb_LeaseTimeToLiveRequest()
                    t.id = gen.int64()
                    t.keys = gen.bool()
                    _ = try? await s.leaseTimeToLive(t)
                }
                #expect(!s.fatal.isFired, "seed \(seed) step \(step): the member stopped: \(s.fatalReason ?? "")\n  replay: APPLY_FUZZ_SEED=\(seed)")
                if s.fatal.isFired { break }
            }
            _ = try await s.put(putRequest("canary", "ok"))
            await s.stop()
        }
    }

    /// The poison pill of issue 9: a limit of Int64.max, read alone and inside a write txn.
    @Test func rangeWithTheLargestLimit() async throws {
        let f = CoreFixture()
        defer { f.remove() }
        var s = try await f.start()
        for k in ["a", "b", "c"] { _ = try await s.put(putRequest(k, "v")) }
        var r = rangeRequest("a", end: "z")
        r.limit = .max
        let got = try await s.range(r)
        #expect(got.kvs.count == 3 && !got.more && got.count == 3)
        var t = Etcdserverpb_TxnRequest()
        var op = Etcdserverpb_RequestOp()
        op.requestRange = r
        var put = Etcdserverpb_RequestOp()
        put.requestPut = putRequest("d", "v")
        t.success = [op, put]
        let resp = try await s.txn(t)
        #expect(resp.succeeded && resp.responses.first?.responseRange.kvs.count == 3)
        await s.stop()
        s = try await f.start()
        #expect(try await s.range(rangeRequest("d")).kvs.count == 1)
        await s.stop()
    }
}

/// Random requests whose numbers favour the extremes.
struct FuzzGen {
    var rng: SplitMix64
    init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    mutating func int(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
    mutating func bool() -> Bool { rng.next() & 1 == 0 }

    mutating func int64() -> Int64 {
        switch int(12) {
        case 0: return .max
        case 1: return .min
        case 2: return 0
        case 3: return -1
        case 4: return 1
        case 5: return Int64(Int32.max)
        case 6: return Int64(Int32.min)
        case 7: return .max - 1
        case 8: return .min + 1
        case 9: return Int64(int(20))
        case 10: return Int64(bitPattern: rng.next())
        default: return 9_000_000_000 + Int64(int(3)) - 1
        }
    }

    /// Mostly the default (0), sometimes an extreme: so that one odd field at a time gets past
    /// the checks that a request with many odd fields would fail first.
    mutating func sparse() -> Int64 { int(4) == 0 ? int64() : 0 }

    mutating func bytes() -> Data {
        switch int(10) {
        case 0: return Data()
        case 1: return Data([0])
        case 2: return Data([0xFF, 0xFF])
        case 3: return Data(repeating: 0x61, count: 1 + int(3000))
        default: return Data("k\(int(6))".utf8)
        }
    }

    mutating func put() -> Etcdserverpb_PutRequest {
        var p = Etcdserverpb_PutRequest()
        p.key = bytes()
        p.value = bytes()
        p.lease = sparse()
        p.prevKv = bool()
        p.ignoreValue = int(4) == 0
        p.ignoreLease = int(4) == 0
        return p
    }

    mutating func range() -> Etcdserverpb_RangeRequest {
        var r = Etcdserverpb_RangeRequest()
        r.key = bytes()
        r.rangeEnd = bytes()
        r.limit = bool() ? int64() : 0
        r.revision = sparse()
        r.sortOrder = int(3) == 0 ? Etcdserverpb_RangeRequest.SortOrder(rawValue: int(5)) ?? .none : .none
        r.sortTarget = int(3) == 0 ? Etcdserverpb_RangeRequest.SortTarget(rawValue: int(7)) ?? .key : .key
        r.serializable = bool()
        r.keysOnly = int(4) == 0
        r.countOnly = int(4) == 0
        r.minModRevision = sparse()
        r.maxModRevision = sparse()
        r.minCreateRevision = sparse()
        r.maxCreateRevision = sparse()
        return r
    }

    mutating func delete() -> Etcdserverpb_DeleteRangeRequest {
        var d = Etcdserverpb_DeleteRangeRequest()
        d.key = bytes()
        d.rangeEnd = bytes()
        d.prevKv = bool()
        return d
    }

    mutating func compare() -> Etcdserverpb_Compare {
        var c = Etcdserverpb_Compare()
        c.key = bytes()
        c.rangeEnd = int(3) == 0 ? bytes() : Data()
        c.result = Etcdserverpb_Compare.CompareResult(rawValue: int(6)) ?? .equal
        c.target = Etcdserverpb_Compare.CompareTarget(rawValue: int(7)) ?? .version
        switch int(5) {
        case 0: c.version = int64()
        case 1: c.createRevision = int64()
        case 2: c.modRevision = int64()
        case 3: c.value = bytes()
        default: c.lease = int64()
        }
        return c
    }

    mutating func op(depth: Int) -> Etcdserverpb_RequestOp {
        var op = Etcdserverpb_RequestOp()
        switch int(depth < 4 ? 4 : 3) {
        case 0: op.requestRange = range()
        case 1: op.requestPut = put()
        case 2: op.requestDeleteRange = delete()
        default: op.requestTxn = txn(depth: depth + 1)
        }
        return op
    }

    mutating func txn(depth: Int) -> Etcdserverpb_TxnRequest {
        var t = Etcdserverpb_TxnRequest()
        t.compare = (0..<int(3)).map { _ in compare() }
        t.success = (0..<int(4)).map { _ in op(depth: depth) }
        t.failure = (0..<int(3)).map { _ in op(depth: depth) }
        return t
    }

    mutating func internalRequest() -> Swetcd_Internal_InternalRequest {
        var req = Swetcd_Internal_InternalRequest()
        switch int(10) {
        case 0: req.put = put()
        case 1: req.deleteRange = delete()
        case 2: req.txn = txn(depth: 0)
        case 3:
            var c = Etcdserverpb_CompactionRequest()
            c.revision = int64()
            c.physical = bool()
            req.compaction = c
        case 4:
            var g = Etcdserverpb_LeaseGrantRequest()
            g.id = int64()
            g.ttl = int64()
            req.leaseGrant = g
        case 5:
            var r = Etcdserverpb_LeaseRevokeRequest()
            r.id = int64()
            req.leaseRevoke = r
        case 6:
            var c = Etcdserverpb_LeaseCheckpointRequest()
            c.checkpoints = (0..<int(3)).map { _ in
                var cp = Etcdserverpb_LeaseCheckpoint()
                cp.id = int64()
                cp.remainingTtl = int64()
                return cp
            }
            req.leaseCheckpoint = c
        case 7:
            var a = Etcdserverpb_AlarmRequest()
            // ACTIVATE would (rightly) refuse later writes; GET and DEACTIVATE, and odd values.
            a.action = Etcdserverpb_AlarmRequest.AlarmAction(rawValue: [0, 2, 7][int(3)]) ?? .get
            a.memberID = UInt64(bitPattern: int64())
            a.alarm = Etcdserverpb_AlarmType(rawValue: int(5)) ?? .none
            req.alarm = a
        case 8:
            var m = Swetcd_Internal_MemberAttributes()
            m.memberID = UInt64(bitPattern: int64())
            m.name = String(decoding: bytes(), as: UTF8.self)
            m.clientUrls = [String(decoding: bytes(), as: UTF8.self)]
            req.memberAttributes = m
        default: req.noop = Swetcd_Internal_Noop()
        }
        return req
    }
}
