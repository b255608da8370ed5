import Crypto
import CryptoExtras
import Foundation
import Synchronization

/// etcd's JWT auth tokens (`--auth-token jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`):
/// a signed `{"username","revision","exp"}` claim set, so any member holding the public key
/// verifies a token another member issued. Signatures come from swift-crypto (RSA PKCS#1 v1.5
/// and PSS, ECDSA on P-256/384/521, Ed25519); this type only frames them.
struct JWTTokens: Sendable {
    enum Method: String, Sendable, CaseIterable {
        case RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    let method: Method
    let ttl: Duration
    private let signer: (@Sendable (Data) throws -> Data)?
    private let verifier: @Sendable (Data, Data) -> Bool
    /// Tokens already verified (see ``verifiedClaims(_:now:)``).
    let cache = VerifiedTokenCache()

    /// Parses etcd's option string (everything after `jwt,`) and loads the keys. Without
    /// `priv-key` the member only verifies tokens (Authenticate on it fails).
    init(options: String, defaultTTL: Duration) throws {
        var fields: [String: String] = [:]
        for part in options.split(separator: ",") where !part.isEmpty {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw Failure(description: "--auth-token jwt: malformed option \"\(part)\"") }
            fields[kv[0]] = kv[1]
        }
        for key in fields.keys where !["pub-key", "priv-key", "sign-method", "ttl"].contains(key) {
            throw Failure(description: "--auth-token jwt: unknown option \"\(key)\"")
        }
        guard let name = fields["sign-method"], let method = Method(rawValue: name) else {
            throw Failure(description: "--auth-token jwt: sign-method must be one of \(Method.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let pubPath = fields["pub-key"] else { throw Failure(description: "--auth-token jwt: pub-key is required") }
        self.method = method
        if let t = fields["ttl"] {
            guard let d = Self.parseTTL(t), d > .zero else { throw Failure(description: "--auth-token jwt: bad ttl \"\(t)\"") }
            ttl = d
        } else {
            ttl = defaultTTL
        }
        func read(_ path: String) throws -> String {
            do { return try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw Failure(description: "--auth-token jwt: cannot read \(path): \(error.localizedDescription)")
            }
        }
        let pub = try read(pubPath)
        let priv = try fields["priv-key"].map(read)
        do {
            (signer, verifier) = try Self.keys(method, publicPEM: pub, privatePEM: priv)
        } catch let f as Failure {
            throw f
        } catch {
            throw Failure(description: "--auth-token jwt: cannot load the \(method.rawValue) keys: \(error)")
        }
    }

    var canIssue: Bool { signer != nil }

    /// A token for `user` at auth `revision`, expiring after the TTL.
    func issue(user: String, revision: UInt64, now: Date = Date()) throws -> String {
        guard let signer else { throw Failure(description: "this member has no JWT private key") }
        let header = try JSONSerialization.data(withJSONObject: ["alg": method.rawValue, "typ": "JWT"], options: [.sortedKeys])
        let exp = Int64(now.timeIntervalSince1970) + ttl.components.seconds
        let claims = try JSONSerialization.data(withJSONObject: ["username": user, "revision": revision, "exp": exp], options: [.sortedKeys])
        let input = Self.b64(header) + "." + Self.b64(claims)
        return input + "." + Self.b64(try signer(Data(input.utf8)))
    }

    /// The user and revision of a valid, unexpired token signed with our method; else nil.
    func verify(_ token: String, now: Date = Date()) -> (user: String, revision: UInt64)? {
        verifyClaims(token, now: now).map { ($0.user, $0.revision) }
    }

    /// ``verify(_:now:)`` through ``cache``: a token seen before is not verified again until
    /// its `exp` has passed (then it is refused as an expired token is). The claims depend on
    /// the token alone; the caller still checks them against the auth state on every request.
    func verifiedClaims(_ token: String, now: Date) -> VerifiedTokenCache.Claims? {
        let seconds = now.timeIntervalSince1970
        if let hit = cache.lookup(token, nowSeconds: seconds) { return hit }
        guard let claims = verifyClaims(token, now: now) else { return nil }
        cache.insert(token, claims, nowSeconds: seconds)
        return claims
    }

    private func verifyClaims(_ token: String, now: Date) -> VerifiedTokenCache.Claims? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerData = Self.unb64(parts[0]), let claimsData = Self.unb64(parts[1]),
              let sig = Self.unb64(parts[2]),
              let header = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any],
              header["alg"] as? String == method.rawValue,
              verifier(Data("\(parts[0]).\(parts[1])".utf8), sig),
              let claims = try? JSONSerialization.jsonObject(with: claimsData) as? [String: Any],
              let user = claims["username"] as? String,
              let revision = (claims["revision"] as? NSNumber)?.uint64Value,
              let exp = (claims["exp"] as? NSNumber)?.int64Value,
              Double(exp) > now.timeIntervalSince1970 else { return nil }
        return VerifiedTokenCache.Claims(user: user, revision: revision, exp: exp)
    }

    static func b64(_ d: Data) -> String {
        d.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func unb64(_ s: Substring) -> Data? {
        var t = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while t.count % 4 != 0 { t += "=" }
        return Data(base64Encoded: t)
    }

    /// Go duration subset for `ttl=`: `10m`, `1h`, `30s`, `500ms`.
    static func parseTTL(_ s: String) -> Duration? {
        for (suffix, scale) in [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)] where s.hasSuffix(suffix) {
            guard let n = Int64(s.dropLast(suffix.count)), n >= 0, n < Int64.max / Int64(scale) else { return nil }
            return .milliseconds(n * Int64(scale))
        }
        return nil
    }

    /// The loaded keys, by algorithm family.
    private enum PublicKey: @unchecked Sendable {
        case rsa(_RSA.Signing.PublicKey), p256(P256.Signing.PublicKey), p384(P384.Signing.PublicKey)
        case p521(P521.Signing.PublicKey), ed25519(Curve25519.Signing.PublicKey)
    }

    private enum PrivateKey: @unchecked Sendable {
        case rsa(_RSA.Signing.PrivateKey), p256(P256.Signing.PrivateKey), p384(P384.Signing.PrivateKey)
        case p521(P521.Signing.PrivateKey), ed25519(Curve25519.Signing.PrivateKey)
    }

    private typealias Keys = ((@Sendable (Data) throws -> Data)?, @Sendable (Data, Data) -> Bool)

    private static func keys(_ m: Method, publicPEM: String, privatePEM: String?) throws -> Keys {
        let pub: PublicKey
        var priv: PrivateKey?
        switch m {
        case .RS256, .RS384, .RS512, .PS256, .PS384, .PS512:
            pub = .rsa(try _RSA.Signing.PublicKey(pemRepresentation: publicPEM))
            if let p = privatePEM { priv = .rsa(try _RSA.Signing.PrivateKey(pemRepresentation: p)) }
        case .ES256:
            pub = .p256(try P256.Signing.PublicKey(pemRepresentation: publicPEM))
            if let p = privatePEM { priv = .p256(try P256.Signing.PrivateKey(pemRepresentation: p)) }
        case .ES384:
            pub = .p384(try P384.Signing.PublicKey(pemRepresentation: publicPEM))
            if let p = privatePEM { priv = .p384(try P384.Signing.PrivateKey(pemRepresentation: p)) }
        case .ES512:
            pub = .p521(try P521.Signing.PublicKey(pemRepresentation: publicPEM))
            if let p = privatePEM { priv = .p521(try P521.Signing.PrivateKey(pemRepresentation: p)) }
        case .EdDSA:
            pub = .ed25519(try Curve25519.Signing.PublicKey(pemRepresentation: publicPEM))
            if let p = privatePEM { priv = .ed25519(try Curve25519.Signing.PrivateKey(pemRepresentation: p)) }
        }
        var signer: (@Sendable (Data) throws -> Data)?
        if let key = priv {
            signer = { @Sendable (data: Data) throws -> Data in try sign(m, key, data) }
        }
        let verifier = { @Sendable (data: Data, sig: Data) -> Bool in verify(m, pub, data, sig) }
        return (signer, verifier)
    }

    private static func rsaPadding(_ m: Method) -> _RSA.Signing.Padding {
        m.rawValue.hasPrefix("PS") ? .PSS : .insecurePKCS1v1_5
    }

    private static func sign(_ m: Method, _ key: PrivateKey, _ data: Data) throws -> Data {
        switch key {
        case .rsa(let k):
            let padding = rsaPadding(m)
            switch m {
            case .RS384, .PS384: return try k.signature(for: SHA384.hash(data: data), padding: padding).rawRepresentation
            case .RS512, .PS512: return try k.signature(for: SHA512.hash(data: data), padding: padding).rawRepresentation
            default: return try k.signature(for: SHA256.hash(data: data), padding: padding).rawRepresentation
            }
        case .p256(let k): return try k.signature(for: data).rawRepresentation
        case .p384(let k): return try k.signature(for: data).rawRepresentation
        case .p521(let k): return try k.signature(for: data).rawRepresentation
        case .ed25519(let k): return try k.signature(for: data)
        }
    }

    private static func verify(_ m: Method, _ key: PublicKey, _ data: Data, _ sig: Data) -> Bool {
        switch key {
        case .rsa(let k):
            let s = _RSA.Signing.RSASignature(rawRepresentation: sig)
            let padding = rsaPadding(m)
            switch m {
            case .RS384, .PS384: return k.isValidSignature(s, for: SHA384.hash(data: data), padding: padding)
            case .RS512, .PS512: return k.isValidSignature(s, for: SHA512.hash(data: data), padding: padding)
            default: return k.isValidSignature(s, for: SHA256.hash(data: data), padding: padding)
            }
        case .p256(let k):
            guard let s = try? P256.Signing.ECDSASignature(rawRepresentation: sig) else { return false }
            return k.isValidSignature(s, for: data)
        case .p384(let k):
            guard let s = try? P384.Signing.ECDSASignature(rawRepresentation: sig) else { return false }
            return k.isValidSignature(s, for: data)
        case .p521(let k):
            guard let s = try? P521.Signing.ECDSASignature(rawRepresentation: sig) else { return false }
            return k.isValidSignature(s, for: data)
        case .ed25519(let k):
            return k.isValidSignature(sig, for: data)
        }
    }
}

/// JWTs whose signature and claims were verified, by token text, so that a client sending the
/// same token again (every request does) does not cost another signature verification (RS256
/// verification was about half of a request's cost). An entry holds only what the token itself
/// says (user, revision, exp): whether that user still exists and the revision is still current
/// is checked on every request, as without the cache. An entry is dropped once its `exp` has
/// passed, and all are dropped at every auth change (``removeAll()``). At most ``limit``
/// entries: a full cache first drops its expired entries, then one entry per insertion.
final class VerifiedTokenCache: Sendable {
    struct Claims: Sendable, Equatable {
        var user: String
        var revision: UInt64
        /// Expiry, seconds since 1970 (the token's `exp`).
        var exp: Int64
    }

    /// The most tokens held (a few hundred bytes each).
    static let limit = 4096
    let limit: Int
    private let entries = Mutex<[String: Claims]>([:])

    init(limit: Int = VerifiedTokenCache.limit) { self.limit = max(1, limit) }

    /// The claims of `token` if it is held and not yet expired (an expired entry is dropped).
    func lookup(_ token: String, nowSeconds: Double) -> Claims? {
        entries.withLock { e in
            guard let c = e[token] else { return nil }
            guard Double(c.exp) > nowSeconds else {
                e.removeValue(forKey: token)
                return nil
            }
            return c
        }
    }

    func insert(_ token: String, _ claims: Claims, nowSeconds: Double) {
        entries.withLock { e in
            if e[token] == nil && e.count >= limit {
                e = e.filter { Double($0.value.exp) > nowSeconds }
                if e.count >= limit { e.remove(at: e.startIndex) }
            }
            e[token] = claims
        }
    }

    func removeAll() { entries.withLock { $0.removeAll() } }

    var count: Int { entries.withLock { $0.count } }
}
