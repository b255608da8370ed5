import EtcdConfig
import Foundation
import Logging

/// The initial cluster of a new member (empty data directory) when it comes from DNS SRV
/// records or a discovery URL instead of `--initial-cluster`.
enum Bootstrap {
    static func initialCluster(_ loaded: LoadedConfig, logger: Logger) async throws -> InitialCluster {
        let cfg = loaded.config
        switch loaded.bootstrap {
        case .staticCluster:
            return loaded.initialCluster
        case .dnsSRV(let domain, let serviceName):
            let name = cfg.name
            let urls = cfg.initialAdvertisePeerURLs
            let token = cfg.initialClusterToken
            let result = try await runOnThread("dns-srv") {
                try DNSBootstrap.cluster(domain: domain, serviceName: serviceName, name: name,
                                         advertisePeerURLs: urls, token: token, resolver: SystemResolver())
            }
            for line in result.found { logger.info("got bootstrap from DNS for etcd-server", metadata: ["record": "\(line)"]) }
            logger.info("initial cluster from DNS SRV records", metadata: [
                "discovery-srv": "\(domain)", "initial-cluster": "\(result.cluster.text)",
            ])
            return result.cluster
        case .v3Discovery(let settings):
            let me = loaded.initialCluster  // this member alone, token = the discovery token
            guard let local = me.member(named: cfg.name) else {
                throw ServerStartError("couldn't find local name \"\(cfg.name)\" in the initial cluster configuration")
            }
            let endpoints = settings.endpoints.joined(separator: ",")
            logger.info("joining the cluster through the v3 discovery service", metadata: [
                "discovery-token": "\(settings.token)", "discovery-endpoints": "\(endpoints)",
                "member-id": "\(MemberIdentity.hex(local.id))",
            ])
            let text: String
            do {
                text = try await V3Discovery(settings: settings, logger: logger).join(selfID: local.id, value: me.text)
            } catch V2Discovery.Failure.clusterFull {
                throw ServerStartError("failed to join discovery cluster (discovery: cluster is full): token \(settings.token) on \(endpoints) already has its full number of members; this member exits. Add it to the running cluster with etcdctl member add and --initial-cluster-state=existing, or use a new discovery token")
            } catch let f as V2Discovery.Failure {
                throw ServerStartError("failed to join discovery cluster (\(f)); token \(settings.token) on \(endpoints)")
            }
            let cluster: InitialCluster
            do { cluster = try InitialCluster(parsing: text, token: settings.token) } catch {
                throw ServerStartError("discovery cluster \(text): \(error)")
            }
            guard cluster.member(named: cfg.name)?.id == local.id else {
                throw ServerStartError("discovery cluster \(text) does not contain this member (\(cfg.name), id \(MemberIdentity.hex(local.id)))")
            }
            logger.info("initial cluster from the v3 discovery service", metadata: ["initial-cluster": "\(cluster.text)"])
            return cluster
        case .discoveryURL(let url, let proxy):
            let me = loaded.initialCluster  // this member alone, token = the discovery URL
            guard let local = me.member(named: cfg.name) else {
                throw ServerStartError("couldn't find local name \"\(cfg.name)\" in the initial cluster configuration")
            }
            let text: String
            do {
                let discovery = try V2Discovery(url: url, proxy: proxy, logger: logger)
                logger.info("joining the cluster through the discovery service", metadata: [
                    "discovery": "\(url)", "member-id": "\(MemberIdentity.hex(local.id))",
                ])
                text = try await discovery.join(selfID: local.id, value: me.text)
            } catch V2Discovery.Failure.clusterFull {
                throw ServerStartError("failed to join discovery cluster (discovery: cluster is full): \(url) already has its full number of members; swetcd has no proxy mode to fall back to (--discovery-fallback), so this member exits. Add it to the running cluster with etcdctl member add and --initial-cluster-state=existing, or use a new discovery token")
            } catch V2Discovery.Failure.duplicateID {
                throw ServerStartError("failed to join discovery cluster (discovery: found duplicate id): member \(MemberIdentity.hex(local.id)) (\(cfg.name)) has already registered with \(url), but its data directory is empty; check the data directory if a previous bootstrap succeeded, or use a new discovery token if it failed")
            } catch let f as V2Discovery.Failure {
                throw ServerStartError("failed to join discovery cluster (\(f)); do not reuse a discovery token: generate a new one to bootstrap a cluster")
            } catch let f as DiscoveryHTTPClient.Failure {
                throw ServerStartError("failed to join discovery cluster (\(f))")
            }
            let cluster: InitialCluster
            do { cluster = try InitialCluster(parsing: text, token: url) } catch {
                throw ServerStartError("discovery cluster \(text): \(error)")
            }
            guard cluster.member(named: cfg.name)?.id == local.id else {
                throw ServerStartError("discovery cluster \(text) does not contain this member (\(cfg.name), id \(MemberIdentity.hex(local.id)))")
            }
            logger.info("initial cluster from the discovery service", metadata: [
                "discovery": "\(url)", "initial-cluster": "\(cluster.text)",
            ])
            return cluster
        }
    }
}
