import Testing
@testable import LMDBBackend

@Suite struct CRC32CTests {
    @Test func knownVectors() {
        // RFC 3720 appendix B.4 check values.
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(CRC32C.checksum([UInt8]()) == 0)
    }

    @Test func incrementalEqualsOneShot() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            let bytes = (0..<Int.random(in: 0..<300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let cut = Int.random(in: 0...bytes.count, using: &rng)
            var c = CRC32C()
            c.update(bytes[..<cut])
            c.update(Array(bytes[cut...]))
            #expect(c.value == CRC32C.checksum(bytes))
            // A non-contiguous collection takes the byte-at-a-time path.
            #expect(CRC32C.checksum(bytes.lazy.map { $0 }) == CRC32C.checksum(bytes))
        }
    }
}
