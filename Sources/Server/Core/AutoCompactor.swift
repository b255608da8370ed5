import EtcdConfig
import EtcdProto
import Foundation
import Logging
import Synchronization

/// The time source of the auto-compactor: real time in the server, a manual clock in tests
/// (so the schedule can be driven deterministically).
protocol CompactorClock: Sendable {
    /// The current instant.
    var now: ContinuousClock.Instant { get }
    /// Suspends for `duration` (throws on cancellation).
    func sleep(for duration: Duration) async throws
}

/// Real time.
struct SystemCompactorClock: CompactorClock {
    var now: ContinuousClock.Instant { .now }
    func sleep(for duration: Duration) async throws { try await Task.sleep(for: duration) }
}

/// What the auto-compactor reads and acts on (the server; a fake in tests).
protocol CompactionTarget: Sendable {
    /// Only the leader compacts; other members keep sampling revisions but propose nothing.
    var isLeader: Bool { get }
    /// The keyspace's current revision.
    var currentRevision: Int64 { get }
    /// Proposes a compaction at `revision` and waits for it to be applied.
    func compact(toRevision revision: Int64) async throws
}

/// etcd's auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`).
///
/// Periodic mode with retention R: the current revision is sampled every min(R, 1 h) / 10;
/// the first compaction comes once R has passed since start, to the revision sampled R ago;
/// afterwards one compaction every min(R, 1 h) (so hourly for R >= 1 h, always keeping a window
/// of R). A failed compaction is retried at the next sample. As in etcd 3.6, a compaction to the
/// revision last compacted to is skipped (no proposal); like etcd 3.4 and 3.6 the first one on a
/// store without writes compacts to its revision 1.
///
/// Revision mode with retention N: every 5 minutes, compact to `current - N` unless that is
/// not positive or was the last revision compacted to.
///
/// A compaction refused as already compacted counts as done (someone compacted further).
final class AutoCompactor: Sendable {
    /// etcd's interval in revision mode.
    static let defaultRevisionInterval: Duration = .seconds(300)

    let policy: AutoCompaction
    let clock: any CompactorClock
    let target: any CompactionTarget
    let logger: Logger
    let revisionInterval: Duration
    /// Called after each completed compaction (metrics).
    let onCompacted: @Sendable (Int64) -> Void
    private let done = Atomic<Int>(0)

    /// Compactions completed so far.
    var completed: Int { done.load(ordering: .relaxed) }

    init(policy: AutoCompaction, clock: any CompactorClock = SystemCompactorClock(), target: any CompactionTarget,
         logger: Logger, revisionInterval: Duration = AutoCompactor.defaultRevisionInterval,
         onCompacted: @escaping @Sendable (Int64) -> Void = { _ in }) {
        self.policy = policy
        self.clock = clock
        self.target = target
        self.logger = logger
        self.revisionInterval = revisionInterval
        self.onCompacted = onCompacted
    }

    /// Periodic mode: the interval between samples (and between retries).
    static func sampleInterval(_ retention: Duration) -> Duration { min(retention, .seconds(3600)) / 10 }

    /// Periodic mode: the interval between compactions after the first.
    static func compactInterval(_ retention: Duration) -> Duration { min(retention, .seconds(3600)) }

    /// Periodic mode: samples kept, so the oldest is one retention old.
    static func samplesKept(_ retention: Duration) -> Int {
        Int((retention / sampleInterval(retention)).rounded(.down)) + 1
    }

    /// Runs until the task is cancelled.
    func run() async {
        switch policy {
        case .disabled: return
        case .periodic(let retention): await runPeriodic(retention)
        case .revision(let keep): await runRevision(keep)
        }
    }

    private func runPeriodic(_ retention: Duration) async {
        let sample = Self.sampleInterval(retention)
        let kept = Self.samplesKept(retention)
        var revisions: [Int64] = []
        var lastSuccess = clock.now
        var wait = retention
        var previous: Int64 = 0
        while !Task.isCancelled {
            revisions.append(target.currentRevision)
            if revisions.count > kept { revisions.removeFirst(revisions.count - kept) }
            do { try await clock.sleep(for: sample) } catch { return }
            guard target.isLeader, clock.now - lastSuccess >= wait, let revision = revisions.first else { continue }
            // etcd 3.6: nothing is proposed while the revision to compact to is the one this
            // compactor last compacted to (a store without writes); checked again each sample.
            guard revision != previous else { continue }
            wait = Self.compactInterval(retention)
            let metadata: Logger.Metadata = ["revision": "\(revision)", "compact-period": "\(retention)"]
            logger.info("starting auto periodic compaction", metadata: metadata)
            let started = clock.now
            if await compact(revision, metadata: metadata, retry: sample, mode: "periodic") {
                previous = revision
                lastSuccess = clock.now
                logger.info("completed auto periodic compaction",
                            metadata: metadata.merging(["took": "\(clock.now - started)"]) { a, _ in a })
            }
        }
    }

    private func runRevision(_ keep: Int64) async {
        var previous: Int64 = 0
        while !Task.isCancelled {
            do { try await clock.sleep(for: revisionInterval) } catch { return }
            guard target.isLeader else { continue }
            let revision = target.currentRevision - keep
            guard revision > 0, revision != previous else { continue }
            let metadata: Logger.Metadata = ["revision": "\(revision)", "revision-compaction-retention": "\(keep)"]
            logger.info("starting auto revision compaction", metadata: metadata)
            let started = clock.now
            if await compact(revision, metadata: metadata, retry: revisionInterval, mode: "revision") {
                previous = revision
                logger.info("completed auto revision compaction",
                            metadata: metadata.merging(["took": "\(clock.now - started)"]) { a, _ in a })
            }
        }
    }

    /// One compaction; true when done (or already done by someone else).
    private func compact(_ revision: Int64, metadata: Logger.Metadata, retry: Duration, mode: String) async -> Bool {
        do {
            try await target.compact(toRevision: revision)
        } catch let e as EtcdError where e == .compacted {
            return true
        } catch {
            logger.warning("failed auto \(mode) compaction",
                           metadata: metadata.merging(["retry-interval": "\(retry)", "error": "\(error)"]) { a, _ in a })
            return false
        }
        done.add(1, ordering: .relaxed)
        onCompacted(revision)
        return true
    }
}

extension EtcdServer: CompactionTarget {
    func compact(toRevision revision: Int64) async throws {
        var c = Etcdserverpb_CompactionRequest()
        c.revision = revision
        do { _ = try await compact(c) } catch { throw EtcdError.from(error) }
    }

    /// Starts the auto-compactor for `policy` (no-op when disabled); it stops with the server.
    func startAutoCompaction(_ policy: AutoCompaction) {
        guard policy != .disabled else { return }
        let described: (mode: String, retention: String)
        switch policy {
        case .periodic(let d): described = ("periodic", "\(d)")
        case .revision(let n): described = ("revision", "\(n)")
        case .disabled: return
        }
        logger.info("enabled auto compaction", metadata: [
            "compact-mode": "\(described.mode)", "compact-retention": "\(described.retention)",
        ])
        let compactor = AutoCompactor(policy: policy, target: self, logger: logger) { [metrics] _ in
            metrics.autoCompacted()
        }
        let task = Task { await compactor.run() }
        backgroundTasks.withLock { $0.append(task) }
    }
}
