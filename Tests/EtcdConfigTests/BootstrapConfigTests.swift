import EtcdConfig
import Foundation
import Testing

private func load(_ args: [String]) throws -> LoadedConfig {
    guard case .run(let l) = try ConfigLoader.load(arguments: args, environment: [:]) else {
        throw ConfigError("expected a configuration to run with")
    }
    return l
}

private func refusal(_ args: [String]) -> String? {
    do { _ = try ConfigLoader.load(arguments: args, environment: [:]); return nil } catch { return "\(error)" }
}

/// The bootstrap modes the loader hands to the server: static, DNS SRV, discovery URL.
@Suite struct BootstrapConfigTests {
    @Test func staticClusterIsTheDefault() throws {
        let l = try load([])
        #expect(l.bootstrap == .staticCluster)
        #expect(l.initialCluster.text == "default=http://localhost:2380")
    }

    /// With --discovery-srv and a name other than "default" the loader no longer blames
    /// --initial-cluster: the member alone stands in until the records are read at start.
    @Test func dnsSRVWithANameLoads() throws {
        let l = try load(["--name", "infra1", "--discovery-srv", "example.com", "--discovery-srv-name", "prod",
                          "--initial-advertise-peer-urls", "http://10.0.0.1:2380"])
        #expect(l.bootstrap == .dnsSRV(domain: "example.com", serviceName: "prod"))
        #expect(l.initialCluster.text == "infra1=http://10.0.0.1:2380")
        #expect(l.warnings.isEmpty, "\(l.warnings)")
    }

    @Test func discoveryURLLoadsWithTheURLAsToken() throws {
        let url = "http://127.0.0.1:8087/6c007a14875d53d9bf0ef5a6fc0257c817f0fb83"
        let l = try load(["--name", "n1", "--discovery", url, "--discovery-proxy", "127.0.0.1:3128",
                          "--initial-advertise-peer-urls", "http://10.0.0.1:2380"])
        #expect(l.bootstrap == .discoveryURL(url: url, proxy: "127.0.0.1:3128"))
        // As in etcd, member IDs under discovery derive from the discovery URL as the token.
        #expect(l.initialCluster.token == url)
        #expect(try load(["--discovery", url, "--discovery-fallback", "exit"]).bootstrap == .discoveryURL(url: url, proxy: ""))
    }

    @Test(arguments: [
        (["--discovery-srv", "bad domain"], "is not a valid DNS domain name"),
        (["--discovery-srv", "a..b"], "is not a valid DNS domain name"),
        (["--discovery-srv", "example.com", "--discovery-srv-name", "x.y"], "must be a short DNS label"),
        (["--discovery", "ftp://x/abc"], "discovery: invalid URL"),
        (["--discovery", "http://127.0.0.1:8087"], "has no token path"),
        (["--discovery", "http://127.0.0.1:8087/t?x=1"], "must not have a query"),
        (["--discovery", "http://127.0.0.1:8087/t", "--initial-cluster-state", "existing"],
         "discovery URL should not be set when joining existing initial cluster"),
        (["--discovery", "http://127.0.0.1:8087/t", "--discovery-proxy", "socks5://p:1"], "invalid proxy address"),
        (["--discovery", "http://127.0.0.1:8087/t", "--discovery-srv", "example.com"], "multiple discovery or bootstrap flags are set"),
        (["--discovery-token", "t"], "--discovery-token and --discovery-endpoints must be given together"),
        (["--discovery-endpoints", "127.0.0.1:2379"], "--discovery-token and --discovery-endpoints must be given together"),
        (["--discovery-token", "a/b", "--discovery-endpoints", "127.0.0.1:2379"], "without '/'"),
        (["--discovery-token", "t", "--discovery-endpoints", "ftp://x:1"], "expected host:port"),
        (["--discovery-token", "t", "--discovery-endpoints", "127.0.0.1:2379", "--discovery-cert", "c.pem"], "--discovery-cert and --discovery-key"),
        (["--discovery-token", "t", "--discovery-endpoints", "127.0.0.1:2379", "--initial-cluster-state", "existing"],
         "discovery endpoints should not be set when joining existing initial cluster"),
        (["--discovery-token", "t", "--discovery-endpoints", "127.0.0.1:2379", "--initial-cluster", "a=http://127.0.0.1:2380"],
         "multiple discovery or bootstrap flags are set"),
    ])
    func badBootstrapFlagsAreRefused(args: [String], text: String) {
        let msg = refusal(args)
        #expect(msg?.contains(text) == true, "\(args): \(msg ?? "accepted")")
    }

    @Test func discoveryPasswordIsNotEchoed() throws {
        let msg = refusal(["--discovery-token", "t", "--discovery-endpoints", "127.0.0.1:2379", "--discovery-password", "hunter2"]) ?? ""
        #expect(msg.contains("--discovery-password needs --discovery-user"))
        #expect(!msg.contains("hunter2"))
        let l = try load(["--discovery-password", "hunter2"])
        #expect(l.warnings == ["--discovery-password has no effect without --discovery-token and --discovery-endpoints"])
    }

    @Test func v3DiscoveryLoadsWithTheTokenAsClusterToken() throws {
        let l = try load(["--name", "n1", "--discovery-token", "abc", "--discovery-endpoints", "127.0.0.1:2379,https://10.0.0.1:2379",
                          "--discovery-request-timeout", "3s", "--discovery-user", "root:pw"])
        guard case .v3Discovery(let d) = l.bootstrap else { Issue.record("\(l.bootstrap)"); return }
        #expect(d.endpoints == ["127.0.0.1:2379", "https://10.0.0.1:2379"])
        #expect(d.requestTimeout == .seconds(3))
        #expect(d.insecureTransport)
        #expect(l.initialCluster.token == "abc")
        #expect(l.warnings.isEmpty, "\(l.warnings)")
    }

    @Test func srvNameOrProxyWithoutTheirModeWarn() throws {
        let l = try load(["--discovery-srv-name", "prod", "--discovery-proxy", "127.0.0.1:3128"])
        #expect(l.warnings.contains("--discovery-srv-name has no effect without --discovery-srv"))
        #expect(l.warnings.contains("--discovery-proxy has no effect without --discovery"))
    }
}
