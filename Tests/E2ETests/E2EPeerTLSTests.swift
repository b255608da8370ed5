import Foundation
import Raft
import Testing

extension TLSFixture {
    /// Issues a peer certificate `<name>.pem`/`<name>.key` (server and client use) signed by
    /// `issuer`, naming `san` (default: 127.0.0.1 and localhost).
    @discardableResult
    func issuePeer(_ name: String, cn: String, serial: Int, issuer: String = "ca",
                   san: String = "IP:127.0.0.1,DNS:localhost") async throws -> (cert: String, key: String) {
        let cert = "\(dir)/\(name).pem", key = "\(dir)/\(name).key", csr = "\(dir)/\(name).csr", ext = "\(dir)/\(name).ext"
        FileManager.default.createFile(atPath: ext, contents: Data("""
            subjectAltName=\(san)
            extendedKeyUsage=serverAuth,clientAuth
            """.utf8))
        try await openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                           "-keyout", key, "-out", csr, "-subj", "/CN=\(cn)"])
        try await openssl(["x509", "-req", "-in", csr, "-CA", "\(dir)/\(issuer).pem", "-CAkey", "\(dir)/\(issuer).key",
                           "-set_serial", "\(serial)", "-days", "2", "-out", cert, "-extfile", ext])
        return (cert, key)
    }

    /// swetcd's peer TLS flags for certificate `peer` (mutual TLS against this fixture's CA).
    func peerFlags(_ peer: (cert: String, key: String), ca: String? = nil) -> [String] {
        ["--peer-cert-file", peer.cert, "--peer-key-file", peer.key, "--peer-trusted-ca-file", ca ?? self.ca,
         "--peer-client-cert-auth"]
    }
}

/// What `etcdctl endpoint status -w json` says about one member (IDs as decimal numbers).
struct EndpointStatus {
    var clusterID: UInt64, memberID: UInt64, leader: UInt64, term: UInt64, raftIndex: UInt64, revision: UInt64

    static func of(_ m: Member) async throws -> EndpointStatus {
        let out = try await m.ctl("endpoint", "status", "-w", "json")
        guard out.status == 0 else { throw E2EError("endpoint status failed: \(out.stderr)") }
        func number(_ key: String) throws -> UInt64 {
            guard let r = out.stdout.range(of: "\"\(key)\":"), let v = UInt64(out.stdout[r.upperBound...].prefix { $0.isNumber }) else {
                throw E2EError("no \(key) in \(out.stdout)")
            }
            return v
        }
        return EndpointStatus(clusterID: try number("cluster_id"), memberID: try number("member_id"), leader: try number("leader"),
                              term: try number("raft_term"), raftIndex: try number("raftIndex"), revision: try number("revision"))
    }
}

/// Hand-made peer protocol requests (Sources/EtcdProto/proto/peer.proto) sent with curl over
/// HTTP/2: what a process that can reach the peer port could send.
enum ForgedPeer {
    static func varint(_ value: UInt64) -> [UInt8] {
        var v = value, out: [UInt8] = []
        while v >= 0x80 { out.append(UInt8(v & 0x7f) | 0x80); v >>= 7 }
        return out + [UInt8(v)]
    }
    static func field(_ number: Int, _ value: UInt64) -> [UInt8] { varint(UInt64(number << 3)) + varint(value) }
    static func field(_ number: Int, bytes: [UInt8]) -> [UInt8] { varint(UInt64(number << 3 | 2)) + varint(UInt64(bytes.count)) + bytes }
    static func frame(_ message: [UInt8]) -> [UInt8] {
        let n = UInt32(message.count)
        return [0, UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + message
    }

    /// A `MessageBatch` of one Raft message.
    static func batch(cluster: UInt64, from: UInt64, to: UInt64, _ message: Raft.Message) -> [UInt8] {
        frame(field(1, cluster) + field(2, from) + field(3, to) + field(4, bytes: message.encode()))
    }

    /// POSTs gRPC `body` to `method` on `port` with client certificate `cert` (curl's output).
    static func send(_ fx: TLSFixture, port: Int, method: String, body: [UInt8],
                     cert: (cert: String, key: String)) async throws -> CommandOutput {
        let path = "\(fx.dir)/forged-\(UUID().uuidString).bin"
        FileManager.default.createFile(atPath: path, contents: Data(body))
        return try await runTool("/usr/bin/curl", [
            "-sS", "-m", "10", "--http2", "--cacert", fx.ca, "--cert", cert.cert, "--key", cert.key,
            "-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", "@\(path)",
            "-D", "-", "https://127.0.0.1:\(port)/swetcd.peer.Peer/\(method)",
        ])
    }
}

/// Peer TLS (https:// peer URLs) on real 3-member clusters with the real etcdctl 3.4.
@Suite("E2E peer TLS", .serialized, .enabled(if: E2E.available && FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")
    && FileManager.default.isExecutableFile(atPath: "/usr/bin/curl"), "swetcd, etcdctl, openssl or curl not found"))
struct E2EPeerTLSTests {
    /// `count` members with https:// peer URLs and `peerArgs(i)`; with `clientCert`, https://
    /// client URLs with mutual TLS too (etcdctl presents fixture certificate "client").
    static func withCluster(_ fx: TLSFixture, _ count: Int, clientCert: (cert: String, key: String)?,
                            peerArgs: (Int) -> [String], _ body: ([Member]) async throws -> Void) async throws {
        try await Member.withCluster(count, prepare: { i, m in
            m.extraArgs += peerArgs(i)
            m.peerScheme = "https"
            if let clientCert { tlsClient(m, fx, clientCert) }
        }, body)
    }

    /// Makes `m`'s client port https:// with mutual TLS, and its etcdctl runs present "client".
    static func tlsClient(_ m: Member, _ fx: TLSFixture, _ server: (cert: String, key: String)) {
        m.clientScheme = "https"
        m.extraArgs += ["--cert-file", server.cert, "--key-file", server.key, "--trusted-ca-file", fx.ca, "--client-cert-auth"]
        m.ctlFlags = fx.ctlFlags("client")
    }

    /// `swetcd_network_peer_refused_total{reason=...}` on `m` (0 when absent).
    static func refused(_ m: Member, _ reason: String, _ fx: TLSFixture? = nil) async throws -> Int {
        let tls = fx.map { ["--cacert", $0.ca, "--cert", $0.dir + "/client.pem", "--key", $0.dir + "/client.key"] } ?? []
        let out = try await runTool("/usr/bin/curl", ["-s", "-m", "10"] + tls + ["\(m.clientURL)/metrics"])
        let prefix = "swetcd_network_peer_refused_total{reason=\"\(reason)\"} "
        guard let line = out.stdout.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return 0 }
        return Int(line.dropFirst(prefix.count)) ?? 0
    }

    /// A member added as a learner tries to join `ms` with peer certificate `cert`: its
    /// handshakes are refused (counted as `reason` on some member), it never learns the
    /// membership or serves, and it is removed again (etcd allows one learner at a time).
    static func expectJoinRefused(_ fx: TLSFixture, cert: (cert: String, key: String), name: String,
                                  reason: String, cluster ms: [Member]) async throws {
        let j = try Member(name: name, extraArgs: ["--initial-cluster-state", "existing"] + fx.peerFlags(cert))
        j.peerScheme = "https"
        j.initialCluster = (ms + [j]).map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
        let id = try await M.add(j, via: ms[0], learner: true)
        let child = try Child(try #require(E2E.swetcdPath), [
            "--name", j.name, "--data-dir", j.dataDir, "--listen-client-urls", j.clientURL, "--advertise-client-urls", j.clientURL,
            "--listen-peer-urls", j.peerURL, "--initial-advertise-peer-urls", j.peerURL,
            "--initial-cluster", j.initialCluster!, "--heartbeat-interval", "50", "--election-timeout", "500",
        ] + j.extraArgs)
        try child.start()
        defer { child.signal(SIGKILL) }
        try await E2E.waitUntil("\(reason) refusals counted", limit: .seconds(20)) {
            var total = 0
            for m in ms { total += try await refused(m, reason) }
            return total > 0
        }
        #expect(!E2E.isListening(j.clientPort), "the joiner got no membership and serves nothing")
        #expect(!child.stderr.contains("starting member"))
        #expect(try await ms[0].ctl("member", "remove", id).status == 0)
        await j.cleanUp()
    }

    @Test func mutualTLSClusterServesEtcdctl() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let server = try await fx.issue("server", cn: "server", serial: 100, server: true)
        try await fx.issue("client", cn: "client", serial: 101)
        let peer = try await fx.issuePeer("peer", cn: "peer", serial: 102)
        let peerArgs = fx.peerFlags(peer) + ["--peer-cert-allowed-cn", "peer"]
        try await Self.withCluster(fx, 3, clientCert: server, peerArgs: { _ in peerArgs }) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k0", "v0").status == 0
            }
            #expect(ms.allSatisfy { !$0.stderrText.contains("keep it on a private network") })
            // KV through every member (followers forward over the peer port).
            #expect(try await ms[1].ctl("put", "k1", "v1").lines == ["OK"])
            #expect(try await ms[2].ctl("get", "k1").lines == ["k1", "v1"])
            // Watch on one member sees a write made through another.
            let watch = try ms[2].watch(["w", "--rev=1"])
            defer { watch.signal(SIGTERM) }   // timeout(1) passes TERM on; KILL would orphan etcdctl
            #expect(try await ms[0].ctl("put", "w", "wv").lines == ["OK"])
            #expect(try await watch.waitLines(3) == ["PUT", "w", "wv"])
            // Leases: granted on one member, kept alive through a follower (forwarded to the
            // leader over the peer port), read through a third.
            let grant = try await ms[0].ctl("lease", "grant", "60")
            let lease = try #require(grant.lines.first?.split(separator: " ").dropFirst().first.map(String.init), "\(grant)")
            #expect(try await ms[1].ctl("put", "--lease=\(lease)", "lk", "lv").lines == ["OK"])
            for m in ms {
                let keep = try await m.ctl("lease", "keep-alive", "--once", lease)
                #expect(keep.stdout.contains("keepalived with TTL"), "\(m.name): \(keep)")
            }
            #expect(try await ms[2].ctl("lease", "timetolive", "--keys", lease).stdout.contains("attached keys([lk])"))
            // Snapshot save.
            let snapshot = fx.dir + "/snapshot.db"
            let saved = try await ms[0].ctl("snapshot", "save", snapshot)
            #expect(saved.status == 0, "\(saved)")
            #expect(((try? FileManager.default.attributesOfItem(atPath: snapshot)[.size] as? Int) ?? 0) > 0)

            // A TLS member is added, joins (reading the membership over peer TLS), then removed.
            let m4 = try Member(name: "m4", extraArgs: ["--initial-cluster-state", "existing"] + peerArgs)
            m4.peerScheme = "https"
            Self.tlsClient(m4, fx, server)
            do {
                let id = try await M.add(m4, via: ms[1], learner: false)
                m4.initialCluster = (ms + [m4]).map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
                try await m4.start()
                try await E2E.waitUntil("m4 has replicated k1", limit: .seconds(20)) {
                    try await m4.ctl("get", "k1", "--consistency=s").lines == ["k1", "v1"]
                }
                #expect(try await m4.ctl("put", "k4", "v4").lines == ["OK"])
                #expect(try await ms[0].ctl("member", "remove", id).status == 0)
                _ = try await m4.waitExit(limit: .seconds(20))  // a removed member stops
                #expect(try await ms[2].ctl("member", "list").lines.count == 3)
                #expect(try await ms[2].ctl("get", "k4").lines == ["k4", "v4"])
            } catch {
                Issue.record("m4 log tail: \(m4.stderrText.suffix(3000))")
                await m4.cleanUp()
                throw error
            }
            await m4.cleanUp()
            #expect(try await ms[0].ctl("put", "k5", "v5").lines == ["OK"])
        }
    }

    @Test func peersWithoutAValidCertificateGetNothing() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let peer = try await fx.issuePeer("peer", cn: "peer", serial: 102)
        let stranger = try await fx.issuePeer("stranger", cn: "peer", serial: 103, issuer: "other-ca")
        let wrongCN = try await fx.issuePeer("wrongcn", cn: "intruder", serial: 104)
        let elsewhere = try await fx.issuePeer("elsewhere", cn: "peer", serial: 105, san: "DNS:elsewhere.example")
        // A long election timeout: the term must not move on its own while the test watches it.
        let peerArgs = fx.peerFlags(peer) + ["--peer-cert-allowed-cn", "peer", "--heartbeat-interval", "100", "--election-timeout", "3000"]
        try await Self.withCluster(fx, 3, clientCert: nil, peerArgs: { _ in peerArgs }) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k0", "v0").status == 0
            }
            // Joining with a certificate from another CA, or with a CN that is not allowed: the
            // handshake is refused (counted), the joiner never learns the membership.
            for (cert, reason) in [(stranger, "tls_handshake"), (wrongCN, "certificate_cn")] {
                try await Self.expectJoinRefused(fx, cert: cert, name: "j-\(reason)", reason: reason, cluster: ms)
            }

            let leader = try await Member.agreedLeader(of: ms)
            let follower = try #require(ms.first { $0 !== leader })
            let before = try await EndpointStatus.of(follower)
            let leaderID = before.leader
            #expect(leaderID != 0 && leaderID != before.memberID)

            // Forged messages to the follower in the leader's name: a heartbeat from a much
            // higher term (would make it a follower of a new term), a proposal (would be
            // forwarded and committed), a snapshot body (would be stored and installed).
            let cluster = before.clusterID, to = before.memberID
            let heartbeat = ForgedPeer.batch(cluster: cluster, from: leaderID, to: to,
                                             Raft.Message(type: .heartbeat, to: to, from: leaderID, term: before.term + 10))
            let proposal = ForgedPeer.batch(cluster: cluster, from: leaderID, to: to,
                                            Raft.Message(type: .propose, to: to, from: leaderID,
                                                         entries: [Entry(term: 0, index: 0, data: Array("forged".utf8))]))
            let body = [UInt8](repeating: 0x5a, count: 4096)
            let bodyPath = fx.dir + "/body.bin"
            FileManager.default.createFile(atPath: bodyPath, contents: Data(body))
            let digest = try await runTool("/usr/bin/openssl", ["dgst", "-sha256", "-r", bodyPath])
            let hex = Array(digest.stdout.prefix(64))
            let sha = stride(from: 0, to: hex.count, by: 2).compactMap { UInt8(String(hex[$0...$0 + 1]), radix: 16) }
            let index = before.raftIndex + 1000
            let snapMessage = Raft.Message(type: .snapshot, to: to, from: leaderID, term: before.term,
                                           snapshot: Snapshot(metadata: SnapshotMetadata(index: index, term: before.term)))
            let header = ForgedPeer.field(1, cluster) + ForgedPeer.field(2, leaderID) + ForgedPeer.field(3, to)
                + ForgedPeer.field(4, index) + ForgedPeer.field(5, before.term) + ForgedPeer.field(6, UInt64(body.count))
                + ForgedPeer.field(7, bytes: sha) + ForgedPeer.field(8, bytes: snapMessage.encode())
            let snapshot = ForgedPeer.frame(ForgedPeer.field(1, bytes: header)) + ForgedPeer.frame(ForgedPeer.field(2, bytes: body))
            #expect(sha.count == 32, "\(digest)")

            for cert in [stranger, wrongCN, elsewhere] {
                _ = try await ForgedPeer.send(fx, port: follower.peerPort, method: "Messages", body: heartbeat + proposal, cert: cert)
                _ = try await ForgedPeer.send(fx, port: follower.peerPort, method: "SendSnapshot", body: snapshot, cert: cert)
            }
            #expect(try await Self.refused(follower, "identity_mismatch") >= 2)
            let after = try await EndpointStatus.of(follower)
            #expect(after.term == before.term, "a forged heartbeat moved the term")
            #expect(after.raftIndex == before.raftIndex, "a forged proposal was appended")
            #expect(after.revision == before.revision)
            let snapDir = follower.dataDir + "/member/snap"
            let stored = try FileManager.default.contentsOfDirectory(atPath: snapDir).filter { $0.contains(".snap.db") }
            #expect(stored.isEmpty, "\(stored)")
            #expect(try await follower.ctl("get", "", "--prefix", "--keys-only").lines.filter { !$0.isEmpty } == ["k0"])

            // The forger is real: with a certificate naming the members' host, the same forged
            // heartbeat is stepped (a stolen member certificate is a member).
            _ = try await ForgedPeer.send(fx, port: follower.peerPort, method: "Messages", body: heartbeat, cert: peer)
            try await E2E.waitUntil("the member certificate's forged heartbeat is stepped", limit: .seconds(10)) {
                try await EndpointStatus.of(follower).term > before.term
            }
        }
    }

    /// `--peer-crl-file`: members whose certificates are good form the cluster through the
    /// revocation check; a joiner whose certificate is on the list fails the handshake, is
    /// counted, and never learns the membership.
    @Test func revokedPeerCertificateCannotJoin() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let peer = try await fx.issuePeer("peer", cn: "peer", serial: 110)
        let revoked = try await fx.issuePeer("revoked", cn: "peer", serial: 111)
        try await fx.revoke("revoked")
        let crl = fx.dir + "/peer.crl"
        try await fx.writeCRL(crl)
        let peerArgs = fx.peerFlags(peer) + ["--peer-crl-file", crl]
        try await Self.withCluster(fx, 2, clientCert: nil, peerArgs: { _ in peerArgs }) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k0", "v0").status == 0
            }
            try await Self.expectJoinRefused(fx, cert: revoked, name: "j-revoked", reason: "tls_handshake", cluster: ms)
            #expect(try await ms[1].ctl("put", "k1", "v1").status == 0)
        }
    }

    @Test func replacedPeerCertificatesServeNewConnections() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        let first = try await fx.issuePeer("peer1", cn: "peer-one", serial: 201)
        let second = try await fx.issuePeer("peer2", cn: "peer-two", serial: 202)
        var live: [(cert: String, key: String)] = []
        for i in 1...3 {
            let l = (cert: fx.dir + "/live\(i).pem", key: fx.dir + "/live\(i).key")
            try FileManager.default.copyItem(atPath: first.cert, toPath: l.cert)
            try FileManager.default.copyItem(atPath: first.key, toPath: l.key)
            live.append(l)
        }
        try await Self.withCluster(fx, 3, clientCert: nil, peerArgs: { fx.peerFlags(live[$0 - 1]) }) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k0", "v0").status == 0
            }
            // The certificate a new connection to `m`'s peer port is served (curl's verbose log).
            func served(_ m: Member) async throws -> String {
                try await runTool("/usr/bin/curl", ["-sv", "-m", "10", "--http2", "--cacert", fx.ca, "--cert", second.cert,
                                                    "--key", second.key, "https://127.0.0.1:\(m.peerPort)/"]).stderr
            }
            let old = try await served(ms[0])
            #expect(old.contains("CN=peer-one"), "\(old.suffix(2000))")
            // Writes keep flowing while every member's files are replaced (atomic renames).
            let writer = Task { () -> [String] in
                var failures: [String] = []
                for i in 0..<30 {
                    let out = try await ms[i % 3].ctl("put", "r\(i)", "v\(i)")
                    if out.status != 0 { failures.append("\(i): \(out.stderr)") }
                }
                return failures
            }
            for l in live {
                for (from, to) in [(second.key, l.key), (second.cert, l.cert)] {
                    try? FileManager.default.removeItem(atPath: to + ".new")
                    try FileManager.default.copyItem(atPath: from, toPath: to + ".new")
                    #expect(rename(to + ".new", to) == 0)
                }
            }
            let failures = try await writer.value
            #expect(failures.isEmpty, "\(failures)")
            // New connections get the new certificate, on the listener...
            let now = try await served(ms[0])
            #expect(now.contains("CN=peer-two") && !now.contains("CN=peer-one"), "\(now.suffix(2000))")
            // ... and from the dialler: m2 restarts, m1 and m3 dial it again with the new files.
            #expect(try await ms[1].stop() == 0)
            try await ms[1].start()
            try await E2E.waitUntil("m2 back in the cluster", limit: .seconds(20)) {
                try await ms[1].ctl("get", "r29", "--consistency=l").lines == ["r29", "v29"]
            }
            try await E2E.waitUntil("m1's dialler reloaded the files", limit: .seconds(10)) {
                ms[0].stderrText.contains("peer dialler TLS certificate files changed")
            }
            #expect(ms[0].stderrText.contains("peer TLS certificate files changed"))
            #expect(try await ms[2].ctl("put", "after", "rotation").lines == ["OK"])
        }
    }

    @Test func autoTLSMembersFormACluster() async throws {
        let fx = try await TLSFixture()
        defer { fx.cleanUp() }
        try await Self.withCluster(fx, 3, clientCert: nil, peerArgs: { _ in ["--peer-auto-tls"] }) { ms in
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ms[0].ctl("put", "k", "v").status == 0
            }
            #expect(try await ms[2].ctl("get", "k", "--consistency=l").lines == ["k", "v"])
            for m in ms {
                #expect(FileManager.default.fileExists(atPath: m.dataDir + "/fixtures/peer/cert.pem"))
                #expect(m.stderrText.contains("encrypted but peers are not authenticated"))
                #expect(!m.stderrText.contains("neither encrypted nor authenticated"))
            }
            // The peer port speaks TLS only.
            let plain = try await runTool("/usr/bin/curl", ["-s", "-m", "5", "--http2-prior-knowledge", "http://127.0.0.1:\(ms[0].peerPort)/"])
            #expect(plain.status != 0)
        }
        // Without peer TLS the start log says the peer port must be on a private network.
        try await Member.with { m in
            #expect(m.stderrText.contains("neither encrypted nor authenticated"))
        }
    }

    @Test func badPeerTLSConfigurationsAreRefused() async throws {
        let port = try E2E.freePort()
        let https = "https://127.0.0.1:\(port)"
        let urls = ["--listen-peer-urls", https, "--initial-advertise-peer-urls", https, "--initial-cluster", "m1=\(https)"]
        for (args, message) in [
            (urls, "must be provided for peer url \(https)"),
            (urls + ["--peer-auto-tls", "--peer-crl-file", "/nonexistent"], "--peer-crl-file needs --peer-trusted-ca-file"),
            (urls + ["--peer-auto-tls", "--peer-client-cert-auth"], "--peer-client-cert-auth cannot be used with --peer-auto-tls"),
            (urls + ["--peer-cert-file", "/nonexistent.pem", "--peer-key-file", "/nonexistent.key"], "peer TLS: cannot load --peer-cert-file"),
            (urls + ["--peer-auto-tls", "--peer-cert-allowed-cn", "peer"], "need --peer-client-cert-auth"),
            (urls + ["--peer-cert-file", "/x.pem", "--peer-key-file", "/x.key", "--peer-client-cert-auth",
                     "--peer-cert-allowed-cn", "peer", "--peer-cert-allowed-hostname", "peer.example"], "mutually exclusive"),
            (["--listen-peer-urls", https, "--initial-advertise-peer-urls", "http://127.0.0.1:\(port)",
              "--initial-cluster", "m1=http://127.0.0.1:\(port)"], "must be provided for peer url"),
        ] {
            let m = try Member(extraArgs: args)
            defer { try? FileManager.default.removeItem(atPath: m.dataDir) }
            await #expect(throws: (any Error).self) { try await m.start() }
            #expect(m.stderrText.contains(message), "\(args): \(m.stderrText.suffix(500))")
            await m.cleanUp()
        }
    }
}
