import Envelope
import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension AdminError: ExitCodeProviding {}

/// Writing a generated KEK pair to disk (`custos keys generate`).
public enum KeyFiles {
    /// Name of the private key file (PKCS#8 PBES2 PEM).
    public static let privateName = "keypair.pem"
    /// Name of the public key file (SPKI PEM).
    public static let publicName = "publickey.crt"
    /// Mode of `keypair.pem`: read-only for owner and group.
    public static let privateMode: mode_t = 0o440
    /// Mode of `publickey.crt`: read-only for everyone.
    public static let publicMode: mode_t = 0o444

    /// Generates an RSA key pair and writes `DIR/keypair.pem` (0440) and `DIR/publickey.crt` (0444).
    ///
    /// Refuses to overwrite: if either file exists, nothing is generated or written. The files are
    /// created with `O_EXCL`, written, `fsync`ed, then given their owner/group and final mode.
    /// Before anything is written the private PEM is read back with the passphrase and checked to
    /// be the same key as the public PEM.
    ///
    /// - Parameters:
    ///   - directory: created (mode 0750) if missing.
    ///   - bits: 2048, 3072 or 4096.
    ///   - passphrase: at least 4 bytes; wiped when this returns.
    ///   - group: group name for both files (`chgrp`), e.g. `prod`.
    ///   - owner: user name for both files (`chown`; needs root).
    /// - Returns: the generated pair (PEM text and KEK id).
    /// - Throws: `AdminError` `.usage` (files exist, unknown user/group, bad bits/passphrase), `.io`.
    public static func generate(in directory: String, bits: Int = 2048, passphrase: SecretBytes,
                                group: String? = nil, owner: String? = nil) throws -> GeneratedKeyPair {
        defer { passphrase.wipe() }
        let privPath = directory + "/" + privateName, pubPath = directory + "/" + publicName
        for p in [privPath, pubPath] where FileManager.default.fileExists(atPath: p) {
            throw AdminError(.usage, "\(p): exists already; keys generate never overwrites key files (choose another --out)")
        }
        let gid = try group.map(groupID)
        let uid = try owner.map(userID)

        let pair: GeneratedKeyPair
        do {
            pair = try KeyGeneration.generateRSA(bits: bits, passphrase: passphrase)
            // Read the private key back exactly as decrypt will, and check it matches.
            let back = try KEKPrivateKey(pemRepresentation: pair.encryptedPrivateKeyPEM, passphrase: passphrase,
                                         source: "generated keypair.pem")
            guard back.id == pair.id else {
                throw AdminError(.io, "key generation: the private key read back is KEK \(back.id), the public key is \(pair.id)")
            }
        } catch let e as EnvelopeError {
            throw AdminError(e.code == .invalidArgument ? .usage : .io, e.message)
        }

        var isDir: ObjCBool = false
        if !FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o750])
            } catch {
                throw AdminError(.io, "\(directory): cannot create key directory: \((error as NSError).localizedDescription)")
            }
        } else if !isDir.boolValue {
            throw AdminError(.io, "\(directory): exists and is not a directory")
        }

        // The encrypted private key first: owner-only until it has its final owner, group and mode.
        try writeNewFile(privPath, data: Data(pair.encryptedPrivateKeyPEM.utf8), mode: 0o400)
        do {
            try writeNewFile(pubPath, data: Data(pair.publicKeyPEM.utf8), mode: 0o444)
            try setOwnership(privPath, uid: uid, gid: gid, mode: privateMode)
            try setOwnership(pubPath, uid: uid, gid: gid, mode: publicMode)
        } catch {
            unlink(privPath)
            if FileManager.default.fileExists(atPath: pubPath) { unlink(pubPath) }
            throw error
        }
        return pair
    }

    static func setOwnership(_ path: String, uid: uid_t?, gid: gid_t?, mode: mode_t) throws {
        if uid != nil || gid != nil {
            guard chown(path, uid ?? uid_t.max, gid ?? gid_t.max) == 0 else {
                throw AdminError(.io, "\(path): cannot set owner/group: \(String(cString: strerror(errno)))")
            }
        }
        guard chmod(path, mode) == 0 else {
            throw AdminError(.io, "\(path): cannot set mode \(String(mode, radix: 8)): \(String(cString: strerror(errno)))")
        }
    }

    static func groupID(_ name: String) throws -> gid_t {
        if let g = getgrnam(name) { return g.pointee.gr_gid }
        if let n = gid_t(name) { return n }
        throw AdminError(.usage, "--group \(name): no such group")
    }

    static func userID(_ name: String) throws -> uid_t {
        if let u = getpwnam(name) { return u.pointee.pw_uid }
        if let n = uid_t(name) { return n }
        throw AdminError(.usage, "--owner \(name): no such user")
    }
}
