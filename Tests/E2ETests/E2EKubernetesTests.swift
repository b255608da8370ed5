import Foundation
import Testing

/// deploy/kubernetes/swetcd.yaml's start and pre-stop scripts driven as Kubernetes would drive
/// them, without Kubernetes (scripts/k8s-netns-scale): a network namespace per pod, dnsmasq
/// answering the headless and client Service names, a stand-in for the API's StatefulSet scale,
/// the real swetcd and etcdctl, under an etcdctl write load. Scale 3->4 (the new pod adds itself
/// as a learner and is promoted by --auto-promote-learners), 4->3 (the pre-stop hook removes the
/// member), member 1 on a new empty volume (removed and added again), and 3->4 on the volume
/// the scale-in left (its stale data dropped). After each step 15 more writes must all succeed,
/// and at the end every acknowledged write is read back.
@Suite("E2E Kubernetes scripts in network namespaces", .serialized,
       .enabled(if: E2E.available && getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/dnsmasq"),
                "needs root, dnsmasq (Debian dnsmasq-base), swetcd and etcdctl"))
struct E2EKubernetesTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../scripts/k8s-netns-scale").standardized.path

    @Test func scaleOutScaleInAndLostVolumeUnderWriteLoad() async throws {
        var environment = ProcessInfo.processInfo.environment
        environment["ETCDCTL"] = try #require(E2E.etcdctlPath)
        let child = try Child("/usr/bin/timeout", ["-s", "TERM", "900", "/bin/bash", Self.script, try #require(E2E.swetcdPath)],
                              environment: environment)
        try child.start()
        let status = try await child.waitExit(limit: .seconds(930))
        #expect(status == 0, "k8s-netns-scale failed (\(status)):\n\(child.stderr.suffix(12000))")
        #expect(child.stdout.contains("k8s-netns: PASS"), "\(child.stdout)")
        // The learner is ready as a learner (not asserted: the promotion may come first).
        print(child.stdout.split(separator: "\n").last.map(String.init) ?? "")
    }
}
