import Foundation
import Testing

/// Three `swetcd` members on loopback, bootstrapped with --initial-cluster.
@Suite("E2E three members", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2EClusterTests {
    @Test func replicateSurviveAMemberAndCatchUp() async throws {
        try await Member.withCluster(3) { ms in
            // The first write succeeds once a leader is elected.
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k0", "v0").status == 0
            }
            // Writes through a follower and linearizable reads on every member.
            #expect(try await ms[1].ctl("put", "k1", "v1").lines == ["OK"])
            for m in ms {
                #expect(try await m.ctl("get", "k", "--prefix").lines == ["k0", "v0", "k1", "v1"], "\(m.name)")
            }
            // A watch on one member sees a write made on another.
            let w = try ms[2].watch(["--prefix", "w"])
            try await E2E.waitUntil("watch on m3 sees a put on m1") {
                _ = try await ms[0].ctl("put", "w1", "x")
                return w.stdout.contains("PUT\nw1\nx")
            }
            w.signal(SIGTERM)

            // One member down (killed): the other two keep a quorum.
            try await ms[0].crash()
            try await E2E.waitUntil("writes with m1 down", limit: .seconds(20)) {
                try await ms[1].ctl("put", "k2", "v2").status == 0
            }
            #expect(try await ms[2].ctl("get", "k2").lines == ["k2", "v2"])
            // It restarts and catches up: a linearizable read on it sees the write it missed.
            try await ms[0].start()
            try await E2E.waitUntil("m1 caught up", limit: .seconds(20)) {
                try await ms[0].ctl("get", "k2").lines == ["k2", "v2"]
            }
            // A graceful stop of every member, then a full restart keeps everything. The
            // restart names a different --initial-cluster (each member alone): an existing data
            // directory ignores it and keeps the recorded membership.
            for m in ms { #expect(try await m.stop() == 0) }
            for m in ms {
                m.initialCluster = nil
                try await m.start()
            }
            try await E2E.waitUntil("cluster back", limit: .seconds(20)) {
                try await ms[2].ctl("get", "k", "--prefix", "--keys-only").lines == ["k0", "k1", "k2"]
            }
        }
    }
}

extension E2EClusterTests {
    /// kill -9 of the leader while writes go on: a new leader takes over, no acknowledged write
    /// is lost, and the old leader restarts and catches up.
    @Test func killTheLeaderUnderWrites() async throws {
        try await Member.withCluster(3) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "warm", "up").status == 0
            }
            let old = try await Member.agreedLeader(of: ms)
            let others = ms.filter { $0 !== old }
            // Writes through the followers; each acknowledged one must survive.
            var acked: [String] = []
            for i in 0..<10 where try await others[i % 2].ctl("put", "load\(i)", "v\(i)").status == 0 {
                acked.append("load\(i)")
            }
            try await old.crash()
            for i in 10..<30 {
                // Retried writes during the election: count only what was acknowledged.
                if try await others[i % 2].ctl("put", "load\(i)", "v\(i)").status == 0 { acked.append("load\(i)") }
            }
            #expect(acked.count >= 20, "\(acked.count) writes acknowledged")
            try await old.start()
            for m in ms {
                try await E2E.waitUntil("\(m.name) has every acknowledged write", limit: .seconds(20)) {
                    let keys = try await m.ctl("get", "load", "--prefix", "--keys-only").lines
                    return Set(acked).isSubset(of: Set(keys))
                }
            }
        }
    }
}
