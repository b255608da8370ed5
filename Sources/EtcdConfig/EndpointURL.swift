/// A URL as etcd accepts it in its URL flags: `scheme://host:port` with scheme http, https,
/// unix or unixs, a host and a port, and no path. IPv6 hosts are written in brackets.
public struct EndpointURL: Sendable, Hashable, CustomStringConvertible, Comparable {
    public let scheme: String
    /// Host without brackets (an IPv6 address is stored bare).
    public let host: String
    public let port: Int

    public init(scheme: String, host: String, port: Int) {
        self.scheme = scheme
        self.host = host
        self.port = port
    }

    /// The TLS schemes.
    public var isSecure: Bool { scheme == "https" || scheme == "unixs" }

    /// `host:port` with brackets around an IPv6 host.
    public var hostPort: String { (host.contains(":") ? "[\(host)]" : host) + ":\(port)" }

    /// For unix:// and unixs:// URLs, the Unix-domain socket path: as in etcd, the URL's
    /// `host:port` taken as a file name relative to the working directory
    /// (`unixs://localhost:2379` listens on `./localhost:2379`); nil for other schemes.
    public var unixSocketPath: String? { scheme == "unix" || scheme == "unixs" ? hostPort : nil }

    public var description: String { "\(scheme)://\(hostPort)" }

    public static func < (a: EndpointURL, b: EndpointURL) -> Bool { a.description < b.description }

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let description: String
    }

    /// Parses one URL with etcd's rules and error texts.
    public init(parsing raw: String) throws {
        let input = raw.trimmingSpaces()
        guard let sep = input.range(of: "://") else {
            throw ParseError(description: "URL scheme must be http, https, unix, or unixs: \(input)")
        }
        let scheme = input[..<sep.lowerBound].lowercased()
        guard ["http", "https", "unix", "unixs"].contains(scheme) else {
            throw ParseError(description: "URL scheme must be http, https, unix, or unixs: \(input)")
        }
        var rest = input[sep.upperBound...]
        var path = Substring("")
        if let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) {
            path = rest[slash...]
            rest = rest[..<slash]
        }
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        let host: Substring
        let portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw ParseError(description: "URL address does not have the form \"host:port\": \(input)")
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            guard after.hasPrefix(":") else {
                throw ParseError(description: "URL address does not have the form \"host:port\": \(input)")
            }
            portText = after.dropFirst()
        } else {
            let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw ParseError(description: "URL address does not have the form \"host:port\": \(input)")
            }
            host = parts[0]
            portText = parts[1]
        }
        guard let port = Int(portText), (0...65535).contains(port) else {
            throw ParseError(description: "URL address does not have the form \"host:port\": \(input)")
        }
        guard path.isEmpty else { throw ParseError(description: "URL must not contain a path: \(input)") }
        self.init(scheme: scheme, host: String(host), port: port)
    }

    /// Parses a comma-separated list, as etcd's URL flags take it; sorted like etcd sorts them.
    public static func parseList(_ text: String) throws -> [EndpointURL] {
        let items = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard !(items.count == 1 && items[0].trimmingSpaces().isEmpty) else {
            throw ParseError(description: "no valid URLs given")
        }
        return try items.map { try EndpointURL(parsing: $0) }.sorted()
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
