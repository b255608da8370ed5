import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where CPU-bound test bodies (the simulator's seeds) run: two threads of their own at a low
/// priority, not the cooperative pool.
///
/// All test targets share one process, and Swift's cooperative pool has one thread per core.
/// Seeds run synchronously would hold both threads for half a minute on a two-core machine,
/// so every async test (servers, gRPC clients, peer transports) waits that long for a thread
/// and its bounded waits expire: a three-member election on loopback timed out that way in
/// CI. Here the seeds yield the CPU to everything else and still use it when it is idle.
final class BackgroundExecutor: TaskExecutor, @unchecked Sendable {
    static let shared = BackgroundExecutor(threads: 2, niceness: 10)

    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []

    init(threads: Int, niceness: Int32) {
        for i in 0..<threads {
            let thread = Thread { [self] in
                #if canImport(Glibc)
                // On Linux the nice value belongs to a thread: "process" 0 is the calling one.
                _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, niceness)
                #endif
                work()
            }
            thread.name = "test-background-\(i)"
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.withLock {
            jobs.append(job)
            condition.signal()
        }
    }

    private func work() {
        while true {
            let job = condition.withLock {
                while jobs.isEmpty { condition.wait() }
                return jobs.removeFirst()
            }
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}

/// Runs `body` on the background threads; the test's task (and so `#expect` and
/// `Issue.record`) stays the same.
func inBackground<T: Sendable>(_ body: () throws -> T) async rethrows -> T {
    try await withTaskExecutorPreference(BackgroundExecutor.shared) { try body() }
}
