import Foundation
import Testing

/// etcd's authentication and RBAC driven by the real etcdctl 3.4 (and curl on the gateway).
@Suite("E2E auth", .serialized, .enabled(if: E2E.available, "swetcd or etcdctl not found"))
struct E2EAuthTests {
    @Test func usersRolesPermissionsAndTokens() async throws {
        try await Member.with(extraArgs: ["--bcrypt-cost", "4"]) { m in
            func ctl(_ user: String?, _ args: String...) async throws -> CommandOutput {
                try await m.ctl((user.map { ["--user", $0] } ?? []) + args)
            }
            let root = "root:rootpw", alice = "alice:alicepw"
            try await E2E.waitUntil("member serves") { try await ctl(nil, "put", "foo/a", "1").status == 0 }
            // Enabling needs a root user with the root role.
            #expect(try await ctl(nil, "auth", "enable").stderr.contains("etcdserver: root user does not exist"))
            #expect(try await ctl(nil, "user", "add", root).lines == ["User root created"])
            #expect(try await ctl(nil, "role", "add", "reader").lines == ["Role reader created"])
            #expect(try await ctl(nil, "role", "grant-permission", "reader", "read", "foo/", "--prefix").status == 0)
            #expect(try await ctl(nil, "role", "add", "writer").status == 0)
            #expect(try await ctl(nil, "role", "grant-permission", "writer", "write", "w/", "--prefix").status == 0)
            #expect(try await ctl(nil, "user", "add", alice).status == 0)
            #expect(try await ctl(nil, "user", "grant-role", "alice", "reader").status == 0)
            #expect(try await ctl(nil, "user", "grant-role", "alice", "writer").status == 0)
            #expect(try await ctl(nil, "user", "add", "root:again").stderr.contains("etcdserver: user name already exists"))
            // etcdctl answers "root user does not have root role" by adding the role and granting
            // it, then enables.
            #expect(try await ctl(nil, "auth", "enable").lines == ["Authentication Enabled"])
            #expect(try await ctl(root, "user", "get", "root").lines == ["User: root", "Roles: root"])

            // Without credentials, with wrong ones.
            #expect(try await ctl(nil, "get", "foo/a").stderr.contains("etcdserver: user name is empty"))
            #expect(try await ctl("alice:wrong", "get", "foo/a").stderr
                .contains("etcdserver: authentication failed, invalid user ID or password"))
            // Read-only on foo/, write-only on w/.
            #expect(try await ctl(alice, "get", "foo/a").lines == ["foo/a", "1"])
            #expect(try await ctl(alice, "get", "foo/", "--prefix", "--keys-only").lines == ["foo/a"])
            #expect(try await ctl(alice, "put", "foo/a", "2").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl(alice, "get", "bar").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl(alice, "get", "", "--from-key").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl(alice, "put", "w/1", "x").lines == ["OK"])
            #expect(try await ctl(alice, "get", "w/1").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl(root, "get", "w/1").lines == ["w/1", "x"])
            // A txn with one denied op is refused whole.
            let txn = try await m.ctl(["--user", alice, "txn"], input: "\nput w/2 y\nput foo/b z\n\n\n")
            #expect(txn.stderr.contains("etcdserver: permission denied"), "\(txn.stdout) \(txn.stderr)")
            #expect(try await ctl(root, "get", "w/2").lines.isEmpty)
            // Admin operations need root.
            #expect(try await ctl(alice, "compaction", "2").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl(alice, "defrag").stderr.contains("permission denied"))
            #expect(try await ctl(alice, "user", "add", "mallory:x").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl(alice, "role", "list").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl(alice, "alarm", "list").stderr.contains("permission denied"))
            #expect(try await ctl(root, "user", "list").lines == ["alice", "root"])
            #expect(try await ctl(root, "role", "get", "reader").stdout.contains("foo/"))
            // A lease attach needs write permission on the key.
            let grant = try await ctl(alice, "lease", "grant", "60")
            let leaseID = try #require(grant.stdout.split(separator: " ").dropFirst().first.map(String.init))
            #expect(try await ctl(alice, "put", "foo/c", "v", "--lease", leaseID).stderr.contains("permission denied"))
            #expect(try await ctl(alice, "put", "w/c", "v", "--lease", leaseID).lines == ["OK"])
            // A watch outside the permission is cancelled.
            let w = try await ctl(alice, "watch", "bar")
            #expect((w.stdout + w.stderr).contains("permission denied"), "watch: \(w.stdout) \(w.stderr)")

            // The gateway: a token from /v3/auth/authenticate in the Authorization header; a
            // password change makes it invalid.
            let base = "http://\(m.endpoint)"
            let auth = try await curl(["-s", "-X", "POST", "\(base)/v3/auth/authenticate",
                                       "-d", #"{"name":"alice","password":"alicepw"}"#]).stdout
            let token = try #require(jsonString(auth, "token"), "authenticate: \(auth)")
            let read = try await curl(["-s", "-X", "POST", "\(base)/v3/kv/range", "-H", "Authorization: \(token)",
                                       "-d", #"{"key":"Zm9vL2E="}"#]).stdout
            #expect(read.contains(#""kvs""#), "range with token: \(read)")
            let noToken = try await curl(["-s", "-X", "POST", "\(base)/v3/kv/range", "-d", #"{"key":"Zm9vL2E="}"#]).stdout
            #expect(noToken.contains("etcdserver: user name is empty"), "\(noToken)")
            // The Lock service runs with the caller's rights ("bar" is outside alice's roles).
            let lock = try await curl(["-s", "-X", "POST", "\(base)/v3/lock/lock", "-H", "Authorization: \(token)",
                                       "-d", #"{"name":"YmFy","lease":"\#(Int64(leaseID, radix: 16) ?? 0)"}"#]).stdout
            #expect(lock.contains("etcdserver: permission denied"), "lock: \(lock)")
            // The health check needs no user.
            let health = try await curl(["-s", "\(base)/health"]).stdout
            #expect(health.contains(#""health":"true""#), "health with auth enabled: \(health)")
            #expect(try await m.ctl(["--user", root, "user", "passwd", "alice", "--interactive=false"], input: "newpw\n").status == 0)
            let stale = try await curl(["-s", "-X", "POST", "\(base)/v3/kv/range", "-H", "Authorization: \(token)",
                                        "-d", #"{"key":"Zm9vL2E="}"#]).stdout
            #expect(stale.contains("etcdserver: invalid auth token"), "\(stale)")
            #expect(try await ctl("alice:newpw", "get", "foo/a").lines == ["foo/a", "1"])

            // Everything survives a restart.
            #expect(try await m.stop() == 0)
            try await m.start()
            try await E2E.waitUntil("restarted member serves") { try await ctl(root, "get", "foo/a").status == 0 }
            #expect(try await ctl(nil, "get", "foo/a").stderr.contains("etcdserver: user name is empty"))
            #expect(try await ctl("alice:newpw", "put", "foo/a", "3").stderr.contains("permission denied"))
            #expect(try await ctl(root, "auth", "disable").lines == ["Authentication Disabled"])
            #expect(try await ctl(nil, "get", "foo/a").lines == ["foo/a", "1"])
        }
    }

    /// Auth on a 3-member cluster: each member enforces the replicated users and roles (etcdctl
    /// authenticates against the member it talks to, tokens are per member); the state survives
    /// a full-cluster restart; a member down while users and roles changed comes back through a
    /// snapshot install (the leader wrote far past its retained log) and enforces the new rules.
    @Test(.enabled(if: E2E.benchPath != nil, "swetcd-bench not found"))
    func threeMembersRestartAndSnapshotInstall() async throws {
        try await Member.withCluster(3, extraArgs: ["--snapshot-count", "100", "--bcrypt-cost", "4"]) { ms in
            func ctl(_ m: Member, _ user: String?, _ args: String...) async throws -> CommandOutput {
                try await m.ctl((user.map { ["--user", $0] } ?? []) + args)
            }
            let root = "root:rootpw", alice = "alice:alicepw", carol = "carol:carolpw"
            try await E2E.waitUntil("a leader accepting writes", limit: .seconds(20)) {
                try await ctl(ms[0], nil, "put", "foo/a", "1").status == 0
            }
            // Set up through different members (followers forward to the leader).
            #expect(try await ctl(ms[0], nil, "user", "add", root).status == 0)
            #expect(try await ctl(ms[1], nil, "role", "add", "reader").status == 0)
            #expect(try await ctl(ms[2], nil, "role", "grant-permission", "reader", "read", "foo/", "--prefix").status == 0)
            #expect(try await ctl(ms[0], nil, "user", "add", alice).status == 0)
            #expect(try await ctl(ms[1], nil, "user", "grant-role", "alice", "reader").status == 0)
            #expect(try await ctl(ms[2], nil, "user", "add", carol).status == 0)
            #expect(try await ctl(ms[1], nil, "auth", "enable").lines == ["Authentication Enabled"])

            /// The rules before the outage, as every member must enforce them.
            func checkInitialRules(_ m: Member) async throws {
                try await E2E.waitUntil("\(m.name) enforces auth", limit: .seconds(20)) {
                    try await ctl(m, nil, "get", "foo/a").stderr.contains("etcdserver: user name is empty")
                }
                #expect(try await ctl(m, alice, "get", "foo/a").lines == ["foo/a", "1"], "\(m.name)")
                #expect(try await ctl(m, alice, "put", "foo/a", "2").stderr.contains("etcdserver: permission denied"), "\(m.name)")
                #expect(try await ctl(m, alice, "get", "bar").stderr.contains("etcdserver: permission denied"), "\(m.name)")
                #expect(try await ctl(m, "alice:wrong", "get", "foo/a").stderr
                    .contains("etcdserver: authentication failed, invalid user ID or password"), "\(m.name)")
                #expect(try await ctl(m, carol, "get", "foo/a").stderr.contains("etcdserver: permission denied"), "\(m.name)")
                #expect(try await ctl(m, root, "put", "bar", "\(m.name)").lines == ["OK"], "\(m.name)")
                #expect(try await ctl(m, root, "user", "list").lines == ["alice", "carol", "root"], "\(m.name)")
            }
            for m in ms { try await checkInitialRules(m) }

            // A full-cluster restart: every member reloads the auth state from its backend.
            for m in ms { #expect(try await m.stop() == 0) }
            for m in ms { try await m.start() }
            try await E2E.waitUntil("the restarted cluster accepts writes", limit: .seconds(30)) {
                try await ctl(ms[0], root, "put", "after/restart", "1").status == 0
            }
            for m in ms { try await checkInitialRules(m) }

            // A follower goes down; meanwhile alice gains write on foo/, bob is added as a reader
            // and carol is deleted; then the leader writes far past --snapshot-count and the
            // entries it keeps for slow followers.
            let lead = try await Member.agreedLeader(of: ms)
            let behind = try #require(ms.first { $0 !== lead })
            try await behind.crash()
            #expect(try await ctl(lead, root, "role", "add", "writer").status == 0)
            #expect(try await ctl(lead, root, "role", "grant-permission", "writer", "readwrite", "foo/", "--prefix").status == 0)
            #expect(try await ctl(lead, root, "user", "grant-role", "alice", "writer").status == 0)
            #expect(try await ctl(lead, root, "user", "add", "bob:bobpw").status == 0)
            #expect(try await ctl(lead, root, "user", "grant-role", "bob", "reader").status == 0)
            #expect(try await ctl(lead, root, "user", "delete", "carol").status == 0)
            let bench = try await E2E.runBench([
                "put", "--endpoints", lead.endpoint, "--user", root, "--clients", "16", "--conns", "2",
                "--total", "6000", "--key-space-size", "6000", "--sequential-keys", "--key-prefix", "snap/", "--key-size", "12",
            ])
            #expect(bench.status == 0, "\(bench.stdout)\(bench.stderr)")

            try await behind.start()
            try await E2E.waitUntil("the follower installs a snapshot", limit: .seconds(60)) {
                behind.stderrText.contains("\"installed snapshot from the leader\"")
            }
            // Once it has applied as far as the leader, the new rules hold on it (checked there:
            // etcdctl authenticates against the member it talks to).
            let applied = try await lead.appliedIndex(asUser: "root:rootpw")
            try await E2E.waitUntil("the follower applied as far as the leader", limit: .seconds(30)) {
                try await behind.appliedIndex(asUser: "root:rootpw") >= applied
            }
            #expect(try await ctl(behind, "alice:alicepw", "put", "foo/b", "2").lines == ["OK"])
            #expect(try await ctl(behind, alice, "get", "bar").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl(behind, "bob:bobpw", "get", "foo/b", "--consistency=s").lines == ["foo/b", "2"])
            #expect(try await ctl(behind, "bob:bobpw", "put", "foo/b", "3").stderr.contains("etcdserver: permission denied"))
            #expect(try await ctl(behind, carol, "get", "foo/a").stderr
                .contains("etcdserver: authentication failed, invalid user ID or password"))
            #expect(try await ctl(behind, root, "user", "list").lines == ["alice", "bob", "root"])
            #expect(try await ctl(behind, root, "role", "get", "writer").stdout.contains("foo/"))
            #expect(try await ctl(behind, nil, "get", "foo/a").stderr.contains("etcdserver: user name is empty"))
        }
    }
}

/// The string value of a top-level field of a JSON object, or nil.
func jsonString(_ json: String, _ field: String) -> String? {
    guard let data = json.data(using: .utf8),
          let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
    return obj[field] as? String
}

extension E2EAuthTests {
    /// Waits until `m` serves, writes foo/a = 1, then enables auth with users root and alice,
    /// alice holding role "reader" (read on prefix foo/).
    static func enableAuthWithReader(_ m: Member) async throws {
        try await E2E.waitUntil("member serves") { try await m.ctl("put", "foo/a", "1").status == 0 }
        for args in [["user", "add", "root:rootpw"], ["role", "add", "reader"],
                     ["role", "grant-permission", "reader", "read", "foo/", "--prefix"],
                     ["user", "add", "alice:alicepw"], ["user", "grant-role", "alice", "reader"], ["auth", "enable"]] {
            let r = try await m.ctl(args)
            #expect(r.status == 0, "\(args): \(r.stderr)")
        }
    }

    /// JWT tokens (`--auth-token jwt,...`, keys made by openssl): etcdctl works with them; a
    /// token issued before an auth change is refused with "revision of auth store is old".
    @Test func jwtTokens() async throws {
        let dir = try E2E.tempDir("jwt")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for args in [["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "\(dir)/k"],
                     ["pkey", "-in", "\(dir)/k", "-pubout", "-out", "\(dir)/k.pub"]] {
            #expect(try runTool("/usr/bin/openssl", args) == 0)
        }
        let option = "jwt,pub-key=\(dir)/k.pub,priv-key=\(dir)/k,sign-method=RS256,ttl=5m"
        try await Member.with(extraArgs: ["--bcrypt-cost", "4", "--auth-token", option]) { m in
            try await Self.enableAuthWithReader(m)
            #expect(try await m.ctl(["--user", "alice:alicepw", "get", "foo/a"]).lines == ["foo/a", "1"])
            #expect(try await m.ctl(["--user", "alice:alicepw", "put", "foo/a", "2"]).stderr.contains("permission denied"))
            let base = "http://\(m.endpoint)"
            let auth = try await curl(["-s", "-X", "POST", "\(base)/v3/auth/authenticate",
                                       "-d", #"{"name":"alice","password":"alicepw"}"#]).stdout
            let token = try #require(jsonString(auth, "token"), "authenticate: \(auth)")
            #expect(token.split(separator: ".").count == 3, "a JWT: \(token)")
            func range() async throws -> String {
                try await curl(["-s", "-X", "POST", "\(base)/v3/kv/range", "-H", "Authorization: \(token)",
                                "-d", #"{"key":"Zm9vL2E="}"#]).stdout
            }
            #expect(try await range().contains(#""kvs""#))
            #expect(try await m.ctl(["--user", "root:rootpw", "role", "add", "other"]).status == 0)
            #expect(try await range().contains("etcdserver: revision of auth store is old"))
            #expect(try await m.ctl(["--user", "alice:alicepw", "get", "foo/a"]).lines == ["foo/a", "1"])
        }
    }
}

extension E2EAuthTests {
    /// `--auth-token-ttl` with simple tokens: a token left unused for the TTL is refused with
    /// etcd's "invalid auth token"; a token in use stays valid (etcd extends it on each use);
    /// etcdctl, which authenticates at each start, is not affected.
    @Test func simpleTokensExpireAfterTheTTLUnlessUsed() async throws {
        try await Member.with(extraArgs: ["--bcrypt-cost", "4", "--auth-token-ttl", "2"]) { m in
            try await Self.enableAuthWithReader(m)
            let base = "http://\(m.endpoint)"
            func authenticate() async throws -> String {
                let out = try await curl(["-s", "-X", "POST", "\(base)/v3/auth/authenticate",
                                          "-d", #"{"name":"alice","password":"alicepw"}"#]).stdout
                return try #require(jsonString(out, "token"), "authenticate: \(out)")
            }
            func range(_ token: String) async throws -> String {
                try await curl(["-s", "-X", "POST", "\(base)/v3/kv/range", "-H", "Authorization: \(token)",
                                "-d", #"{"key":"Zm9vL2E="}"#]).stdout
            }
            // Tokens issued together; the poll below spends one unused token per round, so the
            // polling itself does not extend them. `kept` is used every round.
            let issued = ContinuousClock.now
            var fresh: [String] = []
            for _ in 0..<24 { fresh.append(try await authenticate()) }
            let kept = try await authenticate()
            let issuing = ContinuousClock.now - issued
            var expiredAfter: Duration?
            var validRounds = 0
            for token in fresh {
                let kept = try await range(kept)
                #expect(kept.contains(#""kvs""#), "a token in use: \(kept)")
                let r = try await range(token)
                if r.contains("etcdserver: invalid auth token") {
                    expiredAfter = ContinuousClock.now - issued
                    break
                }
                #expect(r.contains(#""kvs""#), "\(r)")
                validRounds += 1
                try await Task.sleep(for: .milliseconds(250))  // pacing of the rounds, not a synchronisation
            }
            let after = try #require(expiredAfter, "no token expired within \(fresh.count) rounds of 250 ms")
            // Never early; tokens issued in under a second served at least the first round.
            #expect(after >= .seconds(2), "expired after \(after)")
            if issuing < .seconds(1) { #expect(validRounds >= 1, "issuing took \(issuing)") }
            // The token in use all along, past the TTL, still works; etcdctl authenticates anew.
            #expect(try await range(kept).contains(#""kvs""#))
            #expect(try await m.ctl(["--user", "alice:alicepw", "get", "foo/a"]).lines == ["foo/a", "1"])
        }
    }
}

extension E2EAuthTests {
    /// etcd's clientv3 (Tests/E2ETests/go/tokenrefresh) with a user and password outlives its
    /// simple token: the server's answer to the expired token is exactly etcd's
    /// ErrInvalidAuthToken, on which clientv3 authenticates again and retries.
    @Test func clientv3AuthenticatesAgainAfterItsTokenExpired() async throws {
        let program = try await GoChecks.binary("tokenrefresh")
        try await Member.with(extraArgs: ["--bcrypt-cost", "4", "--auth-token-ttl", "2"]) { m in
            try await Self.enableAuthWithReader(m)
            let run = try await runTool(program, ["--endpoint", m.endpoint, "--user", "alice", "--password", "alicepw",
                                                  "--key", "foo/a", "--rounds", "40"], limit: 60)
            #expect(run.status == 0 && run.stdout.contains("tokenrefresh ok"), "\(run.stdout) \(run.stderr.suffix(2000))")
        }
    }
}
