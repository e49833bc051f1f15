// swift-tools-version: 6.1
// Custos: a Linux endpoint agent with end-to-end (envelope) encryption.
// Layout and allowed imports: see docs/ARCHITECTURE.md (one module per seam).
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

/// How the shipped executables are linked (docs/ARCHITECTURE.md "Linking"): with the
/// toolchain's lld, relative relocations packed (DT_RELR, glibc >= 2.36: 22 KB instead of
/// 2.8 MB of `.rela.dyn` read at every start) and no symbols exported from the executable
/// (swiftc exports them all by default; nothing looks them up). Together with the static
/// Swift runtime of `make deb` this took the agent from 38 to 34 MiB resident
/// (`Benchmarks/agent.sh`). PIE (ASLR) and BIND_NOW are kept.
let lean: [LinkerSetting] = [
    .unsafeFlags(["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs",
                  "-Xlinker", "--no-export-dynamic"]),
]

let package = Package(
    name: "Custos",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "custos", targets: ["custos"]),
        .executable(name: "custos-agent", targets: ["custos-agent"]),
        .executable(name: "custos-collector", targets: ["custos-collector"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/weichsel/ZIPFoundation.git", from: "0.9.20"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth.git", from: "2.5.0"),
    ],
    targets: [
        // C libraries: one tiny system-library target each, imported only by the module that wraps it.
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CX11", path: "Sources/CX11", pkgConfig: "x11",
                       providers: [.apt(["libx11-dev", "libxext-dev", "libxtst-dev", "libxrandr-dev", "libxfixes-dev", "libxi-dev", "libxss-dev"])]),

        .systemLibrary(name: "CAOM", path: "Sources/CAOM", pkgConfig: "aom", providers: [.apt(["libaom-dev"])]),
        .systemLibrary(name: "CYUV", path: "Sources/CYUV", providers: [.apt(["libyuv-dev"])]),

        // prctl(2) and other variadic system calls Swift cannot import.
        .target(name: "CSysShim", path: "Sources/CSysShim"),

        // Mechanisms and values every module shares: the one backoff, repeated-error log,
        // escaping of outside text, syscall wrapper, and the validated values (agent id,
        // collector URL, SPKI pin, secrets).
        .target(name: "CustosBase", dependencies: [
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),

        // Seams.
        .target(name: "Envelope", dependencies: [
            "COpenSSL", "CustosBase",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "_CryptoExtras", package: "swift-crypto"),
        ], swiftSettings: strict),
        .target(name: "CustosConfig", dependencies: ["CustosBase"], swiftSettings: strict),
        .target(name: "CaptureFormat", swiftSettings: strict),
        .target(name: "CPNGWriter", dependencies: ["CPNG"], path: "Sources/CPNGWriter"),
        .target(name: "CX11Damage", dependencies: ["CX11"], path: "Sources/CX11Damage"),
        // The capture backend seam: frame and keystroke sources, capture values and errors;
        // knows no display protocol (docs/ARCHITECTURE.md "The capture seam").
        .target(name: "CaptureCore", dependencies: [
            "CaptureFormat", "CustosBase",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // The X11 backend of the seam: X connections, frames, keystrokes (RECORD), window context.
        .target(name: "CaptureX11", dependencies: [
            "CaptureCore", "CX11", "CX11Damage", "Video", "CaptureFormat", "CustosBase",
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["Generated/gen-keysyms.sh"], swiftSettings: strict),
        // Picture codecs: raw frames → AV1 packets (libaom) and back, the stream and keyframe
        // policy, PNG (libpng) for frames and stills; knows no X11, crypto or storage.
        .target(name: "Video", dependencies: ["CAOM", "CYUV", "CPNG", "CPNGWriter", "CaptureFormat"], swiftSettings: strict),
        .target(name: "Spool", dependencies: [
            "CSysShim", "CustosBase",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .target(name: "Wire", dependencies: ["CustosBase"], swiftSettings: strict),
        // The storage seam: async protocols by role over typed ids; backends in their own targets.
        .target(name: "CollectorStorage", dependencies: [
            "CustosBase", "Envelope", "CSysShim",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: strict),
        // The SQLite backend (GRDB on the system sqlite3; the embedded default), with blob files
        // for large blobs.
        .target(name: "CollectorStorageSQLite", dependencies: [
            "CollectorStorage", "CustosBase", "Envelope", "CSysShim",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: strict),
        // The PostgreSQL backend (postgres-nio): several collector instances on one database.
        .target(name: "CollectorStoragePostgres", dependencies: [
            "CollectorStorage", "CustosBase", "Envelope",
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // The one way to open storage: a `database=` / `--db` value (StorageLocation) to the backend
        // serving it, as `any CollectorStorage`. The only target that knows every backend.
        .target(name: "CollectorStorageOpen", dependencies: [
            "CollectorStorage", "CollectorStorageSQLite", "CollectorStoragePostgres", "CustosBase",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // Dashboard accounts: the password rule, bcrypt (HummingbirdBcrypt, cost 12, off the
        // concurrency pool) and TOTP (HummingbirdOTP, RFC 6238); shared by `custos admins` and
        // the collector's login.
        .target(name: "AdminAuth", dependencies: [
            "CustosBase", "CollectorStorage",
            .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
            .product(name: "HummingbirdOTP", package: "hummingbird-auth"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: strict),
        .target(name: "Transport", dependencies: [
            "Wire", "Spool", "Envelope", "COpenSSL", "CustosBase",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .target(name: "Collector", dependencies: [
            "Wire", "Envelope", "CustosConfig", "CustosBase", "CSysShim", "CollectorStorage", "CollectorStorageOpen",
            "AdminAuth",
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOFoundationCompat", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .target(name: "Admin", dependencies: [
            "Envelope", "CollectorStorage", "CollectorStorageOpen", "CaptureFormat", "CustosBase", "Video", "AdminAuth", "Collector",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "ZIPFoundation", package: "ZIPFoundation"),
        ], swiftSettings: strict),
        .target(name: "Agent", dependencies: [
            "Envelope", "CustosConfig", "CaptureCore", "CaptureX11", "CaptureFormat", "Video", "Spool", "Transport", "Wire", "CSysShim",
            "CustosBase",
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: strict),

        // Executables: thin mains over the library targets.
        .executableTarget(name: "custos", dependencies: ["Admin"], swiftSettings: strict, linkerSettings: lean),
        .executableTarget(name: "custos-agent", dependencies: ["Agent"], swiftSettings: strict, linkerSettings: lean),
        .executableTarget(name: "custos-collector", dependencies: ["Collector"], swiftSettings: strict, linkerSettings: lean),
        // Test helper: a real X client that grabs the keyboard like a password prompt (core or XI2).
        .executableTarget(name: "x11-grab-keyboard", dependencies: ["CX11"], path: "Tests/Tools/x11-grab-keyboard",
                          swiftSettings: strict),
        .executableTarget(name: "spool-crash-child", dependencies: [
            "Spool", .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .executableTarget(name: "custos-bench-spool", dependencies: [
            "Spool",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "GRDBSQLite", package: "GRDB.swift"),
            .product(name: "Logging", package: "swift-log"),
        ], path: "Benchmarks/SpoolBench", swiftSettings: strict),
        .executableTarget(name: "custos-bench-capture", dependencies: [
            "CaptureCore", "CaptureX11", "CX11", "CustosBase", .product(name: "Logging", package: "swift-log"),
        ], path: "Benchmarks/CaptureBench", swiftSettings: strict),
        .executableTarget(name: "custos-bench-video", dependencies: ["Video"], path: "Benchmarks/VideoBench",
                          swiftSettings: strict),
        .executableTarget(name: "custos-bench-envelope", dependencies: [
            "Envelope",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "_CryptoExtras", package: "swift-crypto"),
        ], path: "Benchmarks/EnvelopeBench", swiftSettings: strict),

        // What the benchmark programs share (their arguments, their error).
        .target(name: "BenchSupport", path: "Benchmarks/BenchSupport", swiftSettings: strict),
        .executableTarget(name: "custos-bench-net", dependencies: [
            "BenchSupport", "Collector", "CollectorStorage", "Transport", "Envelope", "Wire", "Spool",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ], path: "Benchmarks/NetBench", swiftSettings: strict),

        .executableTarget(name: "custos-bench-storage", dependencies: [
            "BenchSupport", "CollectorStorage", "CollectorStorageOpen", "CollectorStorageSQLite", "CustosBase", "Envelope", "TestSupport",
            .product(name: "Logging", package: "swift-log"),
        ], path: "Benchmarks/StorageBench", swiftSettings: strict),

        .executableTarget(name: "custos-bench-collectors", dependencies: [
            "CollectorStorage", "CollectorStorageOpen", "CustosBase", "Envelope", "TestSupport", "Transport", "Wire",
            .product(name: "Logging", package: "swift-log"),
        ], path: "Benchmarks/CollectorsBench", swiftSettings: strict),

        // Tests: real Xvfb, real openssl keys, real SQLite files, real TLS on 127.0.0.1.
        .target(name: "TestSupport", dependencies: [
            "Collector", "CollectorStorage", "CollectorStorageOpen", "AdminAuth", "CustosBase", .product(name: "Logging", package: "swift-log"),
        ], path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "BaseTests", dependencies: [
            "CustosBase", "TestSupport", .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .testTarget(name: "VideoTests", dependencies: ["Video", "CaptureFormat", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "EnvelopeTests", dependencies: ["Envelope", "CustosBase", "TestSupport"],
                    resources: [.copy("Fixtures")], swiftSettings: strict),
        .testTarget(name: "ConfigTests", dependencies: ["CustosConfig", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "CaptureTests", dependencies: [
            "CaptureCore", "CaptureX11", "CaptureFormat", "CPNG", "CX11", "CustosBase", "TestSupport", "Video",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .testTarget(name: "SpoolTests", dependencies: [
            "Spool", "TestSupport",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .testTarget(name: "NetTests", dependencies: ["Transport", "Collector", "CollectorStorage", "CollectorStorageSQLite", "AdminAuth",
                                                     "Wire", "Spool", "Envelope", "TestSupport"],
                    swiftSettings: strict),
        .testTarget(name: "AdminTests", dependencies: ["Admin", "AdminAuth", "CollectorStorage", "CollectorStorageSQLite", "CustosBase", "Envelope",
                                                       "CaptureFormat", "Video", "TestSupport"],
                    swiftSettings: strict),
        // One conformance suite for every CollectorStorage backend (Backend.testable).
        .testTarget(name: "StorageTests", dependencies: [
            "CollectorStorage", "CollectorStorageSQLite", "CollectorStoragePostgres", "CollectorStorageOpen", "CustosBase",
            "Envelope", "TestSupport",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: strict),
        .testTarget(name: "AgentTests", dependencies: [
            "Agent", "TestSupport", "Spool", "Envelope", "Video", "CaptureFormat",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
    ]
)
