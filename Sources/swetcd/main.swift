// swetcd: an etcd-compatible server. Reads etcd's flags, ETCD_* variables or --config-file,
// serves etcd's v3 gRPC API on the client URLs and stops gracefully on SIGTERM/SIGINT.
import Dispatch
import EtcdConfig
import Foundation
import Logging
import Server

// Map only code that runs, from here on (docs/SERVER.md, "Memory").
CodePages.trim()

let swetcdVersion = "3.5.0-swetcd"

/// The process's exit codes (for systemd's `RestartPreventExitStatus=` and operators).
enum ExitCode {
    /// A configuration or start-up error: restarting will not help.
    static let config: Int32 = 1
    /// The member stopped on an unrecoverable runtime error (storage failure): a restart may help.
    static let fatal: Int32 = 2
    /// The member was removed from its cluster (now, or before this start): never restart it.
    static let removed: Int32 = 3
}

func fail(_ message: String, code: Int32 = ExitCode.config) -> Never {
    FileHandle.standardError.write(Data("swetcd: \(message)\n".utf8))
    exit(code)
}

let outcome: LoadOutcome
do {
    outcome = try ConfigLoader.load(arguments: Array(CommandLine.arguments.dropFirst()),
                                    environment: ProcessInfo.processInfo.environment)
} catch {
    fail("\(error)\nRun 'swetcd --help' for the list of flags.")
}

// Everything swetcd creates (data and WAL directories, snapshot and backend copies, logs)
// is private to its user: files 0600, directories 0700, whatever mode a library asks for.
umask(0o077)

let loaded: LoadedConfig
switch outcome {
case .help(let text):
    print(text)
    exit(0)
case .version:
    print("swetcd Version: \(swetcdVersion)\nAPI Version: 3.5")
    exit(0)
case .run(let l):
    loaded = l
}

guard let level = Logger.Level(etcdName: loaded.config.logLevel) else {
    fail("invalid --log-level \"\(loaded.config.logLevel)\" (debug, info, warn, error, panic or fatal)")
}
do {
    JSONLogHandler.bootstrap(level: level, sinks: try LogSink.forEtcdOutputs(loaded.config.logOutputs))
} catch {
    fail("\(error)")
}
let logger = Logger(label: "")
for w in loaded.warnings { logger.warning("\(w)") }

// Signals are delivered to dispatch sources (off the main actor), not the default handler.
nonisolated func watchSignals(_ signals: [Int32]) -> (AsyncStream<Int32>, [any DispatchSourceSignal]) {
    let (stream, continuation) = AsyncStream<Int32>.makeStream()
    var sources: [any DispatchSourceSignal] = []
    for sig in signals {
        signal(sig, SIG_IGN)
        let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        src.setEventHandler { @Sendable in continuation.yield(sig) }
        src.resume()
        sources.append(src)
    }
    return (stream, sources)
}
let (signals, signalSources) = watchSignals([SIGTERM, SIGINT])

// The configuration is read: its code will not run again.
CodePages.trim()

// systemd (Type=notify): status while recovering, start-timeout extensions while recovery
// makes progress, READY=1 once clients are served, WATCHDOG=1 while the Raft loop makes
// progress, STOPPING=1 on shutdown.
let systemd = SystemdSession()
systemd.starting(dataDir: loaded.config.effectiveDataDir)

let server: EtcdServer
do {
    server = try await EtcdServer.start(loaded, logger: logger, progress: systemd.progress)
} catch {
    logger.critical("failed to start", metadata: ["error": "\(error)"])
    fail("\(error)", code: (error as? ServerStartError)?.memberRemoved == true ? ExitCode.removed : ExitCode.config)
}
// The member is up: the code that opened its storage and joined the cluster is done.
CodePages.trim()
let listener: ClientListener
do {
    listener = try ClientListener(server: server, logger: logger)
} catch {
    await server.stop()
    fail("\(error)")
}

let serving = Task { try await listener.serve() }
systemd.serve(server: server, listener: listener)
// Start-up is over: drop the code pages it mapped, and from now on map only code that runs
// (docs/SERVER.md, "Memory").
CodePages.trim()
let stopOnSignal = Task {
    for await sig in signals {
        logger.info("received signal; shutting down", metadata: ["signal": "\(sig)"])
        systemd.stopping()
        // End the streams (watch, keep-alive), then stop accepting and let calls finish.
        server.closing.fire()
        listener.stop()
        return
    }
}
// A member removed from the cluster stops (it logged why when it applied its removal).
let stopOnRemoval = Task {
    await server.removal.wait()
    server.closing.fire()
    listener.stop()
}
// A member whose Raft loop failed (a WAL or backend write or fsync error, a broken invariant)
// stops serving at once and exits non-zero, as etcd does, so a supervisor restarts it and no
// client reads from a member that no longer follows the log.
let stopOnFatal = Task {
    await server.fatal.wait()
    if Task.isCancelled { return }
    logger.critical("stopping: the member cannot go on", metadata: ["error": "\(server.fatalReason ?? "unknown")"])
    systemd.stopping()
    server.closing.fire()
    listener.stop()
}
var exitCode: Int32 = 0
do {
    try await serving.value
} catch {
    logger.critical("serving clients failed", metadata: ["error": "\(error)"])
    exitCode = 1
}
stopOnSignal.cancel()
stopOnRemoval.cancel()
stopOnFatal.cancel()
if server.fatal.isFired { exitCode = ExitCode.fatal }
if server.removal.isFired { exitCode = ExitCode.removed }
systemd.stopping()
await server.stop()
systemd.finish()
exit(exitCode)
