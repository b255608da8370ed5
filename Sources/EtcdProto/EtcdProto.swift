// EtcdProto: the Swift form of etcd's v3 client protocol and of swetcd's peer
// protocol. Almost everything here is generated from the .proto files in
// `proto/` by scripts/generate-protos (see docs/PROTOCOL.md); this file holds
// the few hand-written constants that go with them.

public import SwiftProtobuf

extension JSONEncodingOptions {
    /// The JSON form etcd's gRPC gateway (`/v3/...`) writes: field names exactly as
    /// in the .proto files (`create_revision`, `dbSizeInUse`), 64-bit integers as
    /// strings, bytes as base64, enums by name, default values left out.
    public static var etcdGateway: JSONEncodingOptions {
        var options = JSONEncodingOptions()
        options.preserveProtoFieldNames = true
        return options
    }
}

extension JSONDecodingOptions {
    /// How etcd's gateway reads request bodies: unknown fields are ignored. Both
    /// the .proto field names and their lowerCamelCase JSON names are accepted.
    public static var etcdGateway: JSONDecodingOptions {
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        return options
    }
}

/// Constants of swetcd's peer protocol (`swetcd.peer`, proto/peer.proto).
public enum PeerProtocol {
    /// The protocol version this build speaks, sent in `Swetcd_Peer_Hello`.
    public static let version: UInt32 = 1
}
