import Testing
@testable import Raft

@Test func RaftModuleLinks() {
    #expect(String(describing: RaftModule.self) == "RaftModule")
}
