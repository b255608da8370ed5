import Foundation
import Testing
@testable import Server

/// `CodePages.trim()` on this test process: every clean code mapping gets fault-around turned
/// off and its pages unmapped (the resident size of the code mappings falls, although the
/// other tests running meanwhile fault their code back in), and code keeps running.
@Suite struct CodePagesTests {
    @Test func trimUnmapsCodePagesAndCodeKeepsRunning() throws {
        let before = CodePages.executableMappings()
        try #require(!before.isEmpty, "no executable mappings in /proc/self/smaps")
        #expect(before.contains { $0.path.hasSuffix("libswiftCore.so") })
        #expect(before.allSatisfy { $0.privateDirtyKiB >= 0 })
        let trimmed = CodePages.trim()
        #expect(trimmed > 0)
        // The mappings there before and after (a library another test loads meanwhile is new).
        let after = CodePages.executableMappings()
        let cleanBefore = Dictionary(before.filter { $0.privateDirtyKiB == 0 }.map { ($0.start, $0) }) { a, _ in a }
        let kept = after.filter { cleanBefore[$0.start] != nil }
        #expect(kept.count > 0 && kept.count <= trimmed)
        // Fault-around is off for every one of them (MADV_RANDOM), for good.
        #expect(kept.allSatisfy { $0.randomAccess }, "\(kept.filter { !$0.randomAccess }.map(\.path))")
        // Their pages were unmapped: what the other tests' threads fault back in meanwhile, page
        // by page, stays below what was mapped (without the unmapping it could only grow).
        let residentBefore = kept.reduce(0) { $0 + (cleanBefore[$1.start]?.rssKiB ?? 0) }
        let residentAfter = kept.reduce(0) { $0 + $1.rssKiB }
        #expect(residentAfter < residentBefore, "\(residentBefore) KiB -> \(residentAfter) KiB")
        // Code mapped again on use still works (a JSON round trip through Foundation).
        let data = try JSONEncoder().encode(["trimmed": trimmed])
        #expect(try JSONDecoder().decode([String: Int].self, from: data) == ["trimmed": trimmed])
    }
}
