import Foundation
import Raft
import Synchronization
import Testing

/// Leases under the fault schedule of `E2EFaultTests`. Three leases, each with one key:
/// - `kept` (TTL 8 s), renewed with `etcdctl lease keep-alive --once` through a random member
///   about twice a second throughout, while its key is read linearizably;
/// - `dropped` (TTL 4 s), renewed for the first few rounds and then left to expire;
/// - `revoked` (TTL 60 s), revoked part-way through.
/// Checks: no read saw `kept`'s key absent while a renewal that succeeded proves the lease
/// alive (the read ended before that renewal's start plus the TTL, or before a later renewal),
/// and if no gap between renewals reached the TTL the key is on every member at the end;
/// `dropped`'s key is gone on every member within TTL + election timeout once the cluster is
/// healed; no read after an acknowledged revoke saw `revoked`'s key, and it is gone on every
/// member.
final class FaultLeases: @unchecked Sendable {
    static let keptTTL: UInt64 = 8
    static let droppedTTL: UInt64 = 4
    /// Rounds of the loop in which `dropped` is still renewed.
    static let droppedRounds = 6
    /// The round in which `revoked` is revoked.
    static let revokeRound = 10

    struct Read { let start: UInt64; let end: UInt64; let present: Bool; let node: Int }

    let kept: String
    let dropped: String
    let revoked: String
    /// Start times (run clock, ns) of the grant and every successful renewal of `kept`.
    let keptRenewals = Mutex<[UInt64]>([])
    let keptReads = Mutex<[Read]>([])
    let droppedRenewals = Mutex<Int>(0)
    /// End of the acknowledged revoke of `revoked` (or of the attempt told it was already gone).
    let revokedAt = Mutex<UInt64?>(nil)
    let revokedReads = Mutex<[Read]>([])

    /// Grants the leases and puts their keys, through `node`.
    init(node: NetnsCluster.Node, run: FaultRun) async throws {
        func grant(_ ttl: UInt64) async throws -> String {
            let out = try await node.ctl(["lease", "grant", "\(ttl)"])
            let words = out.stdout.split(separator: " ")
            guard out.status == 0, words.count > 1, words[0] == "lease" else { throw E2EError("lease grant: \(out)") }
            return String(words[1])
        }
        let start = run.now()
        kept = try await grant(Self.keptTTL)
        dropped = try await grant(Self.droppedTTL)
        revoked = try await grant(60)
        keptRenewals.withLock { $0.append(start) }
        for (key, lease) in [("l/kept", kept), ("l/dropped", dropped), ("l/revoked", revoked)] {
            let out = try await node.ctl(["put", "--lease=\(lease)", key, "x"])
            guard out.status == 0 else { throw E2EError("put \(key): \(out)") }
        }
    }

    /// Short calls: a member cut off must not hold the loop past a TTL.
    private static func call(_ node: NetnsCluster.Node, _ args: [String]) async throws -> CommandOutput {
        try await node.ctl(["--command-timeout=2s", "--dial-timeout=2s"] + args, limit: 6)
    }

    /// Renews, reads and revokes until the run stops.
    func drive(seed: UInt64, nodes: [NetnsCluster.Node], run: FaultRun) async throws {
        var rng = SplitMix64(seed: seed ^ 0x1EA5E)
        var round = 0
        while !run.stop.load(ordering: .relaxed) {
            round += 1
            func pick() -> NetnsCluster.Node {
                let up = nodes.filter { n in !run.down.withLock { $0.contains(n.index) } }
                return up.isEmpty ? nodes[0] : up[Int(rng.next() % UInt64(up.count))]
            }
            let start = run.now()
            if try await Self.call(pick(), ["lease", "keep-alive", "--once", kept]).status == 0 {
                keptRenewals.withLock { $0.append(start) }
            }
            if round <= Self.droppedRounds,
               try await Self.call(pick(), ["lease", "keep-alive", "--once", dropped]).status == 0 {
                droppedRenewals.withLock { $0 += 1 }
            }
            if let r = try await read(pick(), "l/kept", run: run) { keptReads.withLock { $0.append(r) } }
            if round >= Self.revokeRound, revokedAt.withLock({ $0 }) == nil {
                let out = try await Self.call(pick(), ["lease", "revoke", revoked])
                if out.status == 0 || out.stderr.contains("requested lease not found") {
                    let end = run.now()
                    revokedAt.withLock { $0 = end }
                }
            }
            if revokedAt.withLock({ $0 }) != nil, let r = try await read(pick(), "l/revoked", run: run) {
                revokedReads.withLock { $0.append(r) }
            }
            // Pace: about two rounds a second, so the clients' load stays the main one.
            try await Task.sleep(for: .milliseconds(300))
        }
    }

    /// A linearizable read of `key`: nil when unanswered.
    private func read(_ node: NetnsCluster.Node, _ key: String, run: FaultRun) async throws -> Read? {
        let start = run.now()
        let out = try await Self.call(node, ["get", key, "--print-value-only"])
        guard out.status == 0 else { return nil }
        return Read(start: start, end: run.now(), present: !out.lines.isEmpty, node: node.index)
    }

    /// The checks, once the cluster is healed and has a leader (`healed`: run time then).
    func check(cluster: NetnsCluster, run: FaultRun, healed: UInt64, electionTimeout: UInt64) async throws {
        let ttl = Self.keptTTL * 1_000_000_000
        var renewals = keptRenewals.withLock { $0 }
        let reads = keptReads.withLock { $0 }
        print("faults: leases: kept renewed \(renewals.count - 1) times, read \(reads.count) times; dropped renewed \(droppedRenewals.withLock { $0 }) times; revoked: \(revokedAt.withLock { $0 } != nil)")
        #expect(renewals.count > 3, "the kept lease was hardly ever renewed")
        #expect(droppedRenewals.withLock { $0 } > 0, "the dropped lease was never renewed")
        #expect(revokedAt.withLock { $0 } != nil, "the revoke was never answered")
        // 1. Kept: absent only where no renewal proves the lease alive.
        for r in reads where !r.present {
            if let proof = renewals.first(where: { $0 + ttl > r.end }) {
                Issue.record("l/kept absent in a read on n\(r.node) ending at \(r.end) ns, though a renewal starting at \(proof) ns keeps its lease (TTL \(Self.keptTTL) s) alive until after it")
            }
        }
        // Still alive at the end when every gap between renewals stayed under the TTL.
        let endStart = run.now()
        let lastRenewal = try await Self.call(try await cluster.leader(), ["lease", "keep-alive", "--once", kept])
        renewals.append(endStart)
        let maxGap = zip(renewals, renewals.dropFirst()).map { $1 - $0 }.max() ?? 0
        print("faults: leases: longest gap between renewals of the kept lease \(maxGap / 1_000_000) ms")
        if maxGap + 1_000_000_000 < ttl {
            #expect(lastRenewal.status == 0, "the kept lease was lost though renewed every \(maxGap / 1_000_000) ms at most: \(lastRenewal)")
            for n in cluster.nodes {
                let out = try await n.ctl(["get", "l/kept", "--consistency=s", "--print-value-only"])
                #expect(out.lines == ["x"], "n\(n.index) lost l/kept: \(out)")
            }
        }
        // 2. Dropped: gone on every member within TTL + election timeout of a leader existing.
        let bound = Duration.seconds(Int64(Self.droppedTTL)) + .milliseconds(Int64(electionTimeout)) + .seconds(3)
        let sinceHealed = Duration.nanoseconds(Int64(run.now() - healed))
        try await E2E.waitUntil("l/dropped gone on every member", limit: max(.seconds(1), bound - sinceHealed)) {
            for n in cluster.nodes {
                let out = try await n.ctl(["get", "l/dropped", "--consistency=s", "--print-value-only"], limit: 5)
                if out.status != 0 || !out.lines.isEmpty { return false }
            }
            return true
        }
        // 3. Revoked: no read after the acknowledged revoke saw the key; gone on every member.
        if let at = revokedAt.withLock({ $0 }) {
            for r in revokedReads.withLock({ $0 }) where r.present && r.start > at {
                Issue.record("l/revoked present on n\(r.node) in a read starting at \(r.start) ns, after its lease was revoked at \(at) ns")
            }
        }
        try await E2E.waitUntil("l/revoked gone on every member", limit: .seconds(15)) {
            for n in cluster.nodes {
                let out = try await n.ctl(["get", "l/revoked", "--consistency=s", "--print-value-only"], limit: 5)
                if out.status != 0 || !out.lines.isEmpty { return false }
            }
            return true
        }
    }
}
