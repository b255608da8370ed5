import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MVCC

/// etcd's HashKV of one member: the hash of the keyspace up to `revision`, with the member's
/// compact revision at the time.
struct KVHash: Sendable, Equatable {
    var hash: UInt32
    /// The revision hashed up to (the member's current revision when the request said 0).
    var revision: Int64
    var compactRevision: Int64
}

/// A peer's answer to a HashKV request at one revision.
struct PeerHashResult: Sendable, Equatable {
    enum Outcome: Sendable, Equatable {
        /// The peer's hash at the revision and its current / compact revision.
        case hash(hash: UInt32, currentRevision: Int64, compactRevision: Int64)
        /// The revision is below the peer's compact revision.
        case compacted
        /// The peer has not reached the revision yet.
        case future
        /// No answer (unreachable, refused, timed out).
        case failed(String)
    }

    var memberID: UInt64
    var outcome: Outcome
}

/// The comparison rules of etcd's corruption checks (pure, so they are unit-tested alone).
enum CorruptCheck {
    /// The start-up check: peers that hashed the same revision with the same compact revision
    /// as this member but got a different hash. Peers that could not answer, are behind, have
    /// compacted further or differ in compact revision are not comparable and are skipped.
    static func initialMismatches(local: KVHash, peers: [PeerHashResult]) -> [UInt64] {
        peers.compactMap { p in
            guard case let .hash(h, _, crev) = p.outcome else { return nil }
            return crev == local.compactRevision && h != local.hash ? p.memberID : nil
        }
    }

    /// The leader's periodic check. `before` is the leader's hash taken before asking the peers
    /// (at its current revision, the revision the peers hash), `after` one taken again after a
    /// linearizable barrier. Suspects, with the reason:
    /// - the leader itself, if its hash changed while neither revision moved;
    /// - a peer whose current revision is ahead of the leader's (a follower cannot be ahead);
    /// - a peer whose compact revision is ahead of the leader's;
    /// - a peer with the same compact revision and a different hash.
    static func periodicMismatches(leader: UInt64, before: KVHash, after: KVHash,
                                   peers: [PeerHashResult]) -> [(memberID: UInt64, reason: String)] {
        var out: [(memberID: UInt64, reason: String)] = []
        if after.hash != before.hash, after.revision == before.revision, after.compactRevision == before.compactRevision {
            out.append((leader, "the leader's hash changed at an unchanged revision \(before.revision)"))
        }
        for p in peers {
            guard case let .hash(h, rev, crev) = p.outcome else { continue }
            if rev > after.revision {
                out.append((p.memberID, "revision \(rev) is ahead of the leader's \(after.revision)"))
            } else if crev > after.compactRevision {
                out.append((p.memberID, "compact revision \(crev) is ahead of the leader's \(after.compactRevision)"))
            } else if crev == before.compactRevision, h != before.hash {
                out.append((p.memberID, "hash \(h) differs from the leader's \(before.hash) at revision \(before.revision)"))
            }
        }
        return out
    }
}

/// Answers other members' HashKV requests on the peer listener.
struct PeerCorruptCheckService: Swetcd_Peer_PeerCorruptCheck.SimpleServiceProtocol {
    let transport: PeerTransport
    /// The keyspace now (a follower that installs a leader's snapshot swaps it).
    let currentStore: @Sendable () -> MVCCStore

    func hashKV(request: Swetcd_Peer_PeerHashKVRequest, context: ServerContext) async throws -> Swetcd_Peer_PeerHashKVResponse {
        if let reason = transport.callRefusal(cluster: request.clusterID, from: request.from, to: request.to,
                                              context: context, call: "hashkv") {
            throw RPCError(code: .failedPrecondition, message: reason)
        }
        var out = Swetcd_Peer_PeerHashKVResponse()
        out.memberID = transport.localID
        do {
            let r = try currentStore().hashKV(revision: request.revision)
            out.hash = r.hash
            out.currentRevision = r.revision
            out.compactRevision = r.compactRevision
        } catch MVCCError.compacted {
            out.unavailable = "compacted"
        } catch MVCCError.futureRevision {
            out.unavailable = "future"
        } catch {
            throw RPCError(code: .internalError, message: "hash failed: \(error)")
        }
        if !out.unavailable.isEmpty {
            let store = currentStore()
            out.currentRevision = store.currentRevision
            out.compactRevision = store.compactRevision
        }
        return out
    }
}

extension EtcdServer {
    /// This member's HashKV at its current revision.
    func localHash() throws -> KVHash {
        do {
            let r = try store.hashKV(revision: 0)
            return KVHash(hash: r.hash, revision: r.revision, compactRevision: r.compactRevision)
        } catch {
            throw EtcdError.from(error)
        }
    }

    /// Asks every other member, in parallel, for its HashKV at `revision`, each bounded by
    /// `timeout`; a member's peer URLs are tried in turn.
    func fetchPeerHashes(revision: Int64, timeout: Duration) async -> [PeerHashResult] {
        let others = members().filter { $0.id != memberID }
        return await withTaskGroup(of: PeerHashResult.self) { group in
            for m in others {
                let urls = m.peerUrls.compactMap { try? EndpointURL(parsing: $0) }
                group.addTask { [self] in await fetchPeerHash(m.id, urls: urls, revision: revision, timeout: timeout) }
            }
            var out: [PeerHashResult] = []
            for await r in group { out.append(r) }
            return out.sorted { $0.memberID < $1.memberID }
        }
    }

    private func fetchPeerHash(_ id: UInt64, urls: [EndpointURL], revision: Int64, timeout: Duration) async -> PeerHashResult {
        var request = Swetcd_Peer_PeerHashKVRequest()
        request.clusterID = clusterID
        request.from = memberID
        request.to = id
        request.revision = revision
        var failure = "no usable peer URL"
        for url in urls {
            do {
                let resp = try await withGRPCClient(transport: try peers.clientTransport(url)) { client in
                    var options = CallOptions.defaults
                    options.timeout = timeout
                    options.waitForReady = false
                    return try await Swetcd_Peer_PeerCorruptCheck.Client(wrapping: client)
                        .hashKV(request: ClientRequest(message: request), options: options)
                }
                guard resp.memberID == id else {
                    failure = "\(url) answered as member \(String(resp.memberID, radix: 16))"
                    continue
                }
                switch resp.unavailable {
                case "": return PeerHashResult(memberID: id, outcome: .hash(hash: resp.hash, currentRevision: resp.currentRevision,
                                                                            compactRevision: resp.compactRevision))
                case "compacted": return PeerHashResult(memberID: id, outcome: .compacted)
                case "future": return PeerHashResult(memberID: id, outcome: .future)
                default: failure = "unknown answer \"\(resp.unavailable)\""
                }
            } catch {
                failure = "\(url): \(error)"
            }
        }
        return PeerHashResult(memberID: id, outcome: .failed(failure))
    }

    /// `--experimental-initial-corrupt-check`: before this member serves, compare its HashKV
    /// with its peers' at the same revision; a mismatch is a clear error (the member must not
    /// start). Peers that cannot answer or are not comparable are logged and skipped.
    func initialCorruptCheck() async throws {
        let id = String(memberID, radix: 16)
        logger.info("starting initial corruption check", metadata: ["local-member-id": "\(id)", "timeout": "\(requestTimeout)"])
        let local = try localHash()
        // An empty keyspace has nothing to compare (and revision 0 would ask peers for their
        // current revision, not this one).
        guard local.revision > 0 else {
            logger.info("initial corruption checking skipped; empty keyspace", metadata: ["local-member-id": "\(id)"])
            return
        }
        let peers = await fetchPeerHashes(revision: local.revision, timeout: requestTimeout)
        for p in peers {
            let peer = String(p.memberID, radix: 16)
            switch p.outcome {
            case .hash(let h, _, let crev) where crev != local.compactRevision && h != local.hash:
                logger.warning("found different compact revision values; skipped hash comparison", metadata: [
                    "remote-peer-id": "\(peer)", "local-member-compact-revision": "\(local.compactRevision)",
                    "remote-peer-compact-revision": "\(crev)",
                ])
            case .hash: break
            case .compacted:
                logger.warning("cannot fetch hash from remote peer; local member is behind", metadata: ["remote-peer-id": "\(peer)"])
            case .future:
                logger.warning("cannot fetch hash from slow remote peer", metadata: ["remote-peer-id": "\(peer)"])
            case .failed(let why):
                logger.warning("cannot fetch hash from remote peer", metadata: ["remote-peer-id": "\(peer)", "error": "\(why)"])
            }
        }
        let bad = CorruptCheck.initialMismatches(local: local, peers: peers)
        if !bad.isEmpty {
            let list = bad.map { String($0, radix: 16) }.joined(separator: ",")
            logger.error("found data inconsistency with peers", metadata: [
                "local-member-id": "\(id)", "local-member-hash": "\(local.hash)", "revision": "\(local.revision)",
                "compact-revision": "\(local.compactRevision)", "remote-peer-ids": "\(list)",
            ])
            throw ServerStartError("\(id) found data inconsistency with peers \(list) (HashKV differs at revision \(local.revision) with compact revision \(local.compactRevision)); refusing to start")
        }
        logger.info("initial corruption checking passed; no corruption", metadata: ["local-member-id": "\(id)"])
    }

    /// The leader's periodic check (`--experimental-corrupt-check-time`): compares HashKV with
    /// every peer and raises CORRUPT through the log for each suspect member not already
    /// alarmed. Returns the suspects.
    @discardableResult
    func periodicCorruptCheck() async throws -> [UInt64] {
        let before = try localHash()
        // Revision 0 would ask peers for their current revision: nothing to compare yet.
        guard before.revision > 0 else { return [] }
        let peers = await fetchPeerHashes(revision: before.revision, timeout: requestTimeout)
        try await linearizableBarrier()
        let after = try localHash()
        let suspects = CorruptCheck.periodicMismatches(leader: memberID, before: before, after: after, peers: peers)
        for s in suspects {
            logger.error("found hash mismatch", metadata: [
                "remote-peer-id": "\(String(s.memberID, radix: 16))", "reason": "\(s.reason)",
                "leader-hash": "\(before.hash)", "revision": "\(before.revision)",
            ])
            guard !alarms.isActive(memberID: s.memberID, type: .corrupt) else { continue }
            var alarm = Etcdserverpb_AlarmRequest()
            alarm.action = .activate
            alarm.memberID = s.memberID
            alarm.alarm = .corrupt
            _ = try await proposeAlarm(alarm)
        }
        return suspects.map(\.memberID)
    }

    /// Runs the periodic check every `interval` while this member leads (0: never).
    func startCorruptionMonitor(every interval: Duration) {
        guard interval > .zero else { return }
        logger.info("enabled corruption checking", metadata: ["interval": "\(interval)"])
        let task = Task { [self] in
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                guard isLeader else { continue }
                do { try await periodicCorruptCheck() } catch {
                    logger.warning("failed to check hash KV", metadata: ["error": "\(error)"])
                }
            }
        }
        backgroundTasks.withLock { $0.append(task) }
    }

    /// Releases what `start` opened when the member refuses to start before its Raft loop runs.
    func abandonBeforeLoop() async {
        closing.fire()
        await peers.stop()
        await peerServer.stop()
        await raftLoop.shutDownEventLoop()
        do { try raftLoop.abandon() } catch {
            logger.error("closing the WAL failed", metadata: ["error": "\(error)"])
        }
        do { try backend.close() } catch {
            logger.error("closing backend failed", metadata: ["error": "\(error)"])
        }
    }
}
