// swift-tools-version: 6.1
import PackageDescription

// One target per layer, each using only what is below it; see docs/architecture.md.
// Each target declares exactly the modules its sources import: Scripts/check-imports checks it.
//   CVhost          – the C ABI: UAPI headers, ioctl numbers, layout asserts, thin wrappers.
//   Virtio          – pure split-ring logic: layout, driver, device model, virtio-net header. No syscalls.
//   NetFormats      – Ethernet, IPv4, ARP, ICMP, UDP and pcap: bytes in, bytes out. No syscalls.
//   Vhost           – the kernel-facing objects: the backend interface, /dev/vhost-net, guest memory,
//                     eventfds, taps and interface requests, all ioctls through one traced path.
//   VhostModel      – the in-process vhost-net device: the Virtio device model serving the rings
//                     from a thread, with a frame pipe as its backend (for tests and users without a kernel).
//   HostNetwork     – the host stack's side: packet and UDP/ICMP sockets, addresses, neighbours.
//   VhostNet        – the NIC: queues, the bring-up session, queue pairs, the endpoint, pcap files.
//   VhostScript     – scripts of vhost ioctls, run on the kernel's device or the in-process one.
//   DatapathMeasure – frame rates through a queue pair (demo, bench, kernel tests).
//   VhostTestSupport – fault injection (broken rings, corrupt used entries), for the tests only.
//   DatapathSuite   – the datapath tests that run against any backend (unit tier and kernel tier).
//   KernelTierScripts – the kernel tier's inline scripts (the unit tier parses them) and its record of
//                     which script commands ran; for the tests only.
//   FuzzTargets     – every parser of untrusted input as a fuzzing target (script, pcap, frames,
//                     netlink answers); vhost-fuzz is its libFuzzer driver (Scripts/fuzz). In no product.
//   vhostctl        – the CLI; Plugins/GitRevision writes the git revision it was built from (--version).
let package = Package(
    name: "swift-vhost",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vhostctl", targets: ["vhostctl"]),
        .library(name: "VhostNet", targets: ["VhostNet"]),
        .library(name: "Vhost", targets: ["Vhost"]),
        .library(name: "VhostModel", targets: ["VhostModel"]),
        .library(name: "VhostScript", targets: ["VhostScript"]),
        .library(name: "Virtio", targets: ["Virtio"]),
        .library(name: "NetFormats", targets: ["NetFormats"]),
        .library(name: "HostNetwork", targets: ["HostNetwork"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        // `swift package generate-documentation`: the DocC archives of the library targets.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(name: "CVhost"),
        .target(name: "Virtio"),
        .target(name: "NetFormats"),
        .target(
            name: "Vhost",
            dependencies: [
                "CVhost", "Virtio",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(name: "VhostModel", dependencies: ["Vhost", "Virtio", "CVhost", .product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "HostNetwork", dependencies: ["Vhost", "NetFormats", "CVhost", .product(name: "SystemPackage", package: "swift-system")]),
        .target(
            name: "VhostNet",
            dependencies: [
                "Vhost", "Virtio", "NetFormats",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(name: "VhostScript", dependencies: ["Vhost", "VhostModel", "Virtio", "NetFormats", "HostNetwork", .product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "DatapathMeasure", dependencies: ["VhostNet", "Vhost", "Virtio", "HostNetwork", "NetFormats",
                                                 .product(name: "Histogram", package: "hdrhistogram-swift"),
                                                 .product(name: "SystemPackage", package: "swift-system")]),
        // Fault injection for the tests only (the test targets, DatapathSuite, vhost-kernel-tests); in no product.
        .target(name: "VhostTestSupport", dependencies: ["VhostNet", "Vhost", "VhostModel", "Virtio"]),
        .target(name: "DatapathSuite", dependencies: ["VhostNet", "Vhost", "VhostModel", "VhostTestSupport", "HostNetwork", "NetFormats", "Virtio"]),
        // The kernel tier's inline scripts and its coverage record, shared with the unit tier; in no product.
        .target(name: "KernelTierScripts", dependencies: ["Vhost", "VhostScript"]),
        // The fuzzing targets (Scripts/fuzz builds vhost-fuzz with -sanitize=fuzzer); in no product.
        .target(name: "FuzzTargets", dependencies: ["VhostScript", "VhostNet", "Vhost", "NetFormats", "Virtio"]),
        .executableTarget(name: "vhost-fuzz", dependencies: ["FuzzTargets"]),
        .executableTarget(
            name: "vhostctl",
            dependencies: [
                "VhostNet", "Vhost", "Virtio", "NetFormats", "HostNetwork", "VhostScript", "DatapathMeasure",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            plugins: ["GitRevision"]
        ),
        // Writes the git revision vhostctl was built from (for --version) before each build.
        .plugin(name: "GitRevision", capability: .buildTool()),
        // The kernel tier: runs against a real /dev/vhost-net (on the host or under Scripts/vm).
        .executableTarget(
            name: "vhost-kernel-tests",
            dependencies: ["VhostNet", "Vhost", "VhostModel", "Virtio", "NetFormats", "HostNetwork", "VhostScript", "DatapathSuite", "DatapathMeasure", "VhostTestSupport", "KernelTierScripts",
                           .product(name: "SystemPackage", package: "swift-system")],
            path: "Sources/VhostKernelTests"
        ),
        .testTarget(
            name: "VirtioTests",
            dependencies: ["Virtio", .product(name: "PropertyBased", package: "swift-property-based")]
        ),
        .testTarget(name: "NetFormatsTests", dependencies: ["NetFormats"]),
        // The CLI's parsing: global options before and after the subcommand, --version.
        .testTarget(name: "VhostCtlTests", dependencies: ["vhostctl", "Virtio", "Vhost", "VhostNet", "DatapathMeasure", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .testTarget(name: "VhostTests", dependencies: ["Vhost", "VhostNet", "VhostScript", "VhostModel", "VhostTestSupport", "DatapathSuite", "KernelTierScripts", "FuzzTargets", "Virtio", "NetFormats", "CVhost",
                                                       .product(name: "SystemPackage", package: "swift-system"),
                                                       .product(name: "PropertyBased", package: "swift-property-based")]),
    ],
    swiftLanguageModes: [.v6]
)
