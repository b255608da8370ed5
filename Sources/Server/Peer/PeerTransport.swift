// The peer transport: Raft messages between members over swetcd's peer protocol
// (Sources/EtcdProto/proto/peer.proto). One outgoing `Messages` stream per peer, kept
// open and re-dialled with capped exponential backoff; snapshots on their own call.

import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import NIOSSL
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
        /// Longest delay between dial attempts. Short, as etcd's peer streams retry every
        /// 100 ms: a member that restarts hears from the leader within this time, not after
        /// a backoff grown while it was down (with 2 s, members went up to 2.4 s without a
        /// leader after a restart, failing leader-requiring calls such as watches).
        public var maxBackoff: Duration = .milliseconds(200)
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
        /// Send Raft messages on a raw HTTP/2 `Messages` stream written from ``send(_:)``
        /// (``PeerRawStream``) rather than through grpc-swift's client and a writer task.
        public var fastSend = PeerTransport.fastPeerDefault
        /// Where the raw `Messages` streams' connections live (nil: NIO's shared group). The
        /// server gives its Raft loop's own event loop, so a send from the loop is written to
        /// the socket on the spot.
        public var eventLoopGroup: (any EventLoopGroup)?

        /// The defaults.
        public init() {}
    }

    /// Whether Raft messages take the fast paths (the frame-level `Messages` receiver, and the
    /// raw HTTP/2 sender): true unless the environment sets `SWETCD_NO_FAST_PEER=1`, which
    /// restores grpc-swift on both sides (for A/B measurements). The wire protocol is the same.
    public static let fastPeerDefault = ProcessInfo.processInfo.environment["SWETCD_NO_FAST_PEER"] != "1"

    let localID: UInt64
    let clusterID: UInt64
    let snapshotDirectory: String
    let delegate: any RaftTransportDelegate
    let snapshots: any BackendSnapshotSource
    let logger: Logger
    let options: Options
    /// Peer TLS (nil: https:// peer URLs are refused).
    let tls: PeerTLS?
    /// Counts refused peer calls by reason.
    let refusals: PeerRefusals

    private struct State {
        var links: [UInt64: PeerLink] = [:]
        var removed: Set<UInt64> = []
        /// Open inbound `Messages` streams by sender; closed when the sender is removed.
        var inbound: [UInt64: [ObjectIdentifier: StopSignal]] = [:]
        var receivingSnapshots: Set<UInt64> = []
        var started = false
        var stopped = false
    }

    private let state = Mutex(State())
    let stopSignal = StopSignal()
    /// Answers lease calls forwarded by followers (see PeerLease.swift).
    let leaseHandler = LeaseHandlerSlot()
    /// Coalesces forwarded keep-alives per leader.
    let renewBatcher = LeaseRenewBatcher()

    /// Creates a transport for member `localID` of cluster `clusterID`. Received snapshot
    /// bodies are stored in `snapshotDirectory` (created if missing).
    public init(localID: UInt64, clusterID: UInt64, snapshotDirectory: String,
                delegate: any RaftTransportDelegate, snapshots: any BackendSnapshotSource,
                logger: Logger, options: Options = Options(), tls: PeerTLS? = nil,
                refusals: PeerRefusals? = nil) {
        self.localID = localID
        self.clusterID = clusterID
        self.snapshotDirectory = snapshotDirectory
        self.delegate = delegate
        self.snapshots = snapshots
        var logger = logger
        logger[metadataKey: "local-member-id"] = "\(hexID(localID))"
        self.logger = logger
        self.options = options
        self.tls = tls
        self.refusals = refusals ?? tls?.refusals ?? PeerRefusals()
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
        let (link, streams) = state.withLock { s in
            s.removed.insert(id)
            return (s.links.removeValue(forKey: id), s.inbound.removeValue(forKey: id).map { Array($0.values) } ?? [])
        }
        link?.cancel()
        for stream in streams { stream.stop() }
    }

    /// Registers an inbound `Messages` stream from `from`, stopped when `from` is removed;
    /// false if it already is.
    func registerInbound(_ from: UInt64, _ signal: StopSignal) -> Bool {
        state.withLock { s in
            guard !s.removed.contains(from) else { return false }
            s.inbound[from, default: [:]][ObjectIdentifier(signal)] = signal
            return true
        }
    }

    func unregisterInbound(_ from: UInt64, _ signal: StopSignal) {
        state.withLock { s in
            s.inbound[from]?.removeValue(forKey: ObjectIdentifier(signal))
            if s.inbound[from]?.isEmpty == true { s.inbound[from] = nil }
        }
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
            if link.push(batch) > 0 {
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

    /// Inbound `Messages` streams served at the frame level (``PeerMessagesHandler``) so far.
    let frameLevelStreams = Atomic<Int>(0)

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
        let (removed, member) = state.withLock { ($0.removed.contains(from), $0.links[from] != nil) }
        if removed { return Self.removedReason(from) }
        if !member { return "member \(hexID(from)) is not a member of this cluster" }
        return nil
    }

    /// Why the call in `context` may not speak for member `from` (a refusal code for the
    /// metric, and the reason), or nil. With peer TLS and client-cert-auth the connection's
    /// verified certificate must name, as a DNS or IP subject alternative name, the host of
    /// one of `from`'s peer URLs (unless --experimental-peer-skip-client-san-verification).
    func identityRefusal(from: UInt64, remote: String, local: String) -> (code: String, reason: String)? {
        guard let tls, tls.bindsMembers else { return nil }
        guard let identity = tls.identities.identity(remote: remote, local: local) else {
            return ("no_certificate", "the connection has no verified peer certificate")
        }
        guard let urls = state.withLock({ $0.links[from] })?.callURLs else {
            return ("not_member", "member \(hexID(from)) is not a member of this cluster")
        }
        let hosts = Set(urls.map { Self.canonicalHost($0.host) })
        guard identity.names.contains(where: { hosts.contains(Self.canonicalHost($0)) }) else {
            return ("identity_mismatch", "the certificate (CN \"\(identity.commonName ?? "")\", names \(identity.names.sorted())) does not name a host of member \(hexID(from))'s peer URLs \(urls.map(\.description))")
        }
        return nil
    }

    /// A host as compared with certificate names: lower-cased, IPv6 without brackets and in
    /// canonical form.
    static func canonicalHost(_ host: String) -> String {
        var h = host.lowercased()
        if h.hasPrefix("["), h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        if h.contains(":"), let bytes = SelfSignedCertificate.ipBytes(h), bytes.count == 16 {
            var buffer = [CChar](repeating: 0, count: 64)
            if bytes.withUnsafeBytes({ inet_ntop(AF_INET6, $0.baseAddress, &buffer, 64) }) != nil {
                return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
        }
        return h
    }

    /// Both checks for a call claiming to come from `from`: the protocol check (cluster,
    /// receiver, current member) and the identity check. Logs and counts a refusal.
    func callRefusal(cluster: UInt64, from: UInt64, to: UInt64, context: ServerContext, call: String) -> String? {
        callRefusal(cluster: cluster, from: from, to: to, remote: context.remotePeer, local: context.localPeer, call: call)
    }

    /// ``callRefusal(cluster:from:to:context:call:)`` for a connection named by gRPC's spelling
    /// of its remote and local addresses (`ServerContext.remotePeer` / `localPeer`, or
    /// ``ClientCertificateNames/describe(_:fallback:)`` of a channel's addresses).
    func callRefusal(cluster: UInt64, from: UInt64, to: UInt64, remote: String, local: String, call: String) -> String? {
        var found: (code: String, reason: String)?
        if let tls, tls.bindsMembers, tls.identities.identity(remote: remote, local: local) == nil {
            // Nothing about this cluster for a caller without a verified certificate.
            found = ("no_certificate", "the connection has no verified peer certificate")
        } else if let reason = refusal(cluster: cluster, from: from, to: to) {
            let code = cluster != clusterID ? "cluster_mismatch" : to != localID ? "member_mismatch"
                : reason == Self.removedReason(from) ? "removed" : "not_member"
            found = (code, reason)
        } else {
            found = identityRefusal(from: from, remote: remote, local: local)
        }
        guard let refusal = found else { return nil }
        refusals.count(refusal.code)
        logger.error("refused peer call", metadata: [
            "call": "\(call)", "remote-peer-id": "\(hexID(from))", "remote-cluster-id": "\(hexID(cluster))",
            "remote-addr": "\(remote)", "reason": "\(refusal.reason)",
        ])
        return refusal.reason
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
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.connection.keepalive = .init(time: options.keepaliveInterval, timeout: options.keepaliveTimeout,
                                            allowWithoutCalls: true)
        config.backoff = .init(initial: .milliseconds(50), max: options.maxBackoff, multiplier: 2, jitter: 0.2)
        // With the raw Messages stream on its own connection this one may carry no call for
        // long: keep it for the forwarded lease calls instead of closing it when idle.
        if options.fastSend { config.connection.maxIdleTime = nil }
        return try Self.clientTransport(url, tls: tls, config: config)
    }

    /// A client transport to one peer URL: plaintext for http://, peer TLS for https:// (the
    /// context of the moment, so replaced certificate files are used by new connections).
    static func clientTransport(_ url: EndpointURL, tls: PeerTLS?,
                                config: HTTP2ClientTransport.Posix.Config = .defaults) throws -> HTTP2ClientTransport.Posix {
        var config = config
        switch url.scheme {
        case "http":
            return try HTTP2ClientTransport.Posix(target: target(url), transportSecurity: .plaintext, config: config)
        case "https":
            guard let tls else {
                throw PeerTransportError.unsupportedURL("\(url): an https:// peer URL needs peer TLS (--peer-cert-file and --peer-key-file, or --peer-auto-tls)")
            }
            let source = tls.client
            let serverName = PeerTLS.isIPAddress(url.host) ? nil : url.host
            config.channelDebuggingCallbacks.onCreateTCPConnection = { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = try NIOSSLClientHandler(context: source.current(), serverHostname: serverName)
                    try channel.pipeline.syncOperations.addHandler(handler, position: .first)
                }
            }
            return try HTTP2ClientTransport.Posix(target: target(url), transportSecurity: .customSecure, config: config)
        default:
            throw PeerTransportError.unsupportedURL("\(url): peer URLs are http:// or https://")
        }
    }

    static func target(_ url: EndpointURL) -> any ResolvableTarget {
        if url.host.contains(":") { return ResolvableTargets.IPv6.ipv6(address: url.host, port: url.port) }
        if !url.host.isEmpty && url.host.allSatisfy({ $0.isNumber || $0 == "." }) {
            return ResolvableTargets.IPv4.ipv4(address: url.host, port: url.port)
        }
        return ResolvableTargets.DNS(host: url.host, port: url.port)
    }
}
