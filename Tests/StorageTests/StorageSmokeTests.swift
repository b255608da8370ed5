import Testing
@testable import Storage

@Test func StorageModuleLinks() {
    #expect(String(describing: StorageModule.self) == "StorageModule")
}
