import Testing
@testable import MVCC

@Test func MVCCModuleLinks() {
    #expect(String(describing: MVCCModule.self) == "MVCCModule")
}
