import ArgumentParser
import Vhost
import VhostNet
import HostNetwork
import NetFormats
import Virtio

extension DescriptorLayout: ExpressibleByArgument {}
extension MemoryPlacement: ExpressibleByArgument {}
extension NotificationMode: ExpressibleByArgument {}

/// How the datapath is configured: the options `attach` and `bench` share, so a run can
/// reproduce the configuration a real VM uses.
struct DatapathOptions: ParsableArguments {
    @Option(parsing: .upToNextOption, help: "virtio features to negotiate, by name (default: VERSION_1 EVENT_IDX). The offload features (CSUM, GUEST_CSUM, HOST_USO, GUEST_TSO4, …) are negotiated with the tap's side, not sent to vhost.",
            completion: CompletionHints.features)
    var features: [String] = []

    @Option(name: .customLong("queue-size"), help: "Descriptors per ring: a power of 2 from 2 to 32768.")
    var queueSize = 256

    @Option(name: .customLong("buffer-size"), help: "Bytes per RX/TX buffer (header included).")
    var bufferSize = 2048

    @Option(help: "Descriptor layout: inline, separateHeader or indirect (needs INDIRECT_DESC).")
    var descriptors: DescriptorLayout = .inline

    @Option(help: "Guest memory: single, or belowAndAbove4GiB (two regions with a hole).")
    var memory: MemoryPlacement = .single

    @Flag(help: "Back guest memory with 2 MiB huge pages (memfd MFD_HUGETLB).")
    var hugepages = false

    @Option(help: "How the driver waits: interrupt (epoll on the call eventfds) or poll.")
    var notify: NotificationMode = .interrupt

    @Option(name: .customLong("busyloop-timeout"), help: "VHOST_SET_VRING_BUSYLOOP_TIMEOUT for both vrings, in microseconds.")
    var busyloopTimeout: UInt32?

    @Option(name: .customLong("rx-coalesce"), help: "RX interrupt coalescing, as ethtool -C rx-frames sets on a NIC: auto (adaptive, up to half the RX ring; the default), a frame count, or 0 (wake on every signal). It needs interrupt mode and EVENT_IDX (auto is off without them). Frames that get an answer (ARP, ping, echo) are never held: for a second after a reply every frame wakes the endpoint at once.")
    var rxCoalesce: ReceiveCoalescingSetting = .adaptive

    @Option(name: .customLong("rx-coalesce-delay"), help: "The longest --rx-coalesce holds a frame, in milliseconds (1 to 1000; as ethtool -C rx-usecs).")
    var rxCoalesceDelay: Int32 = 1

    @Flag(name: .customLong("low-latency"), help: "The lowest-latency configuration vhost-net allows: the driver busy-polls its used rings (as --notify poll), the vhost worker busy-polls too (--busyloop-timeout \(DatapathOptions.lowLatencyBusyloop) unless given), and unless --worker-cpu is given the driver's thread and the workers run on different CPUs. Each side spins on a CPU while idle. docs/benchmarks.md has the round trips per kernel.")
    var lowLatency = false

    /// The busy-loop timeout of `--low-latency`, in µs: the lowest p50 among those measured
    /// (docs/benchmarks.md, "Latency").
    static let lowLatencyBusyloop: UInt32 = 50

    /// How the driver waits: `--notify`, or poll with `--low-latency`.
    var notificationMode: NotificationMode { lowLatency ? .poll : notify }
    /// `--busyloop-timeout`, or with `--low-latency` its default.
    var effectiveBusyloopTimeout: UInt32? { busyloopTimeout ?? (lowLatency ? DatapathOptions.lowLatencyBusyloop : nil) }

    @Option(parsing: .upToNextOption, help: "RX offloads the driver accepts (TUNSETOFFLOAD): csum tso4 tso6 ecn ufo uso4 uso6, or none. Without it they follow the GUEST_ offload features (GUEST_CSUM, GUEST_TSO4, …), as QEMU derives them from the guest's.",
            completion: .list(DatapathOptions.offloadNames.keys.sorted()))
    var offloads: [String] = []

    @Option(name: .customLong("net-header"), help: "Who adds and strips the virtio-net header: vhost (VHOST_NET_F_VIRTIO_NET_HDR; the tap is opened without IFF_VNET_HDR and the vhost worker spends less per frame) or tap (IFF_VNET_HDR, as QEMU and DPDK have it; needed for offloads). Default: tap. Before Linux 6.9 vhost's TX path reads a stale header with it (a warning says so).",
            completion: .list(NetHeaderOwner.allCases.map(\.rawValue)))
    var netHeader: NetHeaderOwner?

    @Flag(name: .customLong("dirty-log"), help: "Turn on VHOST_F_LOG_ALL dirty logging after start.")
    var dirtyLog = false

    static let offloadNames: [String: Tap.Offloads] = [
        "csum": .checksum, "tso4": .tso4, "tso6": .tso6, "ecn": .tsoECN, "ufo": .ufo, "uso4": .uso4, "uso6": .uso6, "none": [],
    ]

    func validate() throws {
        guard queueSize >= 2, SplitRingLayout.isValidQueueSize(queueSize) else {
            throw ValidationError("--queue-size \(queueSize): it must be a power of 2 from 2 to 32768 (vhost.c vhost_vring_set_num)")
        }
        for name in features where VirtioFeatures.parse(name) == nil && HighFeatures.parse(name) == nil {
            throw ValidationError("--features: unknown feature \(name); known: \((Array(VirtioFeatures.names.values) + Array(HighFeatures.names.values)).sorted().joined(separator: ", "))")
        }
        for name in offloads where DatapathOptions.offloadNames[name.lowercased()] == nil {
            throw ValidationError("--offloads: unknown offload \(name); known: \(DatapathOptions.offloadNames.keys.sorted().joined(separator: " "))")
        }
        guard bufferSize >= 64 && bufferSize <= 1 << 20 else { throw ValidationError("--buffer-size \(bufferSize): use 64 to 1048576") }
        guard (1...1000).contains(rxCoalesceDelay) else { throw ValidationError("--rx-coalesce-delay \(rxCoalesceDelay): use 1 to 1000 milliseconds") }
    }

    /// RX coalescing for the RX ring `config` ends up with (after --rx-queue-size), its
    /// features and its mode: call it after every other option is applied.
    func applyCoalescing(to config: inout VhostNetQueuePair.Configuration) {
        config.receiveCoalescing = rxCoalesce.coalescing(queueSize: config.queueSize, eventIndex: config.features.contains(.eventIndex),
                                                         mode: config.notificationMode, delayMilliseconds: rxCoalesceDelay)
    }

    /// How attach's start line names the coalescing in effect.
    static func coalescingDescription(_ coalescing: ReceiveCoalescing?) -> String {
        guard let coalescing else { return "rx coalescing off" }
        return "rx coalescing \(coalescing.adaptive ? "adaptive up to \(coalescing.frames)" : "\(coalescing.frames)") frames or \(coalescing.maxDelayMilliseconds) ms"
    }

    var negotiatedFeatures: VirtioFeatures {
        features.isEmpty ? [.version1, .eventIndex] : features.reduce(into: VirtioFeatures()) { $0.formUnion(VirtioFeatures.parse($1) ?? []) }
    }

    /// Features above bit 63 among --features (VHOST_SET_FEATURES_ARRAY, Linux 6.17).
    var negotiatedHighFeatures: HighFeatures {
        features.reduce(into: HighFeatures()) { if VirtioFeatures.parse($1) == nil, let high = HighFeatures.parse($1) { $0.formUnion(high) } }
    }

    func apply(to config: inout VhostNetQueuePair.Configuration) {
        config.queueSize = UInt16(queueSize)
        config.features = negotiatedFeatures
        config.highFeatures = negotiatedHighFeatures
        config.bufferSize = bufferSize
        config.descriptorLayout = descriptors
        config.memoryPlacement = memory
        config.memoryBacking = hugepages ? .memfd(hugePages: true) : .anonymous
        config.notificationMode = notificationMode
        // --offloads overrides what the GUEST_ features give (nil: derived from them).
        config.receiveOffloads = offloads.isEmpty ? nil : namedOffloads(offloads)
    }

    /// Who adds the virtio-net header on a pair `attach` starts: `--net-header`, or the tap.
    /// Throws, naming the option, where the backend or the features need the other.
    func resolvedNetHeader(features: VirtioFeatures, packetSocket: Bool) throws -> NetHeaderOwner {
        if packetSocket {
            // A packet socket has no header of its own (kernel-findings: backends).
            if netHeader == .tap { throw ValidationError("--net-header tap: a packet socket carries no virtio-net header; leave out --net-header (vhost adds it)") }
            return .vhost
        }
        guard let netHeader else { return .tap }
        let offloads = features.intersection(.deviceOffloads)
        if netHeader == .vhost && (!offloads.isEmpty || !namedOffloads(self.offloads).isEmpty) {
            throw ValidationError("--net-header vhost: offloads (\(offloads.isEmpty ? "--offloads \(self.offloads.joined(separator: " "))" : offloads.featureNames.joined(separator: ", "))) travel in the tap's virtio-net header, which vhost strips; use --net-header tap or drop the offloads")
        }
        return netHeader
    }

    /// Said where vhost's header is asked for frames a tap transmits on a kernel whose batched
    /// TX path reads a stale header (`NetHeaderOwner.vhostHeaderTransmitsCleanly`).
    static let staleTransmitHeaderWarning = "vhostctl: warning: --net-header vhost on Linux before 6.9: vhost's batched TX path reads stale bytes as each frame's virtio-net header (fixed upstream by f6baca2d32ea), so the tap may drop frames or the TX queue stall (a tap send buffer below 2147483647, attach's --sndbuf, keeps TX off that path); see docs/kernel-findings.md"

    /// The RX offloads `--offloads` names (validate() refused unknown names).
    private func namedOffloads(_ names: [String]) -> Tap.Offloads {
        names.reduce(into: Tap.Offloads()) { $0.formUnion(DatapathOptions.offloadNames[$1.lowercased()] ?? []) }
    }

    /// What `apply` cannot set before start: busy-loop timeout and dirty logging.
    func finishSetup<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(_ endpoint: VirtioNetEndpoint<B, P>) throws {
        for pair in endpoint.pairs {
            if let busyloop = effectiveBusyloopTimeout {
                try pair.device.setVringBusyloopTimeout(index: VhostNetDevice.receiveQueueIndex, microseconds: busyloop)
                try pair.device.setVringBusyloopTimeout(index: VhostNetDevice.transmitQueueIndex, microseconds: busyloop)
            }
            if dirtyLog { try pair.enableDirtyLog() }
        }
    }
}
