// swift-tools-version: 6.1
import PackageDescription

// A package outside swift-vhost that depends on it by path and uses only its public API, as a
// VMM written on the library would. `Scripts/test` builds and runs it; the getting-started
// article (Sources/VhostNet/VhostNet.docc/GettingStarted.md) shows the same code.
let package = Package(
    name: "outside-package",
    dependencies: [
        .package(name: "swift-vhost", path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "outside-example",
            dependencies: [
                .product(name: "VhostNet", package: "swift-vhost"),
                .product(name: "VhostModel", package: "swift-vhost"),
                .product(name: "Vhost", package: "swift-vhost"),
                .product(name: "NetFormats", package: "swift-vhost"),
                .product(name: "VhostScript", package: "swift-vhost"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
