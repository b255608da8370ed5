import ArgumentParser
import Foundation

/// Connection options every subcommand takes.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "Comma-separated gRPC endpoints (host:port or http://host:port); connections are spread over them.")
    var endpoints: String = "127.0.0.1:2379"

    @Option(help: "Number of gRPC connections.")
    var conns: Int = 1

    @Option(help: "Number of concurrent clients (each has one request in flight).")
    var clients: Int = 1

    @Flag(help: "Print the result as JSON instead of text.")
    var json = false

    func validate() throws {
        guard conns >= 1 else { throw ValidationError("--conns must be at least 1") }
        guard clients >= 1 else { throw ValidationError("--clients must be at least 1") }
        _ = try parsedEndpoints()
    }

    func parsedEndpoints() throws -> [Endpoint] {
        let list = endpoints.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !list.isEmpty else { throw ValidationError("--endpoints is empty") }
        return try list.map { s in
            guard let e = Endpoint(parsing: s) else { throw ValidationError("invalid endpoint \"\(s)\" (want host:port)") }
            return e
        }
    }
}

/// How keys are chosen (put and txn-put).
struct KeyOptions: ParsableArguments {
    @Option(help: "Total number of requests.")
    var total: Int = 10000

    @Option(help: "Key size in bytes (the key number, zero-padded after the prefix).")
    var keySize: Int = 8

    @Option(help: "Value size in bytes.")
    var valSize: Int = 8

    @Option(help: "Number of distinct keys.")
    var keySpaceSize: Int = 1

    @Flag(help: "Use keys 0, 1, 2, ... (modulo the key space) instead of random ones.")
    var sequentialKeys = false

    @Option(help: "Prefix of every key.")
    var keyPrefix: String = ""

    func validate() throws {
        guard total >= 1 else { throw ValidationError("--total must be at least 1") }
        guard keySpaceSize >= 1 else { throw ValidationError("--key-space-size must be at least 1") }
        guard keySize >= 1, valSize >= 0 else { throw ValidationError("--key-size must be positive, --val-size not negative") }
    }

    var keys: KeyGenerator {
        KeyGenerator(prefix: Array(keyPrefix.utf8), size: keySize, space: keySpaceSize, sequential: sequentialKeys)
    }
}

/// `host:port`, optionally written as a URL (`http://host:port`).
struct Endpoint: Sendable, Equatable {
    var host: String
    var port: Int

    init?(parsing text: String) {
        var s = Substring(text)
        for scheme in ["http://", "https://", "unix://"] where s.hasPrefix(scheme) { s = s.dropFirst(scheme.count) }
        if s.hasSuffix("/") { s = s.dropLast() }
        let host: Substring, portText: Substring
        if s.hasPrefix("["), let close = s.firstIndex(of: "]") {
            host = s[s.index(after: s.startIndex)..<close]
            let rest = s[s.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = s.lastIndex(of: ":") else { return nil }
            host = s[..<colon]
            portText = s[s.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portText), (1...65535).contains(port) else { return nil }
        self.host = String(host)
        self.port = port
    }
}

/// Keys as `prefix + zero-padded decimal number`, `size` bytes in all (longer when the
/// number needs more digits), so they are readable and share a prefix.
struct KeyGenerator: Sendable {
    var prefix: [UInt8]
    var size: Int
    var space: Int
    var sequential: Bool

    /// The key of request number `n` (0-based over the whole run).
    func key(forRequest n: Int) -> [UInt8] {
        key(number: sequential ? n % space : Int.random(in: 0..<space))
    }

    func key(number: Int) -> [UInt8] {
        let digits = Array(String(number).utf8)
        let width = max(digits.count, size - prefix.count)
        return prefix + Array(repeating: UInt8(ascii: "0"), count: width - digits.count) + digits
    }
}
