import Foundation
import Logging
import Testing

@testable import Server

/// The parts of the v2 discovery client that need no service (the protocol runs against
/// Debian's discovery.etcd.io in E2EBootstrapTests).
@Suite struct V2DiscoveryTests {
    let discovery = try! V2Discovery(url: "http://127.0.0.1:9/v2/keys/_etcd/registry/tok/", proxy: "", logger: Logger(label: "test"))

    @Test func theTokenDirectoryIsTheURLPath() {
        #expect(discovery.directory == "/v2/keys/_etcd/registry/tok")
    }

    @Test func registeredValuesMustNameSizeDistinctMembers() throws {
        #expect(try discovery.clusterText([.init(key: "a", value: "n1=http://10.0.0.1:2380", createdIndex: 1),
                                           .init(key: "b", value: "n2=http://10.0.0.2:2380", createdIndex: 2)], size: 2)
                == "n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380")
        #expect(throws: V2Discovery.Failure.duplicateName) {
            try discovery.clusterText([.init(key: "a", value: "n1=http://10.0.0.1:2380", createdIndex: 1),
                                       .init(key: "b", value: "n1=http://10.0.0.2:2380", createdIndex: 2)], size: 2)
        }
        #expect(throws: V2Discovery.Failure.invalidURL) {
            try discovery.clusterText([.init(key: "a", value: "n1=not-a-url", createdIndex: 1)], size: 1)
        }
    }

    @Test func formValuesAreEscaped() {
        #expect(V2Discovery.formEncode("n1=http://10.0.0.1:2380,n1=http://[::1]:2380")
                == "n1%3Dhttp%3A%2F%2F10.0.0.1%3A2380%2Cn1%3Dhttp%3A%2F%2F%5B%3A%3A1%5D%3A2380")
    }

    @Test func httpsThroughAProxyIsRefusedAndBadURLsToo() {
        #expect(throws: DiscoveryHTTPClient.Failure.self) {
            try V2Discovery(url: "https://discovery.etcd.io/abc", proxy: "127.0.0.1:3128", logger: Logger(label: "test"))
        }
        #expect(throws: V2Discovery.Failure.invalidURL) {
            try V2Discovery(url: "http://127.0.0.1:9/", proxy: "", logger: Logger(label: "test"))
        }
    }

    @Test func etcdsTextsAreKept() {
        #expect("\(V2Discovery.Failure.clusterFull)" == "discovery: cluster is full")
        #expect("\(V2Discovery.Failure.duplicateID)" == "discovery: found duplicate id")
        #expect("\(V2Discovery.Failure.sizeNotFound)" == "discovery: size key not found")
    }
}
