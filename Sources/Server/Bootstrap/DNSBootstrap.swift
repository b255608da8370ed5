import CResolv
import EtcdConfig
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// One DNS SRV record.
struct SRVRecord: Sendable, Equatable {
    var priority: UInt16
    var weight: UInt16
    var port: UInt16
    /// The target host, without the trailing dot.
    var target: String
}

/// A DNS failure, worded for the operator.
struct DNSLookupError: Error, CustomStringConvertible, Equatable {
    let description: String
}

/// The name lookups bootstrapping needs; the system's in production, a table in unit tests.
protocol BootstrapResolver: Sendable {
    /// The SRV records of `name` (an absolute name ending in "."); throws when there are none.
    func lookupSRV(_ name: String) throws -> [SRVRecord]
    /// The numeric addresses `host` resolves to (an IP literal resolves to itself).
    func addresses(of host: String) throws -> Set<String>
}

/// The system resolver: glibc's `res_nquery` for SRV records (nameservers from
/// /etc/resolv.conf) and `getaddrinfo` for addresses (/etc/hosts, then DNS, per nsswitch).
struct SystemResolver: BootstrapResolver {
    /// At most this many SRV records are read per name.
    static let maxRecords = 256

    func lookupSRV(_ name: String) throws -> [SRVRecord] {
        var records = [swetcd_srv_record](repeating: swetcd_srv_record(), count: Self.maxRecords)
        let n = records.withUnsafeMutableBufferPointer { swetcd_srv_lookup(name, $0.baseAddress, Int32($0.count)) }
        switch n {
        case SWETCD_SRV_NOT_FOUND: throw DNSLookupError(description: "lookup \(name): no such host")
        case SWETCD_SRV_TRY_AGAIN: throw DNSLookupError(description: "lookup \(name): no answer from the nameservers in /etc/resolv.conf")
        case ..<0: throw DNSLookupError(description: "lookup \(name): resolver failure")
        default: break
        }
        return records.prefix(Int(n)).map { r in
            var copy = r
            let target = withUnsafeBytes(of: &copy.target) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            return SRVRecord(priority: r.priority, weight: r.weight, port: r.port,
                             target: target.hasSuffix(".") ? String(target.dropLast()) : target)
        }
    }

    func addresses(of host: String) throws -> Set<String> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &list)
        guard rc == 0, let first = list else {
            let reason = gai_strerror(rc).map { String(validatingCString: $0) ?? "error \(rc)" } ?? "error \(rc)"
            throw DNSLookupError(description: "lookup \(host): \(reason)")
        }
        defer { freeaddrinfo(first) }
        var out = Set<String>()
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let ai = cursor {
            var buf = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            if getnameinfo(ai.pointee.ai_addr, ai.pointee.ai_addrlen, &buf, socklen_t(buf.count), nil, 0, NI_NUMERICHOST) == 0 {
                out.insert(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
            cursor = ai.pointee.ai_next
        }
        return out
    }
}

/// `--discovery-srv`: the initial cluster from DNS SRV records, as etcd builds it. Both
/// `_etcd-server-ssl[-NAME]._tcp.DOMAIN` (https peers) and `_etcd-server[-NAME]._tcp.DOMAIN`
/// (http peers) are read and combined; either alone is enough (etcd 3.4 fails when only the
/// plain one exists). A target whose address and port are those of one of this member's
/// `--initial-advertise-peer-urls` is this member; the others get placeholder names (each
/// member publishes its real name once started). Peer URLs name the SRV targets, so every
/// member derives the same member and cluster IDs.
enum DNSBootstrap {
    struct Result: Sendable {
        var cluster: InitialCluster
        /// One line per SRV record read, for the log.
        var found: [String]
    }

    static func serviceNames(serviceName: String) -> [(service: String, scheme: String)] {
        let suffix = serviceName.isEmpty ? "" : "-\(serviceName)"
        return [("etcd-server-ssl\(suffix)", "https"), ("etcd-server\(suffix)", "http")]
    }

    static func cluster(domain: String, serviceName: String, name: String, advertisePeerURLs: [EndpointURL],
                        token: String, resolver: some BootstrapResolver) throws -> Result {
        let zone = domain.hasSuffix(".") ? domain : domain + "."
        // This member's advertised peer endpoints as "address port".
        var own: [String: EndpointURL] = [:]
        for u in advertisePeerURLs {
            let addrs: Set<String>
            do { addrs = try resolver.addresses(of: u.host) } catch {
                throw ServerStartError("--discovery-srv: cannot resolve --initial-advertise-peer-urls \(u): \(error)")
            }
            for a in addrs { own["\(a) \(u.port)"] = u }
        }
        var entries: [(name: String, peerURLs: [EndpointURL])] = []
        var matched = Set<EndpointURL>()
        var seen = Set<EndpointURL>()
        var problems: [String] = []
        var found: [String] = []
        var placeholder = 0
        for (service, scheme) in serviceNames(serviceName: serviceName) {
            let srvName = "_\(service)._tcp.\(zone)"
            let records: [SRVRecord]
            do { records = try resolver.lookupSRV(srvName) } catch {
                problems.append("\(error)")
                continue
            }
            for var r in records.sorted(by: { ($0.priority, $0.target, $0.port) < ($1.priority, $1.target, $1.port) }) {
                if r.target.hasSuffix(".") { r.target.removeLast() }
                let url = EndpointURL(scheme: scheme, host: r.target, port: Int(r.port))
                guard !r.target.isEmpty, r.port != 0, seen.insert(url).inserted else { continue }
                let addrs: Set<String>
                do { addrs = try resolver.addresses(of: r.target) } catch {
                    problems.append("SRV target \(r.target) of \(srvName): \(error)")
                    continue
                }
                let mine = addrs.compactMap { own["\($0) \(r.port)"] }.first
                if let mine, mine.scheme != scheme {
                    problems.append("bootstrap at \(url) from DNS for \(service) has scheme mismatch with expected peer \(mine)")
                    continue
                }
                found.append("\(srvName) -> \(url)\(mine != nil ? " (this member)" : "")")
                if let mine {
                    matched.insert(mine)
                    if let i = entries.firstIndex(where: { $0.name == name }) {
                        entries[i].peerURLs.append(url)
                    } else {
                        entries.append((name, [url]))
                    }
                } else {
                    var temp: String
                    repeat { temp = "\(placeholder)"; placeholder += 1 } while temp == name
                    entries.append((temp, [url]))
                }
            }
        }
        let services = serviceNames(serviceName: serviceName).map { "_\($0.service)._tcp.\(zone)" }.joined(separator: " and ")
        guard !entries.isEmpty else {
            throw ServerStartError("--discovery-srv \(domain): error querying DNS SRV records for \(services): \(problems.joined(separator: "; "))")
        }
        guard entries.contains(where: { $0.name == name }) else {
            let targets = entries.flatMap(\.peerURLs).map(\.description).joined(separator: ", ")
            throw ServerStartError("couldn't find local name \"\(name)\" in the initial cluster configuration from DNS SRV records of \(domain): no target (\(targets)) resolves to the address and port of --initial-advertise-peer-urls=\(advertisePeerURLs.map(\.description).joined(separator: ","))\(problems.isEmpty ? "" : " (\(problems.joined(separator: "; ")))")")
        }
        let unmatched = advertisePeerURLs.filter { !matched.contains($0) }
        if !unmatched.isEmpty {
            throw ServerStartError("--initial-advertise-peer-urls \(unmatched.map(\.description).joined(separator: ",")) has no SRV record under \(services): every advertised peer URL must be a target (the cluster would not know it)")
        }
        let cluster: InitialCluster
        do { cluster = try InitialCluster(entries: entries, token: token) } catch {
            throw ServerStartError("--discovery-srv \(domain): \(error)")
        }
        return Result(cluster: cluster, found: found)
    }
}

/// Runs blocking work (DNS lookups, here) on a thread of its own, not on Swift's pool.
func runOnThread<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
        let t = Thread { cont.resume(with: Result { try body() }) }
        t.name = name
        t.start()
    }
}
