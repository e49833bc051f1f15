import ArgumentParser
import Envelope

/// `custos keys id FILE`: prints the KEK id of a public key (SHA-256 of its SPKI DER, the value of
/// `openssl pkey -pubin -in FILE -outform DER | sha256sum`).
public struct KeysIDCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "id",
        abstract: "Print the KEK id (SHA-256 of the SPKI DER) of an RSA public key PEM file."
    )

    @Argument(help: "RSA public key PEM ('BEGIN PUBLIC KEY' or 'BEGIN RSA PUBLIC KEY').")
    var file: String

    public init() {}

    public func run() async throws {
        let kek = try KEKPublicKey(pemFile: file)
        printOut(kek.id.hex)
    }
}
