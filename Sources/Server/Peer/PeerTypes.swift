// The seam between the peer transport and the server core: what the transport hands to
// Raft, and where the backend bytes of an outgoing snapshot come from.

import Foundation
import Raft
import Synchronization

/// Receives what the peer transport delivers. Calls come from NIO and Swift concurrency
/// threads, possibly concurrently, and also synchronously from inside
/// ``PeerTransport/send(_:)`` (drop reports): an implementation only enqueues and returns.
public protocol RaftTransportDelegate: AnyObject, Sendable {
    /// Raft messages from peers (never snapshots), in the order each peer sent them.
    func transportReceived(_ messages: [Raft.Message])
    /// A snapshot message whose backend copy is stored, size- and SHA-256-checked, at
    /// `backendFile` (`<snapshotDirectory>/<index:016x>.snap.db`).
    func transportReceivedSnapshot(_ message: Raft.Message, backendFile: String)
    /// Messages to `peer` were dropped (queue full or peer down): Raft should probe it.
    func transportReportUnreachable(_ peer: UInt64)
    /// Outcome of sending a snapshot to `peer`.
    func transportReportSnapshot(_ peer: UInt64, success: Bool)
    /// `peer` refused this member because it was removed from the cluster.
    func transportRefusedAsRemoved(by peer: UInt64)
    /// Why a snapshot body that `from` announces at `index` must not be received (Raft
    /// would ignore it: not from this member's leader, or not ahead of its commit index), or
    /// nil to receive it.
    func transportSnapshotRefusal(from: UInt64, index: UInt64) -> String?
}

extension RaftTransportDelegate {
    public func transportRefusedAsRemoved(by peer: UInt64) {}
    public func transportSnapshotRefusal(from: UInt64, index: UInt64) -> String? { nil }
}

/// Where the body of an outgoing snapshot comes from (implemented by the core).
public protocol BackendSnapshotSource: Sendable {
    /// A consistent copy of the backend, opened for one transfer.
    func openBackendSnapshot() throws -> any BackendSnapshotReader
}

/// One consistent backend copy, read once from start to end by one transfer.
public protocol BackendSnapshotReader: Sendable {
    /// Exact length of the body in bytes.
    var size: UInt64 { get }
    /// SHA-256 of the body if the source already knows it; `nil` makes the transport hash
    /// the body first (spooling it to a temporary file in the snapshot directory).
    var sha256: [UInt8]? { get }
    /// The next bytes, at most `maxLength`; empty at the end.
    func read(upTo maxLength: Int) throws -> [UInt8]
    /// Releases the copy; called once when the transfer ends, successfully or not.
    func close()
}

/// A ``BackendSnapshotReader`` over a file.
public final class FileBackendSnapshotReader: BackendSnapshotReader {
    /// Path of the file being read.
    public let path: String
    /// The file's length when opened.
    public let size: UInt64
    /// The SHA-256 given at creation, if any.
    public let sha256: [UInt8]?
    private let removeOnClose: Bool
    private let handle: Mutex<FileHandle?>

    /// Opens `path`. With `removeOnClose` the file is deleted by ``close()``.
    public init(path: String, sha256: [UInt8]? = nil, removeOnClose: Bool = false) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw PeerTransportError.snapshotFile("cannot open \(path)")
        }
        let end = try handle.seekToEnd()
        try handle.seek(toOffset: 0)
        self.path = path
        self.size = end
        self.sha256 = sha256
        self.removeOnClose = removeOnClose
        self.handle = Mutex(handle)
    }

    /// The next bytes of the file, at most `maxLength`; empty at the end.
    public func read(upTo maxLength: Int) throws -> [UInt8] {
        try handle.withLock { handle in
            guard let handle else { throw PeerTransportError.snapshotFile("\(path) is closed") }
            return [UInt8](try handle.read(upToCount: maxLength) ?? Data())
        }
    }

    /// Closes the file (and deletes it if asked to); later reads throw.
    public func close() {
        let open = handle.withLock { handle in
            defer { handle = nil }
            return handle
        }
        guard let open else { return }
        try? open.close()
        if removeOnClose { try? FileManager.default.removeItem(atPath: path) }
    }

    deinit { close() }
}

/// Errors of the peer transport and peer server.
public enum PeerTransportError: Error, Equatable, CustomStringConvertible {
    /// The remote member refused this member (other cluster, other member ID, version).
    case refused(String)
    /// A peer URL this transport cannot use.
    case unsupportedURL(String)
    /// A snapshot body could not be read or written.
    case snapshotFile(String)
    /// A snapshot transfer failed (size or hash mismatch, refusal, stream error).
    case snapshotTransfer(String)

    /// A readable explanation.
    public var description: String {
        switch self {
        case .refused(let reason): return "peer refused: \(reason)"
        case .unsupportedURL(let reason): return "unsupported peer URL: \(reason)"
        case .snapshotFile(let reason): return "snapshot file: \(reason)"
        case .snapshotTransfer(let reason): return "snapshot transfer: \(reason)"
        }
    }
}

/// Member IDs are printed in hex, as etcd does.
func hexID(_ id: UInt64) -> String { String(id, radix: 16) }
