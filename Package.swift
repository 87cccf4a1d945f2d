// swift-tools-version: 6.1
import PackageDescription

// One target per layer; see docs/architecture.md.
//   CVhost   – the C ABI: UAPI headers, ioctl numbers, layout asserts, tap helper.
//   Virtio   – pure ring layout, driver logic, header formats, device model. No syscalls.
//   Vhost    – the kernel device, guest memory, eventfds and the tap.
//   VhostNet – the NIC: queues, TX/RX, the endpoint.
//   vhostctl – the CLI.
let package = Package(
    name: "swift-vhost",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vhostctl", targets: ["vhostctl"]),
        .library(name: "VhostNet", targets: ["VhostNet"]),
        .library(name: "Vhost", targets: ["Vhost"]),
        .library(name: "Virtio", targets: ["Virtio"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        .target(name: "CVhost"),
        .target(name: "Virtio"),
        .target(
            name: "Vhost",
            dependencies: [
                "CVhost", "Virtio",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(
            name: "VhostNet",
            dependencies: [
                "Vhost", "Virtio",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "vhostctl",
            dependencies: [
                "VhostNet", "Vhost", "Virtio",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The kernel tier: runs against a real /dev/vhost-net (on the host or under Scripts/vm).
        .executableTarget(
            name: "vhost-kernel-tests",
            dependencies: ["VhostNet", "Vhost", "Virtio", "CVhost"],
            path: "Sources/VhostKernelTests"
        ),
        .testTarget(
            name: "VirtioTests",
            dependencies: ["Virtio", .product(name: "PropertyBased", package: "swift-property-based")]
        ),
        .testTarget(name: "VhostTests", dependencies: ["Vhost", "VhostNet", "Virtio", "CVhost"]),
    ],
    swiftLanguageModes: [.v6]
)
