// raft-bench: committed proposals per second on a 3-node in-memory Raft group.
//
// Usage: swift run -c release raft-bench [proposals]
// All three nodes run in this process; messages are delivered synchronously and every Ready is
// persisted to a MemoryStorage, so the figure measures the consensus core alone.
import Foundation
import Raft

final class Group {
    var nodes: [UInt64: RaftNode] = [:]
    var storages: [UInt64: MemoryStorage] = [:]
    var applied: UInt64 = 0
    var compactEvery: UInt64 = 10_000

    init(size: UInt64) throws {
        let cs = ConfState(voters: Array(1...size))
        for id in 1...size {
            let s = MemoryStorage()
            try s.applySnapshot(Snapshot(metadata: SnapshotMetadata(index: 0, term: 0, confState: cs)))
            var c = RaftConfig(id: id)
            c.seed = id
            c.maxSizePerMsg = 1 << 20
            c.maxInflightMsgs = 256
            storages[id] = s
            nodes[id] = try RaftNode(config: c, storage: s)
        }
    }

    /// Handles Readys and delivers messages until the group is quiet.
    func settle() throws {
        var pending: [Message] = []
        repeat {
            for m in pending { try nodes[m.to]?.step(m) }
            pending = []
            for id in nodes.keys.sorted() {
                guard let n = nodes[id], n.hasReady else { continue }
                let rd = try n.ready()
                let s = storages[id]!
                try s.append(rd.entries)
                if let hs = rd.hardState { s.setHardState(hs) }
                pending += rd.messages
                if let last = rd.committedEntries.last {
                    if id == 1 { applied = last.index }
                    // Keep memory bounded on long runs.
                    if last.index % compactEvery == 0 {
                        try s.createSnapshot(index: last.index, confState: n.status.confState, data: [])
                        try s.compact(last.index)
                    }
                }
                try n.advance(rd)
            }
        } while !pending.isEmpty
    }
}

func run(total: Int, batch: Int) throws -> Double {
    let g = try Group(size: 3)
    try g.nodes[1]!.campaign()
    try g.settle()
    let leader = g.nodes[1]!
    precondition(leader.softState.role == .leader, "node 1 did not win the election")
    let payload = [UInt8](repeating: 0xAB, count: 128)
    let start = ContinuousClock.now
    var proposed = 0
    let base = g.applied
    while proposed < total {
        for _ in 0..<batch { try leader.propose(payload) }
        proposed += batch
        try g.settle()
        // A heartbeat round delivers the final commit index to followers.
        try leader.tick()
        try g.settle()
    }
    let elapsed = ContinuousClock.now - start
    let committed = Double(g.applied - base)
    guard committed >= Double(total) else { fatalError("only \(committed) of \(total) committed") }
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return committed / seconds
}

let total = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 100_000 : 100_000
print("raft-bench: 3 voters in one process, 128-byte proposals, \(total) proposals per run")
for batch in [1, 64] {
    var best = 0.0
    for _ in 0..<3 { best = max(best, try run(total: total - total % batch, batch: batch)) }
    print(String(format: "batch %3d: %10.0f committed proposals/s (best of 3)", batch, best))
}
