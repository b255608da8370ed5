// One peer as seen by the sender: its outgoing queue, the task that keeps a `Messages`
// stream open to it, and snapshot transfers to it.

import Crypto
import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Raft
import Synchronization

final class PeerLink: Sendable {
    let id: UInt64
    let queue: PeerQueue
    private let transport: PeerTransport
    private let logger: Logger

    private struct State {
        var urls: [EndpointURL]
        var next = 0
        var connectedURL: EndpointURL?
        /// The client of the handshake's connection (which also carries the `Messages` stream
        /// on grpc-swift's path), for one-off calls to this peer (``sharedClient``) while the
        /// stream is up.
        var connectedClient: GRPCClient<HTTP2ClientTransport.Posix>?
        var activeSince: ContinuousClock.Instant?
        /// The raw `Messages` stream while it is up (with `Options.fastSend`).
        var raw: PeerRawStream?
        var task: Task<Void, Never>?
        var snapshotTask: Task<Void, Never>?
        var cancelled = false
    }

    private let state: Mutex<State>

    init(id: UInt64, urls: [EndpointURL], transport: PeerTransport) {
        self.id = id
        self.queue = PeerQueue(capacity: transport.options.queueCapacity)
        self.transport = transport
        var logger = transport.logger
        logger[metadataKey: "remote-peer-id"] = "\(hexID(id))"
        self.logger = logger
        self.state = Mutex(State(urls: urls))
    }

    var activeSince: ContinuousClock.Instant? { state.withLock { $0.activeSince } }

    /// The URLs to dial for a one-off call: the connected one first, then the others.
    var callURLs: [EndpointURL] {
        state.withLock { s in
            guard let c = s.connectedURL else { return s.urls }
            return [c] + s.urls.filter { $0 != c }
        }
    }

    /// The handshake's connection, while the `Messages` stream is active: one-off calls
    /// (forwarded lease keep-alives) ride it as extra HTTP/2 streams instead of opening a
    /// connection (and a TLS handshake) each. nil when no stream is up.
    var sharedClient: (url: EndpointURL, client: GRPCClient<HTTP2ClientTransport.Posix>)? {
        state.withLock { s in
            guard let url = s.connectedURL, let client = s.connectedClient else { return nil }
            return (url, client)
        }
    }

    func start() {
        state.withLock { s in
            guard s.task == nil, !s.cancelled else { return }
            s.task = Task { await self.run() }
        }
    }

    func update(urls: [EndpointURL]) {
        let stale = state.withLock { s -> Bool in
            s.urls = urls
            s.next = 0
            if let current = s.connectedURL { return !urls.contains(current) }
            return false
        }
        // Ends the current stream; the run loop re-dials with the new URLs.
        if stale { endStream() }
    }

    /// Sends `messages` on the stream (from the Raft loop, without blocking); returns how
    /// many were dropped (the stream is down, or the bound of queued messages is reached).
    func push(_ messages: [Raft.Message]) -> Int {
        if let raw = state.withLock({ $0.raw }) { return raw.send(messages) }
        return queue.push(messages)
    }

    /// Ends the current stream (its session then returns and the run loop re-dials).
    private func endStream() {
        dropQueued(queue.close())
        state.withLock { $0.raw }?.close()
    }

    func cancel() {
        let tasks = state.withLock { s -> [Task<Void, Never>] in
            s.cancelled = true
            return [s.task, s.snapshotTask].compactMap { $0 }
        }
        for task in tasks { task.cancel() }
        _ = queue.close()
        state.withLock { $0.raw }?.close()
    }

    func finished() async {
        let tasks = state.withLock { [$0.task, $0.snapshotTask].compactMap { $0 } }
        for task in tasks { await task.value }
    }

    // MARK: Messages stream

    private func run() async {
        var delay = transport.options.initialBackoff
        var failures = 0
        while !Task.isCancelled {
            let url = state.withLock { s -> EndpointURL? in
                guard !s.urls.isEmpty else { return nil }
                defer { s.next = (s.next + 1) % s.urls.count }
                return s.urls[s.next % s.urls.count]
            }
            var wasActive = false
            if let url {
                let error = await session(url)
                wasActive = markInactive()
                if let error, !Task.isCancelled {
                    failures += 1
                    if wasActive {
                        logger.warning("lost the stream to peer", metadata: ["url": "\(url)", "error": "\(error)"])
                    } else if failures == 1 || failures % 50 == 0 {
                        let level: Logger.Level = error is PeerTransportError ? .error : .info
                        logger.log(level: level, "cannot reach peer", metadata: [
                            "url": "\(url)", "error": "\(error)", "attempts": "\(failures)",
                        ])
                    }
                }
            }
            dropQueued(queue.close())
            if wasActive {
                delay = transport.options.initialBackoff
                failures = 0
            }
            guard !Task.isCancelled else { break }
            let jitter = Double.random(in: 0.8...1.2)
            try? await Task.sleep(for: delay * jitter)
            delay = min(delay * 2, transport.options.maxBackoff)
        }
        _ = markInactive()
        _ = queue.close()
    }

    /// One connection: handshake, then the stream until it breaks. Returns the error that
    /// ended it (nil when cancelled or closed on purpose).
    private func session(_ url: EndpointURL) async -> (any Error)? {
        do {
            let clientTransport = try transport.clientTransport(url)
            try await withGRPCClient(transport: clientTransport) { client in
                let peer = Swetcd_Peer_Peer.Client(wrapping: client)
                try await handshake(peer)
                if transport.options.fastSend {
                    try await rawSession(url, client: client)
                    return
                }
                var options = CallOptions.defaults
                options.waitForReady = false
                try await peer.messages(
                    request: StreamingClientRequest(of: Swetcd_Peer_MessageBatch.self) { writer in
                        self.markActive(url, client: client)
                        while let messages = await self.queue.next() {
                            for batch in self.transport.batches(messages, to: self.id) {
                                try await writer.write(batch)
                            }
                        }
                    },
                    options: options
                ) { response in
                    // The receiver may end the stream (refusal, shutdown): stop writing then.
                    defer { self.dropQueued(self.queue.close()) }
                    for try await _ in response.messages {}
                }
            }
            return nil
        } catch {
            return Task.isCancelled ? nil : error
        }
    }

    /// The `Messages` stream as a ``PeerRawStream`` on its own connection, while `client`
    /// (the handshake's connection) stays open for one-off calls. Returns when the stream
    /// ends; throws what ended it unless it was closed here.
    private func rawSession(_ url: EndpointURL, client: GRPCClient<HTTP2ClientTransport.Posix>) async throws {
        let raw = try await PeerRawStream.open(url, peer: id, transport: transport)
        let error = await withTaskCancellationHandler {
            let cancelled = state.withLock { s -> Bool in
                if !s.cancelled { s.raw = raw }
                return s.cancelled
            }
            if cancelled {
                raw.close()
            } else {
                markActive(url, client: client)
            }
            return await raw.closed()
        } onCancel: {
            raw.close()
        }
        state.withLock { $0.raw = nil }
        raw.close()
        if let error, !Task.isCancelled { throw error }
    }

    private func handshake(_ peer: Swetcd_Peer_Peer.Client<HTTP2ClientTransport.Posix>) async throws {
        var hello = Swetcd_Peer_Hello()
        hello.clusterID = transport.clusterID
        hello.from = transport.localID
        hello.to = id
        hello.protocolVersion = PeerProtocol.version
        hello.serverVersion = PeerService.serverVersion
        var options = CallOptions.defaults
        options.waitForReady = false
        options.timeout = transport.options.handshakeTimeout
        let reply = try await peer.handshake(request: ClientRequest(message: hello), options: options)
        guard reply.accepted else {
            if reply.reason == PeerTransport.removedReason(transport.localID) {
                transport.delegate.transportRefusedAsRemoved(by: id)
            }
            throw PeerTransportError.refused(reply.reason)
        }
        guard reply.clusterID == transport.clusterID, reply.memberID == id else {
            throw PeerTransportError.refused(
                "answered as member \(hexID(reply.memberID)) of cluster \(hexID(reply.clusterID))")
        }
    }

    private func markActive(_ url: EndpointURL, client: GRPCClient<HTTP2ClientTransport.Posix>) {
        // The raw stream takes messages itself; the queue feeds grpc-swift's stream.
        if !transport.options.fastSend { queue.open() }
        state.withLock { s in
            s.connectedURL = url
            s.connectedClient = client
            s.activeSince = .now
        }
        logger.info("stream to peer is active", metadata: ["url": "\(url)"])
    }

    /// Returns whether the stream had been active.
    private func markInactive() -> Bool {
        state.withLock { s in
            defer {
                s.activeSince = nil
                s.connectedURL = nil
                s.connectedClient = nil
                s.raw = nil
            }
            return s.activeSince != nil
        }
    }

    private func dropQueued(_ messages: [Raft.Message]) {
        if !messages.isEmpty { transport.delegate.transportReportUnreachable(id) }
    }

    // MARK: Snapshots

    func sendSnapshot(_ message: Raft.Message) {
        let accepted = state.withLock { s -> Bool in
            guard !s.cancelled, s.snapshotTask == nil else { return false }
            s.snapshotTask = Task {
                let success: Bool
                do {
                    try await self.transferSnapshot(message)
                    success = true
                } catch {
                    self.logger.warning("failed to send snapshot", metadata: [
                        "index": "\(message.snapshot?.metadata.index ?? 0)", "error": "\(error)",
                    ])
                    success = false
                }
                self.state.withLock { $0.snapshotTask = nil }
                self.transport.delegate.transportReportSnapshot(self.id, success: success)
            }
            return true
        }
        if !accepted {
            logger.info("snapshot not sent: another transfer to this peer is running")
            transport.delegate.transportReportSnapshot(id, success: false)
        }
    }

    private func transferSnapshot(_ message: Raft.Message) async throws {
        guard let url = state.withLock({ $0.connectedURL ?? $0.urls.first }) else {
            throw PeerTransportError.snapshotTransfer("peer has no URL")
        }
        let index = message.snapshot?.metadata.index ?? message.index
        let term = message.snapshot?.metadata.term ?? message.term
        let opened = try transport.snapshots.openBackendSnapshot()
        var body: any BackendSnapshotReader = opened
        defer { body.close() }
        let digest: [UInt8]
        if let known = opened.sha256 {
            digest = known
        } else {
            let spooled = try spoolAndHash(opened, index: index)
            opened.close()
            body = spooled.reader
            digest = spooled.sha256
        }
        var announced = Swetcd_Peer_SnapshotHeader()
        announced.clusterID = transport.clusterID
        announced.from = transport.localID
        announced.to = id
        announced.index = index
        announced.term = term
        announced.size = body.size
        announced.sha256 = Data(digest)
        announced.message = Data(message.encode())
        let header = announced
        logger.info("sending snapshot", metadata: ["index": "\(index)", "size": "\(body.size)"])
        let start = ContinuousClock.now
        let chunkSize = transport.options.snapshotChunkSize
        let reader = body
        let ack = try await withGRPCClient(transport: try transport.clientTransport(url)) { client in
            var options = CallOptions.defaults
            options.waitForReady = false
            return try await Swetcd_Peer_Peer.Client(wrapping: client).sendSnapshot(
                request: StreamingClientRequest(of: Swetcd_Peer_SnapshotPart.self) { writer in
                    var first = Swetcd_Peer_SnapshotPart()
                    first.header = header
                    try await writer.write(first)
                    var sent: UInt64 = 0
                    while true {
                        try Task.checkCancellation()
                        let chunk = try reader.read(upTo: chunkSize)
                        if chunk.isEmpty { break }
                        sent += UInt64(chunk.count)
                        guard sent <= header.size else {
                            throw PeerTransportError.snapshotTransfer("backend copy is longer than its announced \(header.size) bytes")
                        }
                        var part = Swetcd_Peer_SnapshotPart()
                        part.chunk = Data(chunk)
                        try await writer.write(part)
                    }
                    guard sent == header.size else {
                        throw PeerTransportError.snapshotTransfer("backend copy ended after \(sent) of \(header.size) bytes")
                    }
                },
                options: options
            )
        }
        guard ack.accepted else {
            throw PeerTransportError.snapshotTransfer("refused by peer: \(ack.reason)")
        }
        logger.info("sent snapshot", metadata: [
            "index": "\(index)", "size": "\(body.size)", "took": "\(ContinuousClock.now - start)",
        ])
    }

    /// Copies a body whose hash is unknown to a temporary file while hashing it.
    private func spoolAndHash(_ reader: any BackendSnapshotReader, index: UInt64) throws -> (reader: any BackendSnapshotReader, sha256: [UInt8]) {
        let directory = transport.snapshotDirectory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = "\(directory)/outgoing-\(hexID(id))-\(String(index, radix: 16)).tmp"
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let out = FileHandle(forWritingAtPath: path) else {
            throw PeerTransportError.snapshotFile("cannot create \(path)")
        }
        var hasher = SHA256()
        do {
            defer { try? out.close() }
            while true {
                let chunk = try reader.read(upTo: transport.options.snapshotChunkSize)
                if chunk.isEmpty { break }
                hasher.update(data: chunk)
                try out.write(contentsOf: chunk)
            }
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            throw error
        }
        let spooled = try FileBackendSnapshotReader(path: path, removeOnClose: true)
        return (spooled, Array(hasher.finalize()))
    }
}
