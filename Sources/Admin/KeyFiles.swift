import CustosBase
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

        // The encrypted private key first: owner-only until it has its final owner, group and
        // mode. Both files are made relative to the directory opened once, never through a link.
        let (folder, _) = try OutputDirectory.openFolder(of: privPath, what: "key file")
        try folder.writeNewFile(privateName, data: Data(pair.encryptedPrivateKeyPEM.utf8), mode: 0o400)
        var wrotePublic = false
        do {
            try folder.writeNewFile(publicName, data: Data(pair.publicKeyPEM.utf8), mode: 0o444)
            wrotePublic = true
            try setOwnership(folder, privateName, uid: uid, gid: gid, mode: privateMode)
            try setOwnership(folder, publicName, uid: uid, gid: gid, mode: publicMode)
        } catch {
            folder.remove(privateName)
            if wrotePublic { folder.remove(publicName) }
            throw error
        }
        folder.sync()
        return pair
    }

    /// Gives `name` in `folder` its owner, group (`fchownat`, not following a link) and mode.
    static func setOwnership(_ folder: OutputDirectory, _ name: String, uid: uid_t?, gid: gid_t?, mode: mode_t) throws {
        let path = folder.path + "/" + name
        do {
            if uid != nil || gid != nil {
                try syscall("fchownat", path) {
                    fchownat(folder.fd.rawValue, name, uid ?? uid_t.max, gid ?? gid_t.max, AT_SYMLINK_NOFOLLOW)
                }
            }
            try syscall("fchmodat", path) { fchmodat(folder.fd.rawValue, name, mode, 0) }
        } catch {
            throw AdminError(.io, "\(path): cannot set owner, group or mode \(octal(mode)): \(error.reason)")
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
