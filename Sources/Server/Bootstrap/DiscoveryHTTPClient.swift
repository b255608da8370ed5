import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A minimal HTTP/1.1 client for the v2 discovery protocol: one request per connection
/// (`Connection: close`), http or https (system trust roots), optionally through an http://
/// proxy (absolute request URI), a deadline per request and a cap on the response body.
struct DiscoveryHTTPClient: Sendable {
    struct Response: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// The server: scheme, host and port of the discovery URL.
    var scheme: String
    var host: String
    var port: Int
    /// `host:port` of an http:// proxy, if any.
    var proxy: (host: String, port: Int)?
    /// Responses larger than this are refused (a discovery answer is a few KiB).
    var maxBodyBytes = 4 << 20

    init(url: URLComponents, proxy: String) throws {
        guard let scheme = url.scheme?.lowercased(), let host = url.host, !host.isEmpty else {
            throw Failure(description: "discovery: invalid URL")
        }
        self.scheme = scheme
        self.host = host
        port = url.port ?? (scheme == "https" ? 443 : 80)
        if !proxy.isEmpty {
            let p = URLComponents(string: proxy.contains("://") ? proxy : "http://" + proxy)
            guard let ph = p?.host, !ph.isEmpty else { throw Failure(description: "invalid proxy address \"\(proxy)\"") }
            if scheme == "https" {
                throw Failure(description: "--discovery-proxy with an https:// discovery URL is not supported by swetcd (no CONNECT tunnelling); use an http:// discovery URL or no proxy")
            }
            self.proxy = (ph, p?.port ?? 80)
        }
    }

    /// Sends one request; `pathAndQuery` starts with "/". Throws on connection errors, the
    /// deadline and oversized responses; any HTTP status is returned.
    func send(_ method: HTTPMethod, _ pathAndQuery: String, form: String? = nil,
              timeoutSeconds: Int64) async throws -> Response {
        let group = MultiThreadedEventLoopGroup.singleton
        let loop = group.next()
        let promise = loop.makePromise(of: Response.self)
        let sslContext: NIOSSLContext? = scheme == "https"
            ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil
        let sniHost: String? = (host.contains(":") || host.allSatisfy { $0.isNumber || $0 == "." }) ? nil : host
        let limit = maxBodyBytes
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: sniHost))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise, limit: limit))
                }
            }
        let target = proxy ?? (host, port)
        let channel: Channel
        do {
            channel = try await bootstrap.connect(host: target.host, port: target.port).get()
        } catch {
            promise.fail(error)
            throw Failure(description: "cannot connect to \(target.host):\(target.port): \(error)")
        }
        let deadline = loop.scheduleTask(in: .seconds(timeoutSeconds)) {
            promise.fail(Failure(description: "no answer within \(timeoutSeconds)s"))
            channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        let hostHeader = (host.contains(":") ? "[\(host)]" : host) + ((scheme == "https" && port == 443) || (scheme == "http" && port == 80) ? "" : ":\(port)")
        var head = HTTPRequestHead(version: .http1_1, method: method,
                                   uri: proxy == nil ? pathAndQuery : "\(scheme)://\(hostHeader)\(pathAndQuery)")
        head.headers.add(name: "Host", value: hostHeader)
        head.headers.add(name: "Connection", value: "close")
        head.headers.add(name: "User-Agent", value: "swetcd-discovery")
        let body = form.map { Array($0.utf8) } ?? []
        if form != nil {
            head.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        }
        if form != nil || method == .PUT || method == .POST {
            head.headers.add(name: "Content-Length", value: "\(body.count)")
        }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if !body.isEmpty {
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
        }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        do {
            let response = try await promise.futureResult.get()
            channel.close(promise: nil)
            return response
        } catch {
            channel.close(promise: nil)
            throw error
        }
    }

    /// Collects one response; fails the promise on an early close or an oversized body.
    private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<Response>
        let limit: Int
        var head: HTTPResponseHead?
        var body: [UInt8] = []

        init(promise: EventLoopPromise<Response>, limit: Int) {
            self.promise = promise
            self.limit = limit
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h):
                head = h
            case .body(let buf):
                if body.count + buf.readableBytes > limit {
                    promise.fail(Failure(description: "response larger than \(limit) bytes"))
                    context.close(promise: nil)
                    return
                }
                body += buf.readableBytesView
            case .end:
                if let head {
                    promise.succeed(Response(status: Int(head.status.code), headers: head.headers, body: body))
                }
                context.close(promise: nil)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            promise.fail(Failure(description: "connection closed before a complete response"))
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            promise.fail(error)
            context.close(promise: nil)
        }
    }
}
