import Foundation
import Logging
import NIOCore
import NIOSSL
import Synchronization
import SwiftASN1
import X509

/// A certificate revocation list (RFC 5280 §5.1) whose signature has been checked against a
/// trusted CA: the revoked serial numbers of one issuer, and until when the list is current.
struct CertificateRevocationList: Sendable, Equatable {
    /// The CA that signed the list; its entries revoke certificates this CA issued.
    let issuer: DistinguishedName
    let thisUpdate: Date
    /// nil when the list does not say (it then never goes stale).
    let nextUpdate: Date?
    /// Revoked serial numbers, big-endian without leading zero bytes.
    let revoked: Set<[UInt8]>

    /// The largest CRL file read (a list of a million entries is about 40 MB).
    static let maxFileBytes = 64 << 20

    /// Parses every list in `bytes` (DER, or PEM with one or more `X509 CRL` blocks) and checks
    /// each one's signature against the CA certificates `signers`. Throws a `CRLError` that says
    /// what is wrong; never traps on malformed input.
    static func parse(_ bytes: [UInt8], signers: [Certificate]) throws -> [CertificateRevocationList] {
        guard !bytes.isEmpty else { throw CRLError("the file is empty") }
        guard bytes.count <= maxFileBytes else { throw CRLError("the file is larger than \(maxFileBytes >> 20) MiB") }
        var ders: [[UInt8]] = []
        if bytes[0] == 0x30 {
            ders = [bytes]
        } else {
            let text = String(decoding: bytes, as: UTF8.self)
            let documents: [PEMDocument]
            do { documents = try PEMDocument.parseMultiple(pemString: text) } catch {
                throw CRLError("neither DER nor PEM (\(error))")
            }
            guard !documents.isEmpty else { throw CRLError("neither DER nor PEM (no PEM block)") }
            ders = documents.filter { $0.discriminator == "X509 CRL" }.map(\.derBytes)
            guard !ders.isEmpty else {
                throw CRLError("no \"X509 CRL\" PEM block (found: \(documents.map(\.discriminator).joined(separator: ", ")))")
            }
        }
        return try ders.enumerated().map { index, der in
            do { return try CertificateRevocationList(der: der, signers: signers) } catch let error as CRLError {
                throw ders.count == 1 ? error : CRLError("list \(index + 1): \(error.description)")
            }
        }
    }

    /// One DER-encoded CertificateList.
    init(der: [UInt8], signers: [Certificate]) throws {
        let root: ASN1Node
        do { root = try DER.parse(der) } catch { throw CRLError("not valid DER: \(error)") }
        do {
            var tbs: ASN1Node?, outerAlgorithm: ASN1Node?, signature: ASN1BitString?
            try DER.sequence(root, identifier: .sequence) { nodes in
                guard let t = nodes.next(), let a = nodes.next(), let s = nodes.next() else {
                    throw CRLError("a CertificateList needs tbsCertList, signatureAlgorithm and signatureValue")
                }
                tbs = t
                outerAlgorithm = a
                signature = try ASN1BitString(derEncoded: s)
            }
            guard let tbs, let outerAlgorithm, let signature else { throw CRLError("truncated CertificateList") }
            let algorithm = try Self.signatureAlgorithm(outerAlgorithm)

            // TBSCertList: version?, signature, issuer, thisUpdate, nextUpdate?, revoked?, [0] extensions?
            var fields: [ASN1Node] = []
            try DER.sequence(tbs, identifier: .sequence) { nodes in
                while let n = nodes.next() { fields.append(n) }
            }
            var i = 0
            func next() -> ASN1Node? { i < fields.count ? fields[i] : nil }
            if let v = next(), v.identifier == .integer {
                guard case .primitive(let bytes) = v.content, bytes.elementsEqual([1]) else {
                    throw CRLError("unsupported CRL version (only v2 is defined)")
                }
                i += 1
            }
            guard let innerAlgorithm = next(), innerAlgorithm.encodedBytes.elementsEqual(outerAlgorithm.encodedBytes) else {
                throw CRLError("the signature algorithm inside the list differs from the one outside")
            }
            i += 1
            guard let issuerNode = next() else { throw CRLError("no issuer") }
            let issuer = try DistinguishedName(derEncoded: issuerNode)
            i += 1
            guard let thisNode = next(), let thisUpdate = try Self.time(thisNode) else { throw CRLError("no thisUpdate time") }
            i += 1
            var nextUpdate: Date?
            if let n = next(), let t = try Self.time(n) {
                nextUpdate = t
                i += 1
            }
            var revoked: Set<[UInt8]> = []
            if let n = next(), n.identifier == .sequence {
                try DER.sequence(n, identifier: .sequence) { entries in
                    while let entry = entries.next() {
                        try DER.sequence(entry, identifier: .sequence) { parts in
                            guard let serial = parts.next(), serial.identifier == .integer,
                                  case .primitive(let bytes) = serial.content, !bytes.isEmpty else {
                                throw CRLError("a revoked entry has no serial number")
                            }
                            guard let date = parts.next(), try Self.time(date) != nil else {
                                throw CRLError("a revoked entry has no revocation date")
                            }
                            if let extensions = parts.next() { try Self.checkExtensions(extensions, entry: true) }
                            revoked.insert(Self.normalized(bytes))
                        }
                    }
                }
                i += 1
            }
            if let n = next(), n.identifier == ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific) {
                guard case .constructed(let inner) = n.content, let list = inner.first(where: { _ in true }) else {
                    throw CRLError("malformed crlExtensions")
                }
                try Self.checkExtensions(list, entry: false)
                i += 1
            }
            guard i == fields.count else { throw CRLError("unexpected fields at the end of the list") }

            // The signature: by a trusted CA whose subject is the list's issuer.
            let candidates = signers.filter { $0.subject == issuer }
            guard !candidates.isEmpty else {
                throw CRLError("its issuer \(issuer) is not a certificate in the trusted CA file")
            }
            guard candidates.contains(where: {
                $0.publicKey.isValidSignature(signature.bytes, for: tbs.encodedBytes, signatureAlgorithm: algorithm)
            }) else {
                throw CRLError("its signature does not verify with the trusted CA \(issuer)")
            }
            self.issuer = issuer
            self.thisUpdate = thisUpdate
            self.nextUpdate = nextUpdate
            self.revoked = revoked
        } catch let error as CRLError {
            throw error
        } catch {
            throw CRLError("malformed CertificateList: \(error)")
        }
    }

    /// Whether `certificate` (issued by `issuer` with serial `serial`) is on this list.
    func revokes(issuer: DistinguishedName, serial: ArraySlice<UInt8>) -> Bool {
        issuer == self.issuer && revoked.contains(Self.normalized(serial))
    }

    static func normalized(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        let trimmed = bytes.drop { $0 == 0 }
        return trimmed.isEmpty ? [0] : Array(trimmed)
    }

    /// The algorithms swift-certificates verifies, by their object identifier.
    static func signatureAlgorithm(_ node: ASN1Node) throws -> Certificate.SignatureAlgorithm {
        var oid: ASN1ObjectIdentifier?
        try DER.sequence(node, identifier: .sequence) { nodes in
            guard let o = nodes.next() else { throw CRLError("empty signature algorithm") }
            oid = try ASN1ObjectIdentifier(derEncoded: o)
            _ = nodes.next()  // parameters (NULL for RSA), if any
        }
        let known: [ASN1ObjectIdentifier: Certificate.SignatureAlgorithm] = [
            [1, 2, 840, 10045, 4, 3, 2]: .ecdsaWithSHA256,
            [1, 2, 840, 10045, 4, 3, 3]: .ecdsaWithSHA384,
            [1, 2, 840, 10045, 4, 3, 4]: .ecdsaWithSHA512,
            [1, 2, 840, 113549, 1, 1, 5]: .sha1WithRSAEncryption,
            [1, 2, 840, 113549, 1, 1, 11]: .sha256WithRSAEncryption,
            [1, 2, 840, 113549, 1, 1, 12]: .sha384WithRSAEncryption,
            [1, 2, 840, 113549, 1, 1, 13]: .sha512WithRSAEncryption,
            [1, 3, 101, 112]: .ed25519,
        ]
        guard let oid, let algorithm = known[oid] else {
            throw CRLError("unsupported signature algorithm \(oid.map { "\($0)" } ?? "?")")
        }
        return algorithm
    }

    /// A critical extension this checker does not understand makes the list unusable (RFC 5280
    /// §5.2); delta lists and indirect entries are among them.
    static func checkExtensions(_ node: ASN1Node, entry: Bool) throws {
        // CRL number, authority key identifier, issuing distribution point, issuer alternative
        // name; for entries: reason code, invalidity date.
        let understood: Set<ASN1ObjectIdentifier> = entry
            ? [[2, 5, 29, 21], [2, 5, 29, 24]]
            : [[2, 5, 29, 20], [2, 5, 29, 35], [2, 5, 29, 28], [2, 5, 29, 18]]
        try DER.sequence(node, identifier: .sequence) { list in
            while let ext = list.next() {
                try DER.sequence(ext, identifier: .sequence) { parts in
                    guard let o = parts.next() else { throw CRLError("empty extension") }
                    let oid = try ASN1ObjectIdentifier(derEncoded: o)
                    var critical = false
                    var value = parts.next()
                    if let v = value, v.identifier == .boolean {
                        critical = try Bool(derEncoded: v)
                        value = parts.next()
                    }
                    guard let value, value.identifier == .octetString else { throw CRLError("extension \(oid) has no value") }
                    if critical && !understood.contains(oid) {
                        throw CRLError("unsupported critical \(entry ? "entry " : "")extension \(oid)"
                            + (oid == [2, 5, 29, 27] ? " (delta CRLs are not supported)" : "")
                            + (oid == [2, 5, 29, 29] ? " (indirect CRLs are not supported)" : ""))
                    }
                }
            }
        }
    }

    /// UTCTime or GeneralizedTime as a date; nil when `node` is neither.
    static func time(_ node: ASN1Node) throws -> Date? {
        let c: (year: Int, month: Int, day: Int, hours: Int, minutes: Int, seconds: Int)
        if node.identifier == UTCTime.defaultIdentifier {
            let t = try UTCTime(derEncoded: node)
            c = (t.year, t.month, t.day, t.hours, t.minutes, t.seconds)
        } else if node.identifier == GeneralizedTime.defaultIdentifier {
            let t = try GeneralizedTime(derEncoded: node)
            c = (t.year, t.month, t.day, t.hours, t.minutes, t.seconds)
        } else {
            return nil
        }
        // Days since 1970-01-01 in the proleptic Gregorian calendar (civil-from-days inverse).
        let y = c.month <= 2 ? c.year - 1 : c.year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (c.month + (c.month > 2 ? -3 : 9)) + 2) / 5 + c.day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        return Date(timeIntervalSince1970: TimeInterval(days * 86_400 + c.hours * 3600 + c.minutes * 60 + c.seconds))
    }
}

struct CRLError: Error, CustomStringConvertible, Equatable {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `--client-crl-file` (and `--peer-crl-file`): the revocation lists of a TLS listener, loaded
/// at start (a list that does not parse or whose signature does not verify against
/// `--trusted-ca-file` is a start error), re-read for new connections when the list or the CA
/// file changes (a changed list that does not load keeps the previous one, with an error in the
/// log), and consulted during each handshake for every certificate of the verified chain.
final class CertificateRevocation: Sendable {
    let crlFile: String
    let caFile: String
    private let logger: Logger
    private let state: Mutex<(stamp: [ClientTLSContextSource.FileStamp?], lists: [CertificateRevocationList])>

    init(crlFile: String, caFile: String, logger: Logger) throws {
        self.crlFile = crlFile
        self.caFile = caFile
        self.logger = logger
        let stamp = [ClientTLSContextSource.FileStamp.of(crlFile), ClientTLSContextSource.FileStamp.of(caFile)]
        state = Mutex((stamp, try Self.load(crlFile: crlFile, caFile: caFile)))
    }

    /// Reads and verifies the lists in `crlFile` against the CAs in `caFile`.
    static func load(crlFile: String, caFile: String) throws -> [CertificateRevocationList] {
        guard !caFile.isEmpty else {
            throw CRLError("\(crlFile): a CRL needs a trusted CA file to check its signature against")
        }
        func read(_ path: String) throws -> [UInt8] {
            guard let h = FileHandle(forReadingAtPath: path) else { throw CRLError("\(path): cannot be read") }
            defer { try? h.close() }
            let data = (try? h.read(upToCount: CertificateRevocationList.maxFileBytes + 1)) ?? Data()
            return [UInt8](data)
        }
        let caBytes = try read(caFile)
        let signers: [Certificate]
        do {
            signers = try PEMDocument.parseMultiple(pemString: String(decoding: caBytes, as: UTF8.self))
                .filter { $0.discriminator == "CERTIFICATE" }
                .map { try Certificate(derEncoded: $0.derBytes) }
        } catch { throw CRLError("\(caFile): cannot parse the CA certificates: \(error)") }
        do { return try CertificateRevocationList.parse(try read(crlFile), signers: signers) } catch let error as CRLError {
            throw CRLError("\(crlFile): \(error.description)")
        }
    }

    /// The current lists, re-read first if the CRL or CA file changed.
    func lists() -> [CertificateRevocationList] {
        let stamp = [ClientTLSContextSource.FileStamp.of(crlFile), ClientTLSContextSource.FileStamp.of(caFile)]
        return state.withLock { state in
            guard stamp != state.stamp else { return state.lists }
            do {
                state.lists = try Self.load(crlFile: crlFile, caFile: caFile)
                state.stamp = stamp
                logger.info("certificate revocation list changed; new connections are checked against it",
                            metadata: ["crl-file": "\(crlFile)", "revoked": "\(state.lists.reduce(0) { $0 + $1.revoked.count })"])
            } catch {
                // Kept, and retried at the next connection (the stamp is not updated).
                logger.error("certificate revocation list changed but does not load; still using the previous one",
                             metadata: ["crl-file": "\(crlFile)", "error": "\(error)"])
            }
            return state.lists
        }
    }

    /// Why `certificate` must be refused under `lists` at `now`, or nil: its serial is on its
    /// issuer's list, or its issuer's list is past its nextUpdate (a stale list cannot vouch
    /// for anything, as OpenSSL's CRL check decides). Certificates of issuers without a list pass.
    static func refusal(_ certificate: Certificate, lists: [CertificateRevocationList], now: Date) -> String? {
        for list in lists where list.issuer == certificate.issuer {
            if list.revokes(issuer: certificate.issuer, serial: certificate.serialNumber.bytes) {
                return "certificate serial \(certificate.serialNumber) (\(certificate.subject)) is revoked"
            }
            if let next = list.nextUpdate, next < now {
                return "the revocation list of \(list.issuer) expired at \(next) (nextUpdate); refresh the CRL file"
            }
        }
        return nil
    }

    /// `refusal` for each certificate of a presented chain (leaf first); nil when all pass.
    func refusal(chain: [NIOSSLCertificate], now: Date = Date()) -> String? {
        let lists = lists()
        guard !lists.isEmpty else { return nil }
        for c in chain {
            guard let der = try? c.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else {
                return "a presented certificate does not parse"
            }
            if let why = Self.refusal(parsed, lists: lists, now: now) { return why }
        }
        return nil
    }

    /// The TLS server handler of an accepted connection: `context`'s own verification, and with
    /// `revocation` each certificate of the verified chain checked against the lists, so a
    /// revoked certificate fails the handshake. The client port uses it; the peer port's
    /// listener should too (`--peer-crl-file`).
    static func serverHandler(context: NIOSSLContext, revocation: CertificateRevocation?) -> NIOSSLServerHandler {
        guard let revocation else { return NIOSSLServerHandler(context: context) }
        // Taken once per connection: every certificate of this handshake sees the same lists.
        let lists = revocation.lists()
        let logger = revocation.logger
        let callback: NIOSSLVerificationCallback = { preverified, certificate in
            guard preverified == .certificateVerified else { return .failed }
            guard !lists.isEmpty else { return .certificateVerified }
            guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else { return .failed }
            if let why = refusal(parsed, lists: lists, now: Date()) {
                logger.warning("rejected connection: \(why)", metadata: ["crl-file": "\(revocation.crlFile)"])
                return .failed
            }
            return .certificateVerified
        }
        return makeVerifying(NIOSSLServerHandler.self, context: context, callback: callback)
    }

    /// NIOSSL's per-certificate verification callback (BoringSSL's verify callback: called for
    /// each certificate of the chain with BoringSSL's own verdict) is the hook that sees the
    /// whole verified chain without replacing BoringSSL's verification; its initializer is marked
    /// deprecated in favour of callbacks that replace verification altogether.
    private static func makeVerifying<H: PerCertificateVerifying>(_: H.Type, context: NIOSSLContext,
                                                                  callback: @escaping NIOSSLVerificationCallback) -> H {
        // The initializer only traps (never throws) when it cannot create a connection.
        try! H(context: context, verificationCallback: callback)
    }
}

/// NIOSSLServerHandler's initializer with a per-certificate verification callback.
protocol PerCertificateVerifying {
    init(context: NIOSSLContext, verificationCallback: NIOSSLVerificationCallback?) throws
}

extension NIOSSLServerHandler: PerCertificateVerifying {}
