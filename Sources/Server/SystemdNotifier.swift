import CSystemd
import Dispatch
import LMDBBackend
import Storage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Talks to systemd's notification socket (`Type=notify` units) through libsystemd.
///
/// When the process was not started by systemd (`NOTIFY_SOCKET` unset) every call is a no-op
/// that returns `false`. Messages are the documented `sd_notify(3)` assignments.
public struct SystemdNotifier: Sendable {
    /// True when `NOTIFY_SOCKET` was set when this notifier was created.
    public let isEnabled: Bool

    /// Reads `NOTIFY_SOCKET` from the environment (it is left in place).
    public init() {
        isEnabled = getenv("NOTIFY_SOCKET") != nil
    }

    /// The service manager's watchdog interval (`WatchdogSec=`) if the watchdog is enabled for
    /// this process, else nil. Send ``watchdog()`` at least every half of this interval.
    public var watchdogInterval: Duration? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(clamping: usec))
    }

    /// `READY=1`: startup finished, the server serves clients.
    @discardableResult public func ready(status: String? = nil) -> Bool {
        send(["READY=1"] + (status.map { ["STATUS=" + $0] } ?? []))
    }

    /// `STATUS=...`: a one-line status shown by `systemctl status`.
    @discardableResult public func status(_ text: String) -> Bool {
        send(["STATUS=" + text])
    }

    /// `STOPPING=1`: a graceful shutdown has begun.
    @discardableResult public func stopping() -> Bool {
        send(["STOPPING=1"])
    }

    /// `WATCHDOG=1`: the service is alive and making progress.
    @discardableResult public func watchdog() -> Bool {
        send(["WATCHDOG=1"])
    }

    /// `EXTEND_TIMEOUT_USEC=...`: ask for more time for the current start-up or shutdown step.
    @discardableResult public func extendTimeout(by duration: Duration) -> Bool {
        let (seconds, attoseconds) = duration.components
        let micros = max(0, seconds) &* 1_000_000 &+ max(0, attoseconds) / 1_000_000_000_000
        return send(["EXTEND_TIMEOUT_USEC=\(micros)"])
    }

    /// Sends several assignments in one datagram; returns true if systemd was notified.
    /// Newlines inside a value are replaced by spaces (one assignment per line).
    @discardableResult public func send(_ assignments: [String]) -> Bool {
        guard isEnabled, !assignments.isEmpty else { return false }
        let text = assignments.map { line in
            String(line.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
        }.joined(separator: "\n")
        return sd_notify(0, text) > 0
    }
}

// MARK: - Watchdog

/// Sends systemd's watchdog keep-alive (`WATCHDOG=1`) every `pingInterval`, but only while a
/// liveness probe shows progress: when the probed loop stalls (a disk write that never returns,
/// a deadlock) the pings stop and systemd restarts the service once `WatchdogSec=` passes.
public struct SystemdWatchdog: Sendable {
    /// Time between two checks (half the watchdog interval, as sd_watchdog_enabled(3) advises).
    public let pingInterval: Duration
    /// The longest quiet time (see `quietTime`) that still counts as alive.
    public let maxQuiet: Duration
    private let quietTime: @Sendable () -> Duration?
    private let ping: @Sendable () -> Void

    /// - Parameters:
    ///   - watchdogInterval: systemd's `WATCHDOG_USEC` (``SystemdNotifier/watchdogInterval``).
    ///   - maxQuiet: how long the probed loop may go without a pass before pings stop.
    ///   - quietTime: time since the probed loop last made progress; nil when it is not running.
    ///   - ping: sends one keep-alive.
    public init(watchdogInterval: Duration, maxQuiet: Duration,
                quietTime: @escaping @Sendable () -> Duration?, ping: @escaping @Sendable () -> Void) {
        pingInterval = watchdogInterval / 2
        self.maxQuiet = maxQuiet
        self.quietTime = quietTime
        self.ping = ping
    }

    /// The stall limit for a Raft loop with heartbeat `heartbeat`: half the watchdog interval,
    /// but at least five heartbeats (a healthy loop passes at least once per heartbeat).
    public static func raftStallLimit(watchdogInterval: Duration, heartbeat: Duration) -> Duration {
        max(watchdogInterval / 2, heartbeat * 5)
    }

    /// One check: pings if the loop passed within `maxQuiet`; returns whether it pinged.
    @discardableResult public func check() -> Bool {
        guard let quiet = quietTime(), quiet <= maxQuiet else { return false }
        ping()
        return true
    }

    /// Checks every `pingInterval` until the task is cancelled.
    public func run() async {
        while !Task.isCancelled {
            check()
            do { try await Task.sleep(for: pingInterval) } catch { return }
        }
    }
}

// MARK: - Start-up time

/// Asks systemd for more start-up time (`EXTEND_TIMEOUT_USEC=`) while the start makes progress:
/// every `checkInterval` it reads a progress counter and, only if the counter moved since the
/// last check, extends the start timeout to `extendBy` from now and sends a `STATUS=` line
/// saying what is being done. A start that stops moving (a stuck disk, a deadlock) sends
/// nothing more, so systemd's `TimeoutStartSec=` (or the last extension, whichever ends later)
/// still ends it.
public struct SystemdStartExtender: Sendable {
    /// Time between two looks at the counter.
    public let checkInterval: Duration
    /// How far past "now" each message pushes the start timeout (several check intervals, so
    /// that a slow single step, such as reading one 64 MiB WAL segment, is not cut short).
    public let extendBy: Duration
    private let progress: @Sendable () -> UInt64
    private let status: @Sendable () -> String
    private let send: @Sendable ([String]) -> Void
    private var last: UInt64

    /// The defaults: look every 250 ms, extend by 10 s.
    public static let defaultCheckInterval = Duration.milliseconds(250)
    public static let defaultExtension = Duration.seconds(10)

    /// - Parameters:
    ///   - progress: a counter that grows while the start makes progress (its current value is
    ///     the baseline: the first message needs a move after this call).
    ///   - status: the `STATUS=` text sent with each extension.
    ///   - send: sends one datagram's assignments (``SystemdNotifier/send(_:)``).
    public init(checkInterval: Duration = defaultCheckInterval, extendBy: Duration = defaultExtension,
                progress: @escaping @Sendable () -> UInt64, status: @escaping @Sendable () -> String,
                send: @escaping @Sendable ([String]) -> Void) {
        self.checkInterval = checkInterval
        self.extendBy = extendBy
        self.progress = progress
        self.status = status
        self.send = send
        last = progress()
    }

    /// One look at the counter; returns whether it moved (and an extension was sent).
    @discardableResult public mutating func check() -> Bool {
        let now = progress()
        guard now != last else { return false }
        last = now
        let (seconds, attoseconds) = extendBy.components
        let micros = max(0, seconds) &* 1_000_000 &+ max(0, attoseconds) / 1_000_000_000_000
        send(["EXTEND_TIMEOUT_USEC=\(micros)", "STATUS=" + status()])
        return true
    }

    /// Looks every `checkInterval` until the task is cancelled.
    public func run() async {
        var me = self
        while !Task.isCancelled {
            do { try await Task.sleep(for: checkInterval) } catch { return }
            me.check()
        }
    }
}

extension EtcdServer {
    /// Time since the Raft loop last finished a pass, or for which its apply thread has been
    /// busy with one batch or commit, whichever is longer; nil before the loop's first pass and
    /// after it exited. A healthy loop passes at least once per heartbeat interval, busy or
    /// idle; a pass stuck in a WAL fsync, or an apply or backend commit that does not finish,
    /// makes this grow.
    public var raftLoopQuietTime: Duration? {
        if raftLoop.hasExited { return nil }
        let last = raftLoop.lastPassNanos
        guard last > 0 else { return nil }
        let now = DispatchTime.now().uptimeNanoseconds
        var quiet = now > last ? now - last : 0
        let busy = raftLoop.applyBusySinceNanos
        if busy > 0, now > busy { quiet = max(quiet, now - busy) }
        return .nanoseconds(Int64(clamping: quiet))
    }

    /// The heartbeat interval (`--heartbeat-interval`).
    public var heartbeatInterval: Duration { .milliseconds(Int64(clamping: max(1, config.heartbeatIntervalMs))) }
}

// MARK: - The server's systemd session

/// Everything `swetcd` tells systemd over a run: `STATUS=` while it starts, `READY=1` once it
/// serves clients (a leader is known and the client listeners are bound, as etcd does), `STATUS=`
/// on each leader or term change, `WATCHDOG=1` tied to Raft loop liveness, `STOPPING=1` on
/// shutdown. Without `NOTIFY_SOCKET` it does nothing.
public final class SystemdSession: Sendable {
    /// The notifier in use.
    public let notifier: SystemdNotifier
    /// Start-up progress: pass it to ``EtcdServer/start(_:logger:progress:)``. While it moves
    /// (and later while committed entries are applied), the start timeout is extended.
    public let progress = StartupProgress()
    private let extenderTiming: (check: Duration, extendBy: Duration)
    private let tasks = Mutex<[Task<Void, Never>]>([])
    /// The start-timeout extender until READY=1, and its generation: an extender sends only
    /// while its generation is current, so none sends after it was replaced or stopped.
    private let extender = Mutex<(task: Task<Void, Never>?, generation: UInt64)>((nil, 0))
    private let stopSent = Atomic<Bool>(false)

    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment.
    public init(notifier: SystemdNotifier = SystemdNotifier(),
                extendCheckInterval: Duration = SystemdStartExtender.defaultCheckInterval,
                extendBy: Duration = SystemdStartExtender.defaultExtension) {
        self.notifier = notifier
        extenderTiming = (extendCheckInterval, extendBy)
    }

    /// Before the data directory is opened: a status line, start-timeout extensions while
    /// ``progress`` moves and, if the watchdog is on, plain keep-alives (the Raft loop does not
    /// run yet) until ``serve(server:listener:)``.
    public func starting(dataDir: String) {
        guard notifier.isEnabled else { return }
        notifier.status("recovering data in \(dataDir)")
        let progress = progress
        let timing = extenderTiming
        setExtender { send in
            SystemdStartExtender(checkInterval: timing.check, extendBy: timing.extendBy,
                                 progress: { progress.count }, status: { progress.description }, send: send)
        }
        if let interval = notifier.watchdogInterval {
            let notifier = notifier
            let dog = SystemdWatchdog(watchdogInterval: interval, maxQuiet: .zero,
                                      quietTime: { .zero }, ping: { notifier.watchdog() })
            add(Task { await dog.run() })
        }
    }

    /// Once the server started and its listener serves: hands the watchdog to the Raft loop,
    /// waits for a leader and the bound listeners, sends READY=1, then reports leader changes.
    public func serve(server: EtcdServer, listener: ClientListener) {
        guard notifier.isEnabled else { return }
        cancelAll()
        let notifier = notifier
        if let interval = notifier.watchdogInterval {
            let dog = SystemdWatchdog(
                watchdogInterval: interval,
                maxQuiet: SystemdWatchdog.raftStallLimit(watchdogInterval: interval, heartbeat: server.heartbeatInterval),
                quietTime: { server.raftLoopQuietTime },
                ping: { notifier.watchdog() })
            add(Task { await dog.run() })
        }
        // Until READY=1 the Raft loop applies the committed entries the backend does not have
        // yet (a long replay after a crash): that is progress too.
        let progress = progress
        let timing = extenderTiming
        setExtender { send in
            SystemdStartExtender(
                checkInterval: timing.check, extendBy: timing.extendBy,
                progress: { progress.count &+ server.appliedIndex },
                status: { "applying committed entries: \(server.appliedIndex) of \(server.committedIndex); waiting for a leader" },
                send: send)
        }
        add(Task { [self] in
            notifier.status("waiting for a leader")
            // Returns once every client listener is bound.
            do { _ = try await listener.boundAddresses() } catch { return }
            let addresses = server.config.listenClientURLs.map(\.description)
            while server.leaderID == 0 {
                do { try await Task.sleep(for: .milliseconds(20)) } catch { return }
            }
            if stopSent.load(ordering: .relaxed) { return }   // no READY=1 after STOPPING=1
            setExtender(nil)
            var shown = (leader: server.leaderID, term: server.term)
            notifier.ready(status: Self.statusLine(leader: shown.leader, term: shown.term, addresses: addresses))
            // Leader changes until the stop begins (then "stopping" stays the status).
            while !Task.isCancelled {
                do { try await Task.sleep(for: .milliseconds(200)) } catch { return }
                if stopSent.load(ordering: .relaxed) { return }
                let now = (leader: server.leaderID, term: server.term)
                if now != shown {
                    shown = now
                    notifier.status(Self.statusLine(leader: now.leader, term: now.term, addresses: addresses))
                }
            }
        })
    }

    /// A graceful stop has begun: `STOPPING=1` and a status line (sent once). The watchdog keeps
    /// pinging while the Raft loop still runs (a leader hands over leadership first).
    public func stopping() {
        guard notifier.isEnabled, !stopSent.exchange(true, ordering: .relaxed) else { return }
        setExtender(nil)
        notifier.send(["STOPPING=1", "STATUS=stopping"])
    }

    /// Ends the session's background tasks (watchdog and status).
    public func finish() {
        setExtender(nil)
        cancelAll()
    }

    static func statusLine(leader: UInt64, term: UInt64, addresses: [String]) -> String {
        let who = leader == 0 ? "no leader" : "leader \(String(leader, radix: 16))"
        let serving = addresses.isEmpty ? "serving clients" : "serving clients on \(addresses.joined(separator: ", "))"
        return "\(serving); \(who), term \(term)"
    }

    private func add(_ task: Task<Void, Never>) { tasks.withLock { $0.append(task) } }

    /// Replaces the running start-timeout extender (nil: stops it). Once this returns, the
    /// previous one sends nothing more.
    private func setExtender(_ make: ((_ send: @escaping @Sendable ([String]) -> Void) -> SystemdStartExtender)?) {
        let previous = extender.withLock { state in
            let old = state.task
            state.generation &+= 1
            state.task = nil
            if let make {
                let mine = state.generation
                let notifier = notifier
                let e = make { [self] assignments in
                    extender.withLock { if $0.generation == mine { notifier.send(assignments) } }
                }
                state.task = Task { await e.run() }
            }
            return old
        }
        previous?.cancel()
    }

    private func cancelAll() {
        for t in tasks.withLock({ t in defer { t.removeAll() }; return t }) { t.cancel() }
    }
}
