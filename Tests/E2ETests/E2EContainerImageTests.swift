import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension E2E {
    /// Root, with podman and debootstrap installed (scripts/build-image).
    static var podmanUsable: Bool {
        getuid() == 0 && ["/usr/bin/podman", "/usr/sbin/debootstrap"].allSatisfy {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }
}

/// The container image deploy/kubernetes/swetcd.yaml names, built offline with podman from the
/// swetcd and swetcdutl under test (scripts/build-image: a cached debootstrapped Debian base
/// with the Dockerfile's runtime packages, deploy/Containerfile.prebuilt on top) and run as the
/// StatefulSet runs it (scripts/test-image): user 65532, read-only root, no capabilities, the
/// ConfigMap's start.sh, in a network namespace of its own. /health, an etcdctl put and get
/// from outside, etcdctl and swetcdutl inside, a graceful stop with exit 0 and a restart on the
/// same volume.
@Suite("E2E container image (podman)", .serialized,
       .enabled(if: E2E.available && E2E.podmanUsable,
                "needs root, podman and debootstrap (Debian podman, runc, debootstrap), swetcd and etcdctl"))
struct E2EContainerImageTests {
    static let scripts = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../scripts").standardized.path

    @Test func imageBuildsOfflineAndServesAsTheStatefulSetRunsIt() async throws {
        let bin = URL(fileURLWithPath: try #require(E2E.swetcdPath)).deletingLastPathComponent().path
        var environment = ProcessInfo.processInfo.environment
        environment["SWETCD_BIN_DIR"] = bin
        let tag = "localhost/swetcd:e2e-\(getpid())"
        // The first run makes the Debian base (debootstrap, about a minute); later runs reuse it.
        let build = try Child("/usr/bin/timeout", ["-s", "TERM", "600", "/bin/bash", "\(Self.scripts)/build-image", tag],
                              environment: environment)
        try build.start()
        let built = try await build.waitExit(limit: .seconds(620))
        try #require(built == 0, "build-image failed (\(built)):\n\(build.stderr.suffix(4000))")
        defer { _ = try? runTool("/usr/bin/timeout", ["-s", "KILL", "60", "/usr/bin/podman", "rmi", "-f", tag]) }

        let run = try Child("/usr/bin/timeout", ["-s", "TERM", "300", "/bin/bash", "\(Self.scripts)/test-image", tag],
                            environment: environment)
        try run.start()
        let status = try await run.waitExit(limit: .seconds(320))
        #expect(status == 0, "test-image failed (\(status)):\n\(run.stderr.suffix(6000))")
        #expect(run.stderr.contains("test-image: ok: \(tag) serves as user 65532"), "\(run.stderr.suffix(2000))")
    }
}
