// swift-tools-version: 6.1
// The driver's hot paths without a kernel, with ordo-one/benchmark:
//   cd Benchmarks && swift package --disable-sandbox benchmark
// Kernel datapath numbers come from `vhostctl bench` (side by side in one run).
import Foundation
import PackageDescription

// A path dependency is named after its folder, which is whatever the clone is called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let rootPackage = root.lastPathComponent.lowercased()

let package = Package(
    name: "swift-vhost-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "DriverRing",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Virtio", package: rootPackage),
                .product(name: "VhostNet", package: rootPackage),
                .product(name: "NetFormats", package: rootPackage),
            ],
            path: "Benchmarks/DriverRing",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // The Swift ring driver against a C loop doing the same ring operations: ./ring-vs-c.
        // Under Sources/, not Benchmarks/: the benchmark plugin runs every executable there as a benchmark.
        .target(name: "CRingLoop", path: "Sources/CRingLoop", cSettings: [.unsafeFlags(["-O2"])]),
        .executableTarget(
            name: "ring-vs-c",
            dependencies: ["CRingLoop", .product(name: "Virtio", package: rootPackage)],
            path: "Sources/RingVersusC"
        ),
        // attach's receive path as a sink on the in-process device, for callgrind: ./endpoint-sink.
        .executableTarget(
            name: "endpoint-sink",
            dependencies: [
                .product(name: "VhostNet", package: rootPackage),
                .product(name: "VhostModel", package: rootPackage),
                .product(name: "Vhost", package: rootPackage),
                .product(name: "NetFormats", package: rootPackage),
            ],
            path: "Sources/EndpointSink"
        ),
    ]
)
