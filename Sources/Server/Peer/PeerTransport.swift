// The peer transport: Raft messages between members over swetcd's peer protocol
// (Sources/EtcdProto/proto/peer.proto). One outgoing `Messages` stream per peer, kept
// open and re-dialled with capped exponential backoff; snapshots on their own call.

import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Raft
import Synchronization

/// Carries Raft messages to and from the other members.
///
/// The core adds the peers, calls ``send(_:)`` from its Raft loop (it never blocks), and
/// registers ``makeService()`` on the ``PeerServer`` listening on this member's peer URLs.
/// Inbound messages and outcomes reach the ``RaftTransportDelegate``.
public final class PeerTransport: Sendable {
    /// Tunables; the defaults suit production.
    public struct Options: Sendable {
        /// Messages queued per peer before new ones are dropped (and the peer reported).
        public var queueCapacity = 4096
        /// Encoded bytes per `MessageBatch` (a single larger message still goes alone).
        public var maxBatchBytes = 4 << 20
        /// First delay before re-dialling a peer; doubles on each failure.
        public var initialBackoff: Duration = .milliseconds(50)
        /// Longest delay between dial attempts.
        public var maxBackoff: Duration = .seconds(2)
        /// Bound on the handshake call.
        public var handshakeTimeout: Duration = .seconds(5)
        /// Body bytes per snapshot chunk.
        public var snapshotChunkSize = 512 << 10
        /// Client keepalive: ping an idle connection this often (the peer server allows it).
        public var keepaliveInterval: Duration = .seconds(10)
        /// Close a connection whose ping is not answered within this time.
        public var keepaliveTimeout: Duration = .seconds(10)
        /// Largest incoming snapshot body accepted (nil: no fixed cap). Whatever the cap, a
        /// body is refused when the snapshot directory's file system would keep less than
        /// `snapshotDiskMargin` free after it.
        public var maxSnapshotBytes: UInt64?
        /// Free space that must remain after an incoming snapshot body is stored.
        public var snapshotDiskMargin: UInt64 = 64 << 20

        /// The defaults.
        public init() {}
    }

    let localID: UInt64
    let clusterID: UInt64
    let snapshotDirectory: String
    let delegate: any RaftTransportDelegate
    let snapshots: any BackendSnapshotSource
    let logger: Logger
    let options: Options

    private struct State {
        var links: [UInt64: PeerLink] = [:]
        var removed: Set<UInt64> = []
        var receivingSnapshots: Set<UInt64> = []
        var started = false
        var stopped = false
    }

    private let state = Mutex(State())
    let stopSignal = StopSignal()
    /// Answers lease calls forwarded by followers (see PeerLease.swift).
    let leaseHandler = LeaseHandlerSlot()

    /// Creates a transport for member `localID` of cluster `clusterID`. Received snapshot
    /// bodies are stored in `snapshotDirectory` (created if missing).
    public init(localID: UInt64, clusterID: UInt64, snapshotDirectory: String,
                delegate: any RaftTransportDelegate, snapshots: any BackendSnapshotSource,
                logger: Logger, options: Options = Options()) {
        self.localID = localID
        self.clusterID = clusterID
        self.snapshotDirectory = snapshotDirectory
        self.delegate = delegate
        self.snapshots = snapshots
        var logger = logger
        logger[metadataKey: "local-member-id"] = "\(hexID(localID))"
        self.logger = logger
        self.options = options
    }

    /// Adds a peer reachable at `urls` (tried in turn). Replaces the URLs of a known peer.
    public func addPeer(_ id: UInt64, urls: [EndpointURL]) {
        guard id != localID else { return }
        let (link, isNew) = state.withLock { s -> (PeerLink?, Bool) in
            if let existing = s.links[id] { return (existing, false) }
            guard !s.stopped, !s.removed.contains(id) else { return (nil, false) }
            let link = PeerLink(id: id, urls: urls, transport: self)
            s.links[id] = link
            return (s.started ? link : nil, true)
        }
        if isNew {
            link?.start()
        } else {
            link?.update(urls: urls)
        }
    }

    /// Forgets a removed member: its stream is closed, messages to it are no longer sent and
    /// its calls are refused from now on.
    public func removePeer(_ id: UInt64) {
        let link = state.withLock { s in
            s.removed.insert(id)
            return s.links.removeValue(forKey: id)
        }
        link?.cancel()
    }

    /// Changes the URLs of a peer; a stream on a URL no longer listed is re-dialled.
    public func updatePeer(_ id: UInt64, urls: [EndpointURL]) {
        let link = state.withLock { $0.links[id] }
        link?.update(urls: urls)
    }

    /// Queues messages for their recipients without blocking. A snapshot message starts a
    /// snapshot transfer. Messages to an unknown, unreachable or overloaded peer are dropped
    /// and the peer is reported with `transportReportUnreachable`.
    public func send(_ messages: [Raft.Message]) {
        guard !messages.isEmpty else { return }
        var byPeer: [UInt64: [Raft.Message]] = [:]
        for message in messages where message.to != localID {
            if message.type == .snapshot {
                sendSnapshot(message)
            } else {
                byPeer[message.to, default: []].append(message)
            }
        }
        for (peer, batch) in byPeer {
            guard let link = state.withLock({ $0.stopped ? nil : $0.links[peer] }) else {
                logger.debug("dropped messages to unknown peer", metadata: ["remote-peer-id": "\(hexID(peer))"])
                continue
            }
            if link.queue.push(batch) > 0 {
                delegate.transportReportUnreachable(peer)
            }
        }
    }

    private func sendSnapshot(_ message: Raft.Message) {
        guard let link = state.withLock({ $0.stopped ? nil : $0.links[message.to] }) else {
            delegate.transportReportSnapshot(message.to, success: false)
            return
        }
        link.sendSnapshot(message)
    }

    /// Whether the outgoing stream to `peer` is up.
    public func isActive(_ peer: UInt64) -> Bool { activeSince(peer) != nil }

    /// When the current outgoing stream to `peer` came up; `nil` while it is down.
    public func activeSince(_ peer: UInt64) -> ContinuousClock.Instant? {
        state.withLock { $0.links[peer] }?.activeSince
    }

    /// The Peer service answering other members' calls; register it on the ``PeerServer``.
    public func makeService() -> some Swetcd_Peer_Peer.ServiceProtocol {
        PeerService(transport: self)
    }

    /// Starts dialling the peers. Partial snapshot files left in the snapshot directory by
    /// an earlier run are removed first.
    public func start() async {
        let links = state.withLock { s -> [PeerLink]? in
            guard !s.started, !s.stopped else { return nil }
            s.started = true
            return Array(s.links.values)
        }
        guard let links else { return }
        removePartialSnapshots()
        for link in links { link.start() }
    }

    private func removePartialSnapshots() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: snapshotDirectory)) ?? []
        for name in names where name.hasSuffix(".snap.db.tmp") || (name.hasPrefix("outgoing-") && name.hasSuffix(".tmp")) {
            do {
                try FileManager.default.removeItem(atPath: "\(snapshotDirectory)/\(name)")
                logger.info("removed a partial snapshot file", metadata: ["file": "\(name)"])
            } catch {
                logger.warning("cannot remove a partial snapshot file", metadata: ["file": "\(name)", "error": "\(error)"])
            }
        }
    }

    /// Closes every stream and transfer and waits for them to end. Inbound calls are
    /// refused from now on. Final: a stopped transport cannot be restarted.
    public func stop() async {
        let links = state.withLock { s -> [PeerLink] in
            s.stopped = true
            defer { s.links = [:] }
            return Array(s.links.values)
        }
        stopSignal.stop()
        for link in links { link.cancel() }
        for link in links { await link.finished() }
    }

    var isStopped: Bool { state.withLock { $0.stopped } }

    /// The link to `peer`, if it is known.
    func link(_ peer: UInt64) -> PeerLink? { state.withLock { $0.links[peer] } }

    /// Marks a snapshot index as being received; false if it already is.
    func claimIncomingSnapshot(_ index: UInt64) -> Bool {
        state.withLock { $0.receivingSnapshots.insert(index).inserted }
    }

    func releaseIncomingSnapshot(_ index: UInt64) {
        _ = state.withLock { $0.receivingSnapshots.remove(index) }
    }

    /// Why a call from `from` naming `cluster` and receiver `to` is refused, or `nil`.
    func refusal(cluster: UInt64, from: UInt64, to: UInt64) -> String? {
        if cluster != clusterID {
            return "cluster ID mismatch: peer is in cluster \(hexID(cluster)), this member in \(hexID(clusterID))"
        }
        if to != localID {
            return "member ID mismatch: this member is \(hexID(localID)), not \(hexID(to))"
        }
        if state.withLock({ $0.removed.contains(from) }) {
            return Self.removedReason(from)
        }
        return nil
    }

    /// The refusal sent to a member removed from the cluster.
    static func removedReason(_ id: UInt64) -> String { "member \(hexID(id)) was removed from the cluster" }

    /// Encodes messages to `peer` into batches of at most `maxBatchBytes` each.
    func batches(_ messages: [Raft.Message], to peer: UInt64) -> [Swetcd_Peer_MessageBatch] {
        var out: [Swetcd_Peer_MessageBatch] = []
        var current = newBatch(to: peer)
        var bytes = 0
        for message in messages {
            let encoded = Data(message.encode())
            if !current.messages.isEmpty && bytes + encoded.count > options.maxBatchBytes {
                out.append(current)
                current = newBatch(to: peer)
                bytes = 0
            }
            current.messages.append(encoded)
            bytes += encoded.count
        }
        if !current.messages.isEmpty { out.append(current) }
        return out
    }

    private func newBatch(to peer: UInt64) -> Swetcd_Peer_MessageBatch {
        var batch = Swetcd_Peer_MessageBatch()
        batch.clusterID = clusterID
        batch.from = localID
        batch.to = peer
        return batch
    }

    /// The client transport to one peer URL.
    func clientTransport(_ url: EndpointURL) throws -> HTTP2ClientTransport.Posix {
        guard url.scheme == "http" else {
            throw PeerTransportError.unsupportedURL("\(url): only http:// peer URLs are supported (no peer TLS yet)")
        }
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.connection.keepalive = .init(time: options.keepaliveInterval, timeout: options.keepaliveTimeout,
                                            allowWithoutCalls: true)
        config.backoff = .init(initial: .milliseconds(50), max: options.maxBackoff, multiplier: 2, jitter: 0.2)
        return try HTTP2ClientTransport.Posix(target: Self.target(url), transportSecurity: .plaintext, config: config)
    }

    static func target(_ url: EndpointURL) -> any ResolvableTarget {
        if url.host.contains(":") { return ResolvableTargets.IPv6.ipv6(address: url.host, port: url.port) }
        if !url.host.isEmpty && url.host.allSatisfy({ $0.isNumber || $0 == "." }) {
            return ResolvableTargets.IPv4.ipv4(address: url.host, port: url.port)
        }
        return ResolvableTargets.DNS(host: url.host, port: url.port)
    }
}
