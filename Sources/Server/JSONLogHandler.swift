#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSystemd
public import Logging
import Synchronization

/// A destination for log lines: standard output, standard error, an append-only file, or the
/// systemd journal.
///
/// Each ``write(line:level:)`` is one `write(2)` loop under a lock (one journal entry), so lines
/// from concurrent loggers never interleave. Write errors are dropped: logging must never bring
/// the server down.
public final class LogSink: Sendable {
    private let descriptor: Int32
    private let ownsDescriptor: Bool
    /// Entries go to journald (`sd_journal_sendv`), not to `descriptor`.
    private let toJournal: Bool
    private let lock = Mutex<Void>(())

    /// The systemd journal (etcd's `--log-outputs systemd/journal`): one entry per record, the
    /// JSON line as `MESSAGE`, the level as syslog `PRIORITY`, `SYSLOG_IDENTIFIER=swetcd`.
    public static let journal = LogSink(journal: ())

    private init(journal: Void) {
        descriptor = -1
        ownsDescriptor = false
        toJournal = true
    }

    /// Where journald listens; without it, `systemd/journal` is refused at start.
    static let journalSocket = "/run/systemd/journal/socket"

    /// Standard output (etcd's `--log-outputs stdout`).
    public static let standardOutput = LogSink(descriptor: 1, ownsDescriptor: false)
    /// Standard error (etcd's `--log-outputs stderr`, also its `default`).
    public static let standardError = LogSink(descriptor: 2, ownsDescriptor: false)

    private init(descriptor: Int32, ownsDescriptor: Bool) {
        self.descriptor = descriptor
        self.ownsDescriptor = ownsDescriptor
        toJournal = false
    }

    /// Opens (creating it with mode 0600 if needed) a file for appending log lines.
    /// - Throws: ``LogSinkError`` when the file cannot be opened.
    public convenience init(appendingTo path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw LogSinkError(path: path, errno: errno)
        }
        self.init(descriptor: fd, ownsDescriptor: true)
    }

    deinit {
        if ownsDescriptor { close(descriptor) }
    }

    /// The sinks for etcd's `--log-outputs` values: `default` and `stderr` (standard error),
    /// `stdout`, or a file path (appended to). Duplicates are written once.
    /// - Throws: ``LogSinkError`` when a file cannot be opened.
    public static func forEtcdOutputs(_ outputs: [String]) throws -> [LogSink] {
        var sinks: [LogSink] = []
        var seen: Set<String> = []
        for output in outputs {
            let key = output == "default" ? "stderr" : output
            guard seen.insert(key).inserted else { continue }
            switch key {
            case "stderr": sinks.append(.standardError)
            case "stdout": sinks.append(.standardOutput)
            case "systemd/journal":
                guard access(journalSocket, F_OK) == 0 else { throw LogSinkError(journalMissing: journalSocket) }
                sinks.append(.journal)
            default: sinks.append(try LogSink(appendingTo: output))
            }
        }
        return sinks
    }

    /// Writes one complete line (the caller includes the trailing newline); `level` sets the
    /// journal entry's priority.
    public func write(line: [UInt8], level: Logger.Level = .info) {
        if toJournal { return sendToJournal(line: line, level: level) }
        lock.withLock { _ in
            line.withUnsafeBytes { raw in
                guard var base = raw.baseAddress else { return }
                var left = raw.count
                while left > 0 {
                    let n = Glibc.write(descriptor, base, left)
                    if n < 0 {
                        if errno == EINTR { continue }
                        return
                    }
                    left -= n
                    base += n
                }
            }
        }
    }
}

extension LogSink {
    /// syslog priorities (journald's PRIORITY field) for swift-log levels.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    private func sendToJournal(line: [UInt8], level: Logger.Level) {
        var message = Array("MESSAGE=".utf8) + line
        if message.last == UInt8(ascii: "\n") { message.removeLast() }
        let priority = Array("PRIORITY=\(Self.priority(level))".utf8)
        let identifier = Array("SYSLOG_IDENTIFIER=swetcd".utf8)
        message.withUnsafeBytes { m in
            priority.withUnsafeBytes { p in
                identifier.withUnsafeBytes { i in
                    var fields = [m, p, i].map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
                    _ = sd_journal_sendv(&fields, Int32(fields.count))
                }
            }
        }
    }
}

/// A log output could not be opened.
public struct LogSinkError: Error, CustomStringConvertible {
    /// The path that failed.
    public let path: String
    /// The `errno` of the failed `open(2)`.
    public let errno: Int32
    private var journalMissing = false

    init(path: String, errno: Int32) {
        self.path = path
        self.errno = errno
    }

    init(journalMissing socket: String) {
        path = socket
        errno = ENOENT
        journalMissing = true
    }

    public var description: String {
        if journalMissing {
            return "cannot use --log-outputs systemd/journal: journald is not running (no \(path))"
        }
        return "cannot open log output \(path): \(String(cString: strerror(errno)))"
    }
}

/// A swift-log handler that writes one JSON object per line, in the shape of etcd's zap logger:
/// `{"level":"info","ts":"2026-11-21T21:00:00.000000Z","caller":"Server/File.swift:12","msg":"...","key":"value"}`.
///
/// Levels map to zap's names (`trace`/`debug` → `debug`, `info`/`notice` → `info`, `warning` →
/// `warn`, `error` → `error`, `critical` → `fatal`). Metadata from the handler, its metadata
/// provider and the call site (later ones win) follow `msg`, sorted by key; a key that collides
/// with one of the fixed fields is written with a `meta.` prefix. An error attached to the event
/// is written as `"error":"..."`. Integers, floating-point numbers and booleans given as
/// `.stringConvertible` metadata are written as JSON numbers/booleans.
public struct JSONLogHandler: LogHandler {
    /// The logger's label, written as `"logger"` when not empty.
    public let label: String
    /// Where lines go; every line is written to each sink.
    public let sinks: [LogSink]
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    /// Creates a handler.
    /// - Parameters:
    ///   - label: The logger label (omitted from lines when empty).
    ///   - level: Messages below this level are dropped.
    ///   - sinks: The outputs.
    ///   - metadataProvider: Optional contextual metadata.
    public init(
        label: String,
        level: Logger.Level = .info,
        sinks: [LogSink] = [.standardError],
        metadataProvider: Logger.MetadataProvider? = nil
    ) {
        self.label = label
        self.logLevel = level
        self.sinks = sinks
        self.metadataProvider = metadataProvider
    }

    /// Installs this handler as the process-wide swift-log backend. Call once, early.
    public static func bootstrap(
        level: Logger.Level,
        sinks: [LogSink] = [.standardError],
        metadataProvider: Logger.MetadataProvider? = nil
    ) {
        LoggingSystem.bootstrap(
            { label, provider in
                JSONLogHandler(label: label, level: level, sinks: sinks, metadataProvider: provider)
            },
            metadataProvider: metadataProvider
        )
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() {
            merged.merge(provided) { _, new in new }
        }
        if let callSite = event.metadata {
            merged.merge(callSite) { _, new in new }
        }
        let line = JSONLogFormat.line(
            level: event.level,
            timestamp: JSONLogFormat.now(),
            caller: JSONLogFormat.caller(file: event.file, line: event.line),
            logger: label,
            message: event.message.description,
            error: event.error.map { String(describing: $0) },
            metadata: merged
        )
        for sink in sinks { sink.write(line: line, level: event.level) }
    }
}

extension Logger.Level {
    /// Parses etcd's `--log-level` values (`debug`, `info`, `warn`, `error`, `panic`, `fatal`);
    /// also accepts swift-log's own names. Returns nil for anything else.
    public init?(etcdName: String) {
        switch etcdName.lowercased() {
        case "trace": self = .trace
        case "debug": self = .debug
        case "info": self = .info
        case "notice": self = .notice
        case "warn", "warning": self = .warning
        case "error": self = .error
        case "dpanic", "panic", "fatal", "critical": self = .critical
        default: return nil
        }
    }

    /// The zap level name etcd writes for this level.
    var zapName: String {
        switch self {
        case .trace, .debug: return "debug"
        case .info, .notice: return "info"
        case .warning: return "warn"
        case .error: return "error"
        case .critical: return "fatal"
        }
    }
}

/// The line format, separated from the handler so tests can feed fixed timestamps.
enum JSONLogFormat {
    static let reservedKeys: Set<String> = ["level", "ts", "caller", "msg", "logger", "error"]

    /// `Module/File.swift:line` from a `#fileID` (or the last two components of a path).
    static func caller(file: String, line: UInt) -> String {
        let parts = file.split(separator: "/", omittingEmptySubsequences: true)
        let short = parts.suffix(2).joined(separator: "/")
        return "\(short):\(line)"
    }

    /// The current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    static func now() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return timestamp(seconds: Int(spec.tv_sec), microseconds: Int(spec.tv_nsec) / 1000)
    }

    static func timestamp(seconds: Int, microseconds: Int) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        var out = ""
        out.reserveCapacity(27)
        func pad(_ value: Int, _ width: Int) {
            let digits = String(value)
            if digits.count < width {
                out.append(String(repeating: "0", count: width - digits.count))
            }
            out.append(digits)
        }
        pad(Int(parts.tm_year) + 1900, 4); out.append("-")
        pad(Int(parts.tm_mon) + 1, 2); out.append("-")
        pad(Int(parts.tm_mday), 2); out.append("T")
        pad(Int(parts.tm_hour), 2); out.append(":")
        pad(Int(parts.tm_min), 2); out.append(":")
        pad(Int(parts.tm_sec), 2); out.append(".")
        pad(microseconds, 6); out.append("Z")
        return out
    }

    static func line(
        level: Logger.Level,
        timestamp: String,
        caller: String,
        logger: String,
        message: String,
        error: String?,
        metadata: Logger.Metadata
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128 + message.utf8.count)
        out.append(contentsOf: #"{"level":"#.utf8)
        appendString(level.zapName, to: &out)
        out.append(contentsOf: #","ts":"#.utf8)
        appendString(timestamp, to: &out)
        out.append(contentsOf: #","caller":"#.utf8)
        appendString(caller, to: &out)
        if !logger.isEmpty {
            out.append(contentsOf: #","logger":"#.utf8)
            appendString(logger, to: &out)
        }
        out.append(contentsOf: #","msg":"#.utf8)
        appendString(message, to: &out)
        if let error {
            out.append(contentsOf: #","error":"#.utf8)
            appendString(error, to: &out)
        }
        for key in metadata.keys.sorted() {
            guard let value = metadata[key] else { continue }
            out.append(UInt8(ascii: ","))
            appendString(reservedKeys.contains(key) ? "meta." + key : key, to: &out)
            out.append(UInt8(ascii: ":"))
            appendValue(value, to: &out)
        }
        out.append(contentsOf: "}\n".utf8)
        return out
    }

    static func appendValue(_ value: Logger.MetadataValue, to out: inout [UInt8]) {
        switch value {
        case .string(let s):
            appendString(s, to: &out)
        case .stringConvertible(let c):
            switch c {
            case let b as Bool:
                out.append(contentsOf: (b ? "true" : "false").utf8)
            case is Int, is Int8, is Int16, is Int32, is Int64,
                is UInt, is UInt8, is UInt16, is UInt32, is UInt64:
                out.append(contentsOf: c.description.utf8)
            case let d as Double where d.isFinite:
                out.append(contentsOf: d.description.utf8)
            case let f as Float where f.isFinite:
                out.append(contentsOf: f.description.utf8)
            default:
                appendString(c.description, to: &out)
            }
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                appendValue(item, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .dictionary(let dict):
            out.append(UInt8(ascii: "{"))
            for (i, key) in dict.keys.sorted().enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                appendString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                if let item = dict[key] { appendValue(item, to: &out) }
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static let hex = Array("0123456789abcdef".utf8)

    /// Appends `s` as a JSON string literal: quotes, backslashes and control characters are
    /// escaped; everything else is written as UTF-8.
    static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): out.append(contentsOf: #"\\"#.utf8)
            case 0x0A: out.append(contentsOf: #"\n"#.utf8)
            case 0x0D: out.append(contentsOf: #"\r"#.utf8)
            case 0x09: out.append(contentsOf: #"\t"#.utf8)
            case 0x00..<0x20, 0x7F:
                out.append(contentsOf: #"\u00"#.utf8)
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0F)])
            default:
                out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
