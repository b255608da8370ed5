import CSystemd
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
