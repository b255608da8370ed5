import Synchronization
import Testing
@testable import Server

/// The watchdog pings only while its liveness probe shows a recent pass.
struct SystemdWatchdogTests {
    /// A probe whose answer the test sets, and a ping counter.
    final class Probe: Sendable {
        let quiet = Mutex<Duration?>(.zero)
        let pings = Atomic<Int>(0)
    }

    private func watchdog(_ probe: Probe, interval: Duration = .seconds(2), maxQuiet: Duration = .seconds(1)) -> SystemdWatchdog {
        SystemdWatchdog(watchdogInterval: interval, maxQuiet: maxQuiet,
                        quietTime: { probe.quiet.withLock { $0 } },
                        ping: { probe.pings.add(1, ordering: .relaxed) })
    }

    @Test func pingsAtHalfTheInterval() {
        #expect(watchdog(Probe(), interval: .seconds(30)).pingInterval == .seconds(15))
        #expect(watchdog(Probe(), interval: .milliseconds(500)).pingInterval == .milliseconds(250))
    }

    @Test func pingsOnlyWhileTheLoopPasses() {
        let probe = Probe()
        let dog = watchdog(probe)
        #expect(dog.check())
        probe.quiet.withLock { $0 = .milliseconds(999) }
        #expect(dog.check())
        probe.quiet.withLock { $0 = .seconds(1) }
        #expect(dog.check())
        // Stalled: the loop has not passed for longer than the limit.
        probe.quiet.withLock { $0 = .milliseconds(1001) }
        #expect(!dog.check())
        probe.quiet.withLock { $0 = .seconds(60) }
        #expect(!dog.check())
        // Not running (before the first pass, or exited).
        probe.quiet.withLock { $0 = nil }
        #expect(!dog.check())
        #expect(probe.pings.load(ordering: .relaxed) == 3)
        // Recovered.
        probe.quiet.withLock { $0 = .milliseconds(5) }
        #expect(dog.check())
        #expect(probe.pings.load(ordering: .relaxed) == 4)
    }

    @Test func stallLimitIsHalfTheIntervalOrFiveHeartbeats() {
        #expect(SystemdWatchdog.raftStallLimit(watchdogInterval: .seconds(30), heartbeat: .milliseconds(100)) == .seconds(15))
        #expect(SystemdWatchdog.raftStallLimit(watchdogInterval: .seconds(1), heartbeat: .milliseconds(300)) == .milliseconds(1500))
    }

    @Test func runPingsRepeatedlyUntilCancelled() async throws {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        let dog = SystemdWatchdog(watchdogInterval: .milliseconds(20), maxQuiet: .seconds(1),
                                  quietTime: { .zero }, ping: { continuation.yield() })
        let task = Task { await dog.run() }
        // Bounded: a timer ends the stream if three pings do not arrive in 10 s.
        let timeout = Task {
            try? await Task.sleep(for: .seconds(10))
            continuation.finish()
        }
        var seen = 0
        for await _ in stream {
            seen += 1
            if seen == 3 { break }
        }
        task.cancel()
        timeout.cancel()
        await task.value
        #expect(seen == 3)
    }

    @Test func statusLineNamesLeaderTermAndAddresses() {
        #expect(SystemdSession.statusLine(leader: 0x2a, term: 3, addresses: ["http://127.0.0.1:2379"])
                == "serving clients on http://127.0.0.1:2379; leader 2a, term 3")
        #expect(SystemdSession.statusLine(leader: 0, term: 4, addresses: []) == "serving clients; no leader, term 4")
    }
}

/// A real server's Raft loop reports its passes (the watchdog's liveness source).
@Suite struct RaftLoopLivenessTests {
    @Test func quietTimeIsSmallWhileRunningAndNilAfterStop() async throws {
        let fixture = CoreFixture()
        defer { fixture.remove() }
        let server = try await fixture.start()
        try await waitUntil { server.raftLoopQuietTime != nil }
        let quiet = try #require(server.raftLoopQuietTime)
        // The loop passes at least once per heartbeat; allow a generous margin for a busy machine.
        #expect(quiet < .seconds(5))
        await server.stop()
        #expect(server.raftLoopQuietTime == nil)
    }
}
