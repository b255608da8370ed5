import EtcdConfig
import Foundation
import Testing

@testable import Server

/// A resolver answering from tables (the real one is exercised by E2EBootstrapTests).
private struct TableResolver: BootstrapResolver {
    var srv: [String: [SRVRecord]] = [:]
    var hosts: [String: Set<String>] = [:]

    func lookupSRV(_ name: String) throws -> [SRVRecord] {
        guard let r = srv[name], !r.isEmpty else { throw DNSLookupError(description: "lookup \(name): no such host") }
        return r
    }

    func addresses(of host: String) throws -> Set<String> {
        if let a = hosts[host] { return a }
        if host.allSatisfy({ $0.isNumber || $0 == "." }) { return [host] }
        throw DNSLookupError(description: "lookup \(host): no such host")
    }
}

private func url(_ s: String) throws -> EndpointURL { try EndpointURL(parsing: s) }

@Suite struct DNSBootstrapTests {
    let hosts: [String: Set<String>] = [
        "m1.example.com": ["10.0.0.1"], "m2.example.com": ["10.0.0.2"], "m3.example.com": ["10.0.0.3"],
    ]

    func records(_ port: UInt16 = 2380) -> [SRVRecord] {
        (1...3).map { SRVRecord(priority: 0, weight: 0, port: port, target: "m\($0).example.com") }
    }

    /// Only the plain record set exists (etcd 3.4 fails here): the cluster comes from it, and
    /// this member is found by address although it advertises an IP.
    @Test func plainRecordsAloneFormTheCluster() throws {
        let r = TableResolver(srv: ["_etcd-server._tcp.example.com.": records()], hosts: hosts)
        let result = try DNSBootstrap.cluster(domain: "example.com", serviceName: "", name: "infra2",
                                              advertisePeerURLs: [try url("http://10.0.0.2:2380")],
                                              token: "etcd-cluster", resolver: r)
        #expect(result.cluster.members.count == 3)
        let me = try #require(result.cluster.member(named: "infra2"))
        #expect(me.peerURLs == [try url("http://m2.example.com:2380")])
        // The IDs are those of --initial-cluster with the SRV targets: the same on every member.
        let expected = try InitialCluster(parsing: "a=http://m1.example.com:2380,infra2=http://m2.example.com:2380,c=http://m3.example.com:2380",
                                          token: "etcd-cluster")
        #expect(result.cluster.members.map(\.id) == expected.members.map(\.id))
        #expect(result.cluster.clusterID == expected.clusterID)
    }

    @Test func sslAndPlainRecordsAreCombinedAndTheServiceNameIsASuffix() throws {
        let r = TableResolver(srv: [
            "_etcd-server-ssl-prod._tcp.example.com.": [SRVRecord(priority: 0, weight: 0, port: 2380, target: "m1.example.com.")],
            "_etcd-server-prod._tcp.example.com.": [SRVRecord(priority: 0, weight: 0, port: 2380, target: "m2.example.com")],
            "_etcd-server._tcp.example.com.": records(),
        ], hosts: hosts)
        let result = try DNSBootstrap.cluster(domain: "example.com.", serviceName: "prod", name: "one",
                                              advertisePeerURLs: [try url("https://10.0.0.1:2380")],
                                              token: "t", resolver: r)
        #expect(Set(result.cluster.members.flatMap(\.peerURLs)) == [try url("https://m1.example.com:2380"), try url("http://m2.example.com:2380")])
        #expect(result.cluster.member(named: "one")?.peerURLs == [try url("https://m1.example.com:2380")])
    }

    @Test func aMemberThatIsNoTargetIsRefused() throws {
        let r = TableResolver(srv: ["_etcd-server._tcp.example.com.": records()], hosts: hosts)
        #expect {
            try DNSBootstrap.cluster(domain: "example.com", serviceName: "", name: "m4",
                                     advertisePeerURLs: [try url("http://10.0.0.4:2380")], token: "t", resolver: r)
        } throws: { "\($0)".contains("couldn't find local name \"m4\" in the initial cluster configuration from DNS SRV records of example.com") }
        // The right address on another port is not this member either.
        #expect(throws: ServerStartError.self) {
            try DNSBootstrap.cluster(domain: "example.com", serviceName: "", name: "m1",
                                     advertisePeerURLs: [try url("http://10.0.0.1:2390")], token: "t", resolver: r)
        }
    }

    @Test func aSchemeMismatchIsRefused() throws {
        let r = TableResolver(srv: ["_etcd-server._tcp.example.com.": records()], hosts: hosts)
        #expect {
            try DNSBootstrap.cluster(domain: "example.com", serviceName: "", name: "m1",
                                     advertisePeerURLs: [try url("https://10.0.0.1:2380")], token: "t", resolver: r)
        } throws: { "\($0)".contains("scheme mismatch") }
    }

    @Test func anAdvertisedURLWithoutARecordIsRefused() throws {
        let r = TableResolver(srv: ["_etcd-server._tcp.example.com.": records()], hosts: hosts)
        #expect {
            try DNSBootstrap.cluster(domain: "example.com", serviceName: "", name: "m1",
                                     advertisePeerURLs: [try url("http://10.0.0.1:2380"), try url("http://10.0.0.9:2380")],
                                     token: "t", resolver: r)
        } throws: { "\($0)".contains("has no SRV record") }
    }

    @Test func noRecordsAtAllNameBothServices() throws {
        #expect {
            try DNSBootstrap.cluster(domain: "example.com", serviceName: "", name: "m1",
                                     advertisePeerURLs: [try url("http://10.0.0.1:2380")], token: "t", resolver: TableResolver())
        } throws: {
            let text = "\($0)"
            return text.contains("_etcd-server-ssl._tcp.example.com.") && text.contains("_etcd-server._tcp.example.com.")
        }
    }
}
