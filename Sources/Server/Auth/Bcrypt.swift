import CCrypt
import Foundation

/// bcrypt password hashes through libxcrypt (`crypt_gensalt_rn` + `crypt_rn`), never by hand.
/// Hashes use the `$2a$` prefix, as Go's bcrypt (etcd) writes them, so an etcd backend's
/// users verify here and ours there.
enum Bcrypt {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// etcd's bounds for `--bcrypt-cost` (Go's bcrypt.MinCost...MaxCost).
    static let costs = 4...31

    /// A new hash of `password` at `cost` with a fresh random salt.
    static func hash(_ password: String, cost: Int) throws -> String {
        guard costs.contains(cost) else { throw Failure(description: "bcrypt cost \(cost) out of range \(costs)") }
        var setting = [CChar](repeating: 0, count: Int(CRYPT_GENSALT_OUTPUT_SIZE))
        guard crypt_gensalt_rn("$2a$", UInt(cost), nil, 0, &setting, Int32(setting.count)) != nil else {
            throw Failure(description: "crypt_gensalt_rn failed: \(String(cString: strerror(errno)))")
        }
        guard let out = run(password, setting: setting) else {
            throw Failure(description: "crypt_rn failed: \(String(cString: strerror(errno)))")
        }
        return out
    }

    /// Whether `password` matches `hash` (any of bcrypt's `$2a$`, `$2b$`, `$2y$` forms).
    static func verify(_ password: String, hash: String) -> Bool {
        guard hash.hasPrefix("$2"), let out = run(password, setting: Array(hash.utf8CString)) else { return false }
        return constantTimeEqual(Array(out.utf8), Array(hash.utf8))
    }

    private static func run(_ password: String, setting: [CChar]) -> String? {
        // bcrypt reads at most 72 bytes; a NUL inside the password would cut it short.
        if password.utf8.contains(0) { return nil }
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer {
            memset(data, 0, MemoryLayout<crypt_data>.size)
            data.deallocate()
        }
        memset(data, 0, MemoryLayout<crypt_data>.size)
        let result = password.withCString { p in
            setting.withUnsafeBufferPointer { s in crypt_rn(p, s.baseAddress, data, Int32(MemoryLayout<crypt_data>.size)) }
        }
        guard let result, result.pointee != 0x2A /* "*": failure token */ else { return nil }
        return String(cString: result)
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }
}
