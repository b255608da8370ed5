import EtcdConfig
import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging

/// etcd 3.6's v3 discovery (`--discovery-token`, `--discovery-endpoints`): the discovery
/// service is any etcd or swetcd cluster, spoken to with the v3 API. Under
/// `/_etcd/registry/TOKEN/` it holds `_config/size` (the cluster size, written by the operator)
/// and `members/<member ID hex>` = `name=peerURL,...` per registered member. The first `size`
/// members by creation revision form the cluster; a member not among them finds it full.
/// swetcd waits for the others by re-reading the members every `pollInterval` (etcd watches);
/// the outcome is the same.
struct V3Discovery: Sendable {
    let settings: V3DiscoverySettings
    let logger: Logger
    var pollInterval: Duration = .milliseconds(300)
    var maxBackoffSeconds: UInt64 = 16
    /// A cluster size larger than this is refused, and at most this many member keys are read.
    static let maxSize: UInt64 = 1000

    var prefix: String { "/_etcd/registry/\(settings.token)" }
    var sizeKey: String { "\(prefix)/_config/size" }
    var membersPrefix: String { "\(prefix)/members/" }

    /// Registers `selfID` with `value` and waits until the cluster is complete; returns the
    /// `--initial-cluster` text of the first `size` members.
    func join(selfID: UInt64, value: String) async throws -> String {
        var retry = V2Discovery.Backoff(max: maxBackoffSeconds)
        var attempt = 0
        while true {
            let endpoint = settings.endpoints[attempt % settings.endpoints.count]
            attempt += 1
            do {
                let transport = try clientTransport(endpoint)
                return try await withGRPCClient(transport: transport) { client in
                    try await session(client, selfID: selfID, value: value)
                }
            } catch let f as V2Discovery.Failure {
                throw f
            } catch let e as RPCError where e.code == .unauthenticated || e.code == .permissionDenied || e.code == .invalidArgument {
                throw V2Discovery.Failure.unexpected("the discovery service at \(endpoint) refused the request: \(e.message)")
            } catch {
                try await retry.wait(logger: logger, step: "discovery service \(endpoint)", error: error)
            }
        }
    }

    /// One connection's worth of the protocol; any error other than a protocol failure makes
    /// the caller retry (on the next endpoint). Registering twice is harmless: the key keeps
    /// its creation revision.
    private func session(_ client: GRPCClient<HTTP2ClientTransport.Posix>, selfID: UInt64, value: String) async throws -> String {
        let kv = Etcdserverpb_KV.Client(wrapping: client)
        var first = CallOptions.defaults
        first.timeout = settings.dialTimeout + settings.requestTimeout
        var options = CallOptions.defaults
        options.timeout = settings.requestTimeout
        var metadata: Metadata = [:]
        if !settings.user.isEmpty {
            var user = settings.user
            var password = settings.password
            if password.isEmpty, let colon = user.firstIndex(of: ":") {
                password = String(user[user.index(after: colon)...])
                user = String(user[..<colon])
            }
            var req = Etcdserverpb_AuthenticateRequest()
            req.name = user
            req.password = password
            let token = try await Etcdserverpb_Auth.Client(wrapping: client).authenticate(req, options: first).token
            metadata.addString(token, forKey: "token")
        }
        let selfKey = membersPrefix + MemberIdentity.hex(selfID)
        // A full cluster is refused before registering.
        _ = try await check(kv, metadata: metadata, options: first, selfKey: selfKey)
        var put = Etcdserverpb_PutRequest()
        put.key = Data(selfKey.utf8)
        put.value = Data(value.utf8)
        _ = try await kv.put(put, metadata: metadata, options: options)
        logger.info("registered with the discovery service", metadata: ["key": "\(selfKey)", "value": "\(value)"])
        while true {
            let (members, size) = try await check(kv, metadata: metadata, options: options, selfKey: selfKey)
            if UInt64(members.count) >= size {
                return try clusterText(members.prefix(Int(size)).map(\.value), size: size)
            }
            try await Task.sleep(for: pollInterval)
        }
    }

    struct Registered: Sendable {
        var key: String
        var value: String
        var createRevision: Int64
    }

    /// The size and the registered members in creation order; throws `clusterFull` when
    /// `size` members registered before `selfKey` (or without it).
    private func check(_ kv: Etcdserverpb_KV.Client<HTTP2ClientTransport.Posix>, metadata: Metadata,
                       options: CallOptions, selfKey: String) async throws -> ([Registered], UInt64) {
        var sizeReq = Etcdserverpb_RangeRequest()
        sizeReq.key = Data(sizeKey.utf8)
        let sizeResp = try await kv.range(sizeReq, metadata: metadata, options: options)
        guard let sizeKV = sizeResp.kvs.first else { throw V2Discovery.Failure.sizeNotFound }
        let text = String(decoding: sizeKV.value, as: UTF8.self).trimmingCharacters(in: .whitespaces)
        guard let size = UInt64(text), size > 0 else { throw V2Discovery.Failure.badSizeKey(text) }
        guard size <= Self.maxSize else { throw V2Discovery.Failure.badSizeKey("\(size) is above swetcd's limit of \(Self.maxSize)") }
        var req = Etcdserverpb_RangeRequest()
        req.key = Data(membersPrefix.utf8)
        var end = Array(membersPrefix.utf8)
        end[end.count - 1] += 1  // the prefix ends in "/": incrementing it cannot overflow
        req.rangeEnd = Data(end)
        req.limit = Int64(Self.maxSize) * 4
        let resp = try await kv.range(req, metadata: metadata, options: options)
        let members = resp.kvs
            .map { Registered(key: String(decoding: $0.key, as: UTF8.self),
                              value: String(decoding: $0.value, as: UTF8.self).trimmingCharacters(in: .whitespaces),
                              createRevision: $0.createRevision) }
            .filter { $0.value.contains("=") }
            .sorted { $0.createRevision < $1.createRevision }
        if let position = members.firstIndex(where: { $0.key == selfKey }) {
            if UInt64(position) >= size { throw V2Discovery.Failure.clusterFull }
        } else if UInt64(members.count) >= size {
            throw V2Discovery.Failure.clusterFull
        }
        return (members, size)
    }

    private func clusterText(_ values: [String], size: UInt64) throws -> String {
        let text = values.joined(separator: ",")
        for item in text.split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, (try? EndpointURL(parsing: String(parts[1]))) != nil else {
                throw V2Discovery.Failure.unexpected("invalid peer URL in \(text)")
            }
        }
        return text
    }

    /// The client transport to one endpoint (`host:port` or an http(s) URL).
    func clientTransport(_ endpoint: String) throws -> HTTP2ClientTransport.Posix {
        let url = try EndpointURL(parsing: endpoint.contains("://") ? endpoint : "http://" + endpoint)
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.connection.keepalive = .init(time: settings.keepaliveTime, timeout: settings.keepaliveTimeout, allowWithoutCalls: true)
        let s = settings
        let useTLS = url.scheme == "https" || !s.insecureTransport || !s.certFile.isEmpty || !s.caFile.isEmpty
        let security: HTTP2ClientTransport.Posix.TransportSecurity
        if useTLS {
            security = .tls { tls in
                if !s.certFile.isEmpty {
                    tls.certificateChain = [.file(path: s.certFile, format: .pem)]
                    tls.privateKey = .file(path: s.keyFile, format: .pem)
                }
                if !s.caFile.isEmpty { tls.trustRoots = .certificates([.file(path: s.caFile, format: .pem)]) }
                if s.insecureSkipTLSVerify { tls.serverCertificateVerification = .noVerification }
            }
        } else {
            security = .plaintext
        }
        return try HTTP2ClientTransport.Posix(target: PeerTransport.target(url), transportSecurity: security, config: config)
    }
}
