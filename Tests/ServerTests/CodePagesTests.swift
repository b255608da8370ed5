import Foundation
import Testing
@testable import Server

/// `CodePages.trim()` on this test process: the code pages mapped so far are unmapped (the
/// resident size of the executable mappings falls), nothing written is touched, and code keeps
/// running (pages fault back in).
@Suite struct CodePagesTests {
    @Test func trimUnmapsCodePagesAndCodeKeepsRunning() throws {
        let before = CodePages.executableMappings()
        try #require(!before.isEmpty, "no executable mappings in /proc/self/smaps")
        #expect(before.contains { $0.path.hasSuffix("libswiftCore.so") })
        let residentBefore = before.reduce(0) { $0 + $1.rssKiB }
        let trimmed = CodePages.trim()
        #expect(trimmed > 0)
        let after = CodePages.executableMappings()
        let residentAfter = after.reduce(0) { $0 + $1.rssKiB }
        // What runs between the trim and the second reading (this test, the test runner's other
        // threads) faults back in, page by page: well below what was mapped.
        #expect(residentAfter < residentBefore * 3 / 4, "\(residentBefore) KiB -> \(residentAfter) KiB")
        // Code mapped again on use still works (a JSON round trip through Foundation).
        let data = try JSONEncoder().encode(["trimmed": trimmed])
        #expect(try JSONDecoder().decode([String: Int].self, from: data) == ["trimmed": trimmed])
    }
}
