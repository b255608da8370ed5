import EtcdConfig
import Foundation
import Logging
import NIOHTTP1

/// etcd's v2 discovery protocol (`--discovery URL`), spoken to a discovery service such as
/// discovery.etcd.io (or an etcd with the v2 API: `http://host:2379/v2/keys/_etcd/registry/TOKEN`).
/// The URL's path is the token directory. It holds `_config/size` (the cluster size) and one
/// key per registered member, named by its member ID in hex, whose value is its
/// `name=peerURL,...`. A member registers itself with a create-only PUT, then waits (long-poll
/// GETs with `wait=true`) until `size` members have registered; the first `size` by creation
/// index form the cluster. A member not among them finds the cluster full and exits (etcd
/// would become a proxy by default; swetcd has no proxy mode).
struct V2Discovery: Sendable {
    enum Failure: Error, CustomStringConvertible, Equatable {
        case clusterFull
        case sizeNotFound
        case badSizeKey(String)
        case duplicateID
        case duplicateName
        case invalidURL
        case badEndpoint(String)
        case unexpected(String)

        /// etcd's texts (`discovery: ...`) where etcd has one.
        var description: String {
            switch self {
            case .clusterFull: return "discovery: cluster is full"
            case .sizeNotFound: return "discovery: size key not found"
            case .badSizeKey(let v): return "discovery: size key is bad (\(v))"
            case .duplicateID: return "discovery: found duplicate id"
            case .duplicateName: return "discovery: found duplicate name"
            case .invalidURL: return "discovery: invalid URL"
            case .badEndpoint(let why): return "discovery: bad discovery endpoint (\(why))"
            case .unexpected(let why): return "discovery: \(why)"
            }
        }
    }

    /// A registered member.
    struct Node: Sendable, Equatable {
        var key: String
        var value: String
        var createdIndex: UInt64
    }

    /// A cluster size larger than this is refused (memory is held per registered member).
    static let maxSize: UInt64 = 1000

    let client: DiscoveryHTTPClient
    /// The token directory's path (from the URL), without a trailing slash.
    let directory: String
    let logger: Logger
    /// Each request's deadline; a wait is re-issued after `waitSeconds`.
    var requestSeconds: Int64 = 10
    var waitSeconds: Int64 = 60
    /// Backoff between retries of failed requests (doubling up to `maxBackoffSeconds`).
    var maxBackoffSeconds: UInt64 = 16

    init(url: String, proxy: String, logger: Logger) throws {
        guard let u = URLComponents(string: url) else { throw Failure.invalidURL }
        client = try DiscoveryHTTPClient(url: u, proxy: proxy)
        var path = u.percentEncodedPath
        while path.hasSuffix("/") { path.removeLast() }
        guard !path.isEmpty else { throw Failure.invalidURL }
        directory = path
        self.logger = logger
    }

    // MARK: The protocol

    /// Registers `selfID` with `value` (`name=peerURL,...`) and waits until the cluster is
    /// complete; returns the `--initial-cluster` text of the first `size` members.
    func join(selfID: UInt64, value: String) async throws -> String {
        let selfKey = MemberIdentity.hex(selfID)
        // A full cluster is refused before registering.
        _ = try await check(selfKey: selfKey)
        try await register(selfKey: selfKey, value: value)
        var retry = Backoff(max: maxBackoffSeconds)
        while true {
            let (nodes, size, index) = try await check(selfKey: selfKey)
            if UInt64(nodes.count) >= size {
                return try clusterText(Array(nodes.prefix(Int(size))), size: size)
            }
            logger.info("found peers from discovery server; waiting for more", metadata: [
                "found": "\(nodes.count)", "size": "\(size)",
            ])
            // Wait for the next change of the directory, then read it again.
            do {
                let r = try await client.send(.GET, "\(directory)?wait=true&recursive=true&waitIndex=\(index + 1)",
                                              timeoutSeconds: waitSeconds)
                if r.status >= 500 { throw DiscoveryHTTPClient.Failure(description: "HTTP \(r.status)") }
                // 401 "event index cleared" and any other answer: read the directory again
                // (after a pause when the wait did not succeed, so a refusing service is not hammered).
                if r.status != 200 { try await Task.sleep(for: .milliseconds(500)) }
                retry.reset()
            } catch let f as DiscoveryHTTPClient.Failure where f.description.hasPrefix("no answer within") {
                continue  // no change within the wait: read again
            } catch {
                try await retry.wait(logger: logger, step: "waiting for other nodes", error: error)
            }
        }
    }

    /// The size key and the registered members in creation order; throws `clusterFull` when
    /// `size` members registered before `selfKey` (or without it).
    func check(selfKey: String) async throws -> (nodes: [Node], size: UInt64, index: UInt64) {
        var retry = Backoff(max: maxBackoffSeconds)
        while true {
            do {
                let sizeResponse = try await client.send(.GET, "\(directory)/_config/size", timeoutSeconds: requestSeconds)
                if sizeResponse.status == 404 { throw Failure.sizeNotFound }
                guard sizeResponse.status == 200 else {
                    throw DiscoveryHTTPClient.Failure(description: "HTTP \(sizeResponse.status) reading the size key")
                }
                let sizeNode = try Self.decode(sizeResponse.body).node
                guard let text = sizeNode?.value, let size = UInt64(text), size > 0 else {
                    throw Failure.badSizeKey(sizeNode?.value ?? "no value")
                }
                guard size <= Self.maxSize else { throw Failure.badSizeKey("\(size) is above swetcd's limit of \(Self.maxSize)") }
                let list = try await client.send(.GET, directory, timeoutSeconds: requestSeconds)
                guard list.status == 200 else {
                    throw DiscoveryHTTPClient.Failure(description: "HTTP \(list.status) reading the token directory")
                }
                let decoded = try Self.decode(list.body)
                let index = list.headers.first(name: "X-Etcd-Index").flatMap(UInt64.init) ?? 0
                let nodes = (decoded.node?.nodes ?? [])
                    .filter { ($0.key.split(separator: "/").last.map(String.init) ?? "") != "_config" && $0.dir != true }
                    .map { Node(key: String($0.key.split(separator: "/").last ?? ""), value: $0.value ?? "", createdIndex: $0.createdIndex ?? 0) }
                    .sorted { $0.createdIndex < $1.createdIndex }
                if let position = nodes.firstIndex(where: { $0.key == selfKey }) {
                    if UInt64(position) >= size { throw Failure.clusterFull }
                } else if UInt64(nodes.count) >= size {
                    throw Failure.clusterFull
                }
                return (nodes, size, index)
            } catch let f as Failure {
                throw f
            } catch {
                try await retry.wait(logger: logger, step: "cluster status check", error: error)
            }
        }
    }

    /// Creates this member's key (create-only); an existing key is etcd's "duplicate id".
    func register(selfKey: String, value: String) async throws {
        var retry = Backoff(max: maxBackoffSeconds)
        while true {
            do {
                let r = try await client.send(.PUT, "\(directory)/\(selfKey)?prevExist=false",
                                              form: "value=" + Self.formEncode(value), timeoutSeconds: requestSeconds)
                if r.status == 412 { throw Failure.duplicateID }
                guard r.status == 200 || r.status == 201 else {
                    throw DiscoveryHTTPClient.Failure(description: "HTTP \(r.status) registering: \(String(decoding: r.body.prefix(200), as: UTF8.self))")
                }
                return
            } catch let f as Failure {
                throw f
            } catch {
                try await retry.wait(logger: logger, step: "registering", error: error)
            }
        }
    }

    /// etcd's check of the registered values: they must parse as `name=URL,...` and name
    /// `size` distinct members.
    func clusterText(_ nodes: [Node], size: UInt64) throws -> String {
        let text = nodes.map(\.value).joined(separator: ",")
        var names = Set<String>()
        for item in text.split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, (try? EndpointURL(parsing: String(parts[1]))) != nil else { throw Failure.invalidURL }
            names.insert(String(parts[0]))
        }
        guard UInt64(names.count) == size else { throw Failure.duplicateName }
        return text
    }

    // MARK: Wire format

    struct V2Node: Decodable {
        var key: String
        var value: String?
        var dir: Bool?
        var nodes: [V2Node]?
        var createdIndex: UInt64?
    }

    struct V2Answer: Decodable {
        var node: V2Node?
    }

    static func decode(_ body: [UInt8]) throws -> V2Answer {
        do {
            return try JSONDecoder().decode(V2Answer.self, from: Data(body))
        } catch {
            throw Failure.badEndpoint("the answer is not v2 keys JSON: \(String(decoding: body.prefix(120), as: UTF8.self))")
        }
    }

    static func formEncode(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    /// Exponential backoff for retried requests, logged as etcd logs it.
    struct Backoff {
        let max: UInt64
        var retries: UInt64 = 0
        mutating func reset() { retries = 0 }
        mutating func wait(logger: Logger, step: String, error: any Error) async throws {
            retries += 1
            let seconds = Swift.min(max, UInt64(1) << Swift.min(retries, 8))
            logger.warning("retry connecting to discovery service", metadata: [
                "step": "\(step)", "error": "\(error)", "backoff": "\(seconds)s", "retries": "\(retries)",
            ])
            try await Task.sleep(for: .seconds(Int64(seconds)))
        }
    }
}
