import Logging
import NetFormats
import Vhost
import Virtio

/// RX interrupt coalescing, as `ethtool -C rx-frames N rx-usecs T` sets on a NIC: the driver
/// asks the device (through used_event) to signal only once `frames` frames are used, and
/// sleeps at most `maxDelayMilliseconds` for them, so a sparse stream waits that long at worst.
///
/// Adaptive (`ethtool -C adaptive-rx on`): the threshold follows the rate, between 1 and
/// `frames`. It becomes twice what was used when that many were used within the delay. When the delay
/// passed first it goes to `frames` if the delay brought a stream (`streamFrames` or more), falls
/// to what the delay brought when that was fewer, and to 1 when a delay brought none. A frame after
/// a delay's silence therefore wakes the driver at once, and a stream wakes it about once per
/// delay (or per `frames` frames). A frame inside a stream waits the delay at most, so round
/// trips one at a time, with replies closer together than the delay, should not use it.
public struct ReceiveCoalescing: Sendable, Equatable {
    public var frames: UInt16
    public var maxDelayMilliseconds: Int32
    /// Adapt the threshold to the traffic, up to `frames`.
    public var adaptive: Bool
    /// Adaptive: frames one delay must bring to count as a stream, which then wakes the driver
    /// once per delay (or per `frames`); fewer, as request-and-reply traffic brings, set the
    /// threshold to their count.
    public static let streamFrames: UInt16 = 8
    public init(frames: UInt16, maxDelayMilliseconds: Int32 = 1, adaptive: Bool = false) {
        self.frames = frames
        self.maxDelayMilliseconds = maxDelayMilliseconds
        self.adaptive = adaptive
    }
}

/// How a driver waits for RX frames, as `--rx-coalesce` says it (`vhostctl bench backends`,
/// `vhostctl attach`): off, a fixed frame count, or adaptive.
public enum ReceiveCoalescingSetting: Sendable, Equatable, CustomStringConvertible {
    /// Wake on the first used frame.
    case off
    /// Wake when this many frames are used, or after the delay (EVENT_IDX, interrupt mode).
    case frames(UInt16)
    /// Adaptive (`ReceiveCoalescing.adaptive`), up to half the ring, where it applies:
    /// interrupt mode with EVENT_IDX. Elsewhere the driver wakes on the first frame.
    case adaptive

    /// "0" (off), a frame count, or "auto".
    public init?(_ text: String) {
        if text == "auto" { self = .adaptive; return }
        guard let frames = UInt16(text) else { return nil }
        self = frames == 0 ? .off : .frames(frames)
    }

    public var description: String {
        switch self {
        case .off: "0"
        case .frames(let n): "\(n)"
        case .adaptive: "auto"
        }
    }

    /// The queue pair's setting for a ring of `queueSize` in `mode`, each sleep bounded by
    /// `delayMilliseconds`.
    public func coalescing(queueSize: UInt16, eventIndex: Bool, mode: NotificationMode, delayMilliseconds: Int32 = 1) -> ReceiveCoalescing? {
        switch self {
        case .off: nil
        case .frames(let n): ReceiveCoalescing(frames: n, maxDelayMilliseconds: delayMilliseconds)
        case .adaptive:
            eventIndex && mode == .interrupt ? ReceiveCoalescing(frames: max(1, queueSize / 2), maxDelayMilliseconds: delayMilliseconds, adaptive: true) : nil
        }
    }
}

/// Who adds and strips the virtio-net header on a vhost queue pair.
public enum NetHeaderOwner: String, CaseIterable, Sendable {
    /// The vhost worker (VHOST_NET_F_VIRTIO_NET_HDR): the tap is opened without IFF_VNET_HDR,
    /// so tun neither fills nor parses a header per frame (net.c vhost_net_set_features:
    /// `vhost_hlen` is the header, `sock_hlen` 0). No offloads: the tap has no header to carry them.
    case vhost
    /// The tap (IFF_VNET_HDR), as QEMU with a vnet-header tap and DPDK's virtio-user use it;
    /// the header carries checksum and GSO offloads.
    case tap

    /// Whether this kernel transmits cleanly with vhost's header. net.c vhost_net_build_xdp (the
    /// batched TX path) copies `sock_hlen` bytes of header into the XDP buffer, none when vhost
    /// owns the header, and before Linux 6.9 left the buffer's header area as the page held it:
    /// tun then reads stale bytes as the frame's GSO and checksum fields, which can drop frames
    /// or stall the queue (upstream f6baca2d32ea, "vhost: Added pad cleanup if vnet_hdr is not
    /// present", which zeroes it). 6.1.0-57's vhost_net.ko has no such memset in
    /// handle_tx_copy; 6.12.117's has (docs/kernel-findings.md). RX is not affected: vhost
    /// writes its own header there.
    public static var vhostHeaderTransmitsCleanly: Bool { KernelInfo.version >= (6, 9) }
}

/// How a queue pair is set up: everything `VirtioNetQueuePair` needs, checked before any ioctl.
public struct QueuePairConfiguration: Sendable {
    /// The tap to create, or to attach to when it exists (for the in-process device: the pipe's name).
    public var tapName: String
    /// Ring size: a power of 2 from 2 to 32768 (vhost.c vhost_vring_set_num). The RX ring's,
    /// and the TX ring's unless `transmitQueueSize` is set.
    public var queueSize: UInt16 = 256
    /// The TX ring's size when it differs from `queueSize` (nil: the same), the same rule.
    public var transmitQueueSize: UInt16? = nil
    /// Features to negotiate. Every one must be offered by the device.
    public var features: VirtioFeatures = [.version1]
    /// Features above bit 63 to negotiate (VHOST_SET_FEATURES_ARRAY, Linux 6.17), e.g. UDP-tunnel GSO.
    public var highFeatures: HighFeatures = []
    /// Bytes per RX and TX buffer (header + frame). Without MRG_RXBUF an RX buffer must
    /// hold a whole frame, or the kernel truncates and drops it (net.c handle_rx).
    public var bufferSize: Int = 2048
    /// Extra guest memory beyond rings and buffers.
    public var extraMemory: Int = 0
    public var memoryBacking: GuestMemoryBacking = .anonymous
    public var memoryPlacement: MemoryPlacement = .single
    public var descriptorLayout: DescriptorLayout = .inline
    /// What the driver accepts on RX (TUNSETOFFLOAD): checksum offload and GSO/GRO frames.
    /// TSO needs room for 64 KiB frames: MRG_RXBUF, or buffers of at least 65562 bytes.
    /// Nil: derived from the GUEST_ offload features, as QEMU derives it from the guest's
    /// (see `effectiveReceiveOffloads`).
    public var receiveOffloads: Tap.Offloads? = nil
    /// The tap's send buffer in bytes (TUNSETSNDBUF), set at start and at every resume. Nil:
    /// INT_MAX, which turns on vhost-net's batched TX (INT_MAX - 1 on an L3 tun: see Tap.prepare).
    public var sendBuffer: Int32? = nil
    /// Open the tap in `IFF_TUN` mode: bare IP packets, no Ethernet header (an L3 tun), still
    /// with the virtio-net header.
    public var tunMode: Bool = false
    /// Bytes of the one large TX buffer for frames bigger than a TX buffer holds (a USO
    /// superframe, a replayed GSO frame), header included; 0 for none.
    public var largeTransmitBuffer: Int = 0
    public var notificationMode: NotificationMode = .interrupt
    /// RX interrupt coalescing (interrupt mode, EVENT_IDX): nil wakes the driver on the first
    /// used frame, as virtio-net does.
    public var receiveCoalescing: ReceiveCoalescing? = nil
    /// With VIRTIO_F_ACCESS_PLATFORM: the IOVA offset of the emulated IOMMU (IOVA = GPA + offset),
    /// which answers the device's IOTLB misses page by page. Nil: no IOMMU.
    public var iovaOffset: UInt64? = nil
    /// Told of every IOTLB message the emulated IOMMU reads and writes, from the IOMMU's own
    /// thread (`--trace`); apart from `observer`, which a script recording shares.
    public var iotlbObserver: IoctlObserver? = nil
    /// For comparison only: kick after every publish, ignoring the device's avail_event and
    /// NO_NOTIFY, as a driver without notification suppression would.
    public var kickEveryPublish: Bool = false
    /// Where both indices of both rings start (`VHOST_SET_VRING_BASE`, and `used->idx` before
    /// the backend is attached): near 65535 to cross the 16-bit wrap early.
    public var ringBase: UInt16 = 0
    /// Open the tap with IFF_MULTI_QUEUE (one queue of it per pair).
    public var multiQueueTap: Bool = false
    /// Create the tap, failing when the name exists (TUNSETIFF with IFF_TUN_EXCL), instead of
    /// attaching to whatever is there. An endpoint sets it for its first queue only: the other
    /// queues of a multi-queue tap attach to the tap the first one made.
    public var exclusiveTapCreation: Bool = false
    public var bringLinkUp: Bool = true
    public var devicePath: String = VhostNetDevice.defaultPath
    public var observer: IoctlObserver? = nil
    /// Told of every publish and kick on both rings (`--record`).
    public var ringObserver: RingObserver? = nil

    public init(tapName: String) { self.tapName = tapName }

    /// The virtio-net header length these features will negotiate (24 with UDP-tunnel GSO, else
    /// 12 with VERSION_1 or MRG_RXBUF, else 10), for validating and planning memory before there
    /// is a session; once the pair runs, `VhostNetSession.netHeaderLength` is the one stored value.
    public var headerLength: Int { features.netHeaderLength(with: highFeatures) }

    /// The features vhost is asked for: `features` without the device offloads, which are the
    /// VMM's and the tap's, not vhost's (as QEMU sends vhost only its kernel_feature_bits).
    public var vhostFeatures: VirtioFeatures { features.subtracting(.deviceOffloads) }

    /// The offload features the driver negotiated (checksum and segmentation, each way).
    public var offloadFeatures: VirtioFeatures { features.intersection(.deviceOffloads) }

    /// What the tap is told the driver accepts on RX: `receiveOffloads` when given, else derived
    /// from the GUEST_ features as QEMU's virtio_net_apply_guest_offloads and tap_fd_set_offload
    /// do: GUEST_CSUM gives TUN_F_CSUM, and only with it each of GUEST_TSO4, TSO6, ECN, UFO,
    /// USO4 and USO6 its flag.
    public var effectiveReceiveOffloads: Tap.Offloads {
        if let receiveOffloads { return receiveOffloads }
        guard features.contains(.netGuestCsum) else { return [] }
        var offloads: Tap.Offloads = .checksum
        let pairs: [(VirtioFeatures, Tap.Offloads)] = [(.netGuestTSO4, .tso4), (.netGuestTSO6, .tso6), (.netGuestECN, .tsoECN),
                                                       (.netGuestUFO, .ufo), (.netGuestUSO4, .uso4), (.netGuestUSO6, .uso6)]
        for (feature, flag) in pairs where features.contains(feature) { offloads.insert(flag) }
        return offloads
    }

    /// Rejects what the kernel would reject, before any ioctl, naming the rule.
    public func validate() throws(VhostError) {
        guard SplitRingLayout.isValidQueueSize(Int(queueSize)), queueSize >= 2 else {
            throw .invalidConfiguration("queue size \(queueSize) is invalid: it must be a power of 2 from 2 to 32768 (vhost.c vhost_vring_set_num)")
        }
        if let transmitQueueSize, !SplitRingLayout.isValidQueueSize(Int(transmitQueueSize)) || transmitQueueSize < 2 {
            throw .invalidConfiguration("TX queue size \(transmitQueueSize) is invalid: it must be a power of 2 from 2 to 32768 (vhost.c vhost_vring_set_num)")
        }
        guard bufferSize >= headerLength + EthernetFrame.headerLength, bufferSize <= 1 << 20 else {
            throw .invalidConfiguration("buffer size \(bufferSize) must hold at least a \(headerLength)-byte virtio-net header and an Ethernet header, and be at most 1 MiB")
        }
        if features.contains(.logAll) {
            throw .invalidConfiguration("VHOST_F_LOG_ALL needs a dirty log (VHOST_SET_LOG_BASE) first, or the kernel fails with EFAULT: start without it and call enableDirtyLog()")
        }
        if (iovaOffset != nil) != features.contains(.accessPlatform) {
            throw .invalidConfiguration(iovaOffset != nil ? "an IOMMU (IOVA offset) needs VIRTIO_F_ACCESS_PLATFORM negotiated" : "VIRTIO_F_ACCESS_PLATFORM needs an IOMMU to answer the device's IOTLB misses: give an IOVA offset")
        }
        if descriptorLayout == .indirect && !features.contains(.indirectDescriptors) {
            throw .invalidConfiguration("indirect descriptors need VIRTIO_F_INDIRECT_DESC negotiated")
        }
        // The virtio spec's dependencies (5.1.3.1): segmentation each way needs checksum offload that way.
        if !features.isDisjoint(with: [.netHostTSO4, .netHostTSO6, .netHostUFO, .netHostUSO, .netHostECN]) && !features.contains(.netCsum) {
            throw .invalidConfiguration("HOST_TSO4, HOST_TSO6, HOST_UFO, HOST_USO and HOST_ECN need NET_F_CSUM negotiated too (virtio 1.x 5.1.3.1): a segmented frame's checksums are the host's to fill in")
        }
        if !features.isDisjoint(with: [.netGuestTSO4, .netGuestTSO6, .netGuestUFO, .netGuestUSO4, .netGuestUSO6, .netGuestECN]) && !features.contains(.netGuestCsum) {
            throw .invalidConfiguration("GUEST_TSO4, GUEST_TSO6, GUEST_UFO, GUEST_USO4, GUEST_USO6 and GUEST_ECN need NET_F_GUEST_CSUM negotiated too (virtio 1.x 5.1.3.1)")
        }
        if !offloadFeatures.isEmpty && features.contains(.vhostNetVirtioNetHeader) {
            throw .invalidConfiguration("offload features (\(offloadFeatures.featureNames.joined(separator: ", "))) need the virtio-net header on the socket, but with VHOST_NET_F_VIRTIO_NET_HDR vhost strips it (a packet socket backend): the host would get partial checksums and unsegmented superframes")
        }
        guard largeTransmitBuffer == 0 || (largeTransmitBuffer >= bufferSize && largeTransmitBuffer <= 65_536 + 64) else {
            throw .invalidConfiguration("a large TX buffer of \(largeTransmitBuffer) bytes: it must be larger than a buffer (\(bufferSize)) and at most 64 KiB and a header")
        }
        let frameRoom = descriptorLayout == .inline ? bufferSize - headerLength : bufferSize
        let receiveOffloads = effectiveReceiveOffloads
        if !receiveOffloads.isDisjoint(with: [.tso4, .tso6, .ufo, .uso4, .uso6]) && !features.contains(.netMergeableRxBuffers) && frameRoom < 65536 + 14 {
            throw .invalidConfiguration("GSO on RX (TUNSETOFFLOAD TSO/UFO/USO) needs MRG_RXBUF or RX buffers with room for a 64 KiB frame; these hold \(frameRoom) bytes, so the kernel would discard big frames (net.c handle_rx)")
        }
        if !features.contains(.netMergeableRxBuffers) && frameRoom < 1514 {
            throw .invalidConfiguration("without MRG_RXBUF each RX buffer must hold a whole 1514-byte frame, or the kernel truncates and discards it (net.c handle_rx); these hold \(frameRoom)")
        }
        if let coalescing = receiveCoalescing {
            guard features.contains(.eventIndex) else {
                throw .invalidConfiguration("RX coalescing sets used_event ahead of the ring, which needs VIRTIO_RING_F_EVENT_IDX negotiated (without it the device signals on every used frame)")
            }
            guard coalescing.frames >= 1 && Int(coalescing.frames) <= Int(queueSize) / 2, coalescing.maxDelayMilliseconds >= 1 else {
                throw .invalidConfiguration("RX coalescing of \(coalescing.frames) frames and \(coalescing.maxDelayMilliseconds) ms: use 1 to \(queueSize / 2) frames (half the ring, so that enough buffers are posted to reach it) and at least 1 ms")
            }
        }
        try Tap.validate(name: tapName)
    }

    /// The guest memory plan these settings give.
    public var memoryPlan: GuestMemoryPlan {
        GuestMemoryPlan(queueSize: Int(queueSize), transmitQueueSize: transmitQueueSize.map(Int.init), bufferSize: bufferSize, headerLength: headerLength,
                        layout: descriptorLayout, placement: memoryPlacement, extraMemory: extraMemory, largeTransmitBuffer: largeTransmitBuffer)
    }

    /// The largest Ethernet frame one RX chain takes, or nil when MRG_RXBUF lets a frame span
    /// buffers (no limit below 64 KiB).
    var receiveFrameLimit: Int? {
        guard !features.contains(.netMergeableRxBuffers) else { return nil }
        return descriptorLayout == .inline ? bufferSize - headerLength : bufferSize
    }

    /// Why frames of an interface with this MTU would be lost in the RX buffers, or nil.
    func truncationRisk(mtu: Int, interface: String) -> String? {
        guard let limit = receiveFrameLimit, mtu + EthernetFrame.headerLength > limit else { return nil }
        let inlineHeader = descriptorLayout == .inline ? headerLength : 0
        return "tap \(interface) has MTU \(mtu), so the host sends frames of up to \(mtu + EthernetFrame.headerLength) bytes, but without MRG_RXBUF an RX buffer holds \(limit): the kernel would discard the bigger frames without a trace (net.c handle_rx); negotiate MRG_RXBUF or use buffers of at least \(mtu + EthernetFrame.headerLength + inlineHeader) bytes"
    }
}

/// One virtio-net queue pair driven by this process and served by a vhost backend: guest memory
/// with an RX and a TX ring, the device, and the socket it carries frames through.
///
/// It composes the parts: `VhostNetSession` (the bring-up and teardown sequence, QEMU's
/// vhost_net_start/stop, in one place), `GuestMemoryPlan` (the layout), and a `ReceiveQueue`
/// and a `TransmitQueue`. `VhostNetQueuePair` is the kernel's flavour (`/dev/vhost-net` and a
/// tap); the in-process device of `VhostModel` gives another.
public final class VirtioNetQueuePair<Backend: VhostBackend & ~Copyable, Port: NetworkPort & ~Copyable> {
    public typealias Configuration = QueuePairConfiguration

    public let configuration: Configuration
    /// The RX offloads the port has (TUNSETOFFLOAD): `configuration.effectiveReceiveOffloads`
    /// until `setReceiveOffloads` changes them. Start and every resume prepare the port with these.
    public private(set) var receiveOffloads: Tap.Offloads
    /// Declared before the queues, whose buffers live in its memory.
    public let session: VhostNetSession<Backend, Port>
    /// Not checked for exclusive access at run time (`@exclusivity(unchecked)`): the pair is
    /// used from one thread, and an endpoint's turn touched it several times, at about 80
    /// instructions a check (see `VirtioNetEndpoint.responder`). So a handler given to
    /// `receive` or `receiveUsed` must not receive on this pair again (nothing traps; the
    /// ring's state would be overwritten); `VirtioNetEndpoint.service` refuses it with a
    /// precondition. Transmitting from a handler is fine.
    @exclusivity(unchecked) public internal(set) var receiveQueue: ReceiveQueue
    /// Checked at run time: a frame observer or `write` closure that transmits on the pair while
    /// an enqueue is open traps instead of taking the same buffer twice.
    public internal(set) var transmitQueue: TransmitQueue
    /// The virtio-net header length on both rings (10, 12 or 24): the session's stored value.
    public var headerLength: Int { session.netHeaderLength }
    let logger: Logger

    /// Sets up the pair on `device` and `port` and starts it: maps guest memory by the plan,
    /// lays out both rings, then runs the session's vhost_dev_init and vhost_dev_start.
    public init(_ configuration: Configuration, device: consuming Backend, port: consuming Port,
                logger: Logger = Logger(label: "swift-vhost")) throws(VhostError) {
        try configuration.validate()
        self.configuration = configuration
        receiveOffloads = configuration.effectiveReceiveOffloads
        self.logger = logger
        // vhost gets the ring and transport features; the offloads stay with us and the tap.
        let features = configuration.vhostFeatures
        // The rings are laid out before the session negotiates (vhost_dev_init needs their
        // eventfds), by the same rule it stores: VirtioFeatures.netHeaderLength(with:).
        let headerLength = configuration.headerLength
        // The port's MTU says how big the host's frames get; refuse now, before any vhost ioctl,
        // rather than let the kernel discard the bigger ones without a trace.
        if let mtu = try port.maximumTransmissionUnit(), let problem = configuration.truncationRisk(mtu: mtu, interface: port.name) {
            throw .invalidConfiguration(problem)
        }
        let plan = configuration.memoryPlan
        let layout = plan.regions
        if let limit = KernelInfo.maxMemoryRegions(), layout.count > limit {
            throw .invalidConfiguration("guest memory has \(layout.count) regions but the vhost module allows \(limit) (max_mem_regions in /sys/module/vhost/parameters)")
        }
        var memory = try GuestMemory(layout: layout, backing: configuration.memoryBacking)
        var pendingIOMMU: EmulatedIOMMU? = nil
        let eventIndex = features.contains(.eventIndex), inOrder = features.contains(.inOrder)
        let rx = try NetQueue(index: VhostNetDevice.receiveQueueIndex, memory: try plan.carveQueue(from: &memory), layout: configuration.descriptorLayout,
                              headerLength: headerLength, eventIndex: eventIndex, inOrder: inOrder, startIndex: configuration.ringBase,
                              addressOffset: configuration.iovaOffset ?? 0)
        let tx = try NetQueue(index: VhostNetDevice.transmitQueueIndex, memory: try plan.carveQueue(from: &memory, transmit: true, largeBuffer: true), layout: configuration.descriptorLayout,
                              headerLength: headerLength, eventIndex: eventIndex, inOrder: inOrder, startIndex: configuration.ringBase,
                              addressOffset: configuration.iovaOffset ?? 0)
        if let offset = configuration.iovaOffset {
            let iommu = EmulatedIOMMU(offset: offset, observer: configuration.iotlbObserver)
            iommu.map(rx.memory, deviceWrites: true)
            iommu.map(tx.memory, deviceWrites: false)
            pendingIOMMU = iommu
        }
        session = try VhostNetSession(device: device, port: port, memory: memory, features: features, highFeatures: configuration.highFeatures,
                                      receive: rx, transmit: tx, logger: logger)
        session.iommu = pendingIOMMU
        receiveQueue = ReceiveQueue(rx, mergeable: features.contains(.netMergeableRxBuffers))
        transmitQueue = TransmitQueue(tx)
        transmitQueue.queue.kickEveryPublish = configuration.kickEveryPublish
        receiveQueue.queue.kickEveryPublish = configuration.kickEveryPublish
        transmitQueue.queue.ringObserver = configuration.ringObserver
        receiveQueue.queue.ringObserver = configuration.ringObserver
        try session.start(receive: receiveQueue.queue, transmit: transmitQueue.queue,
                          bases: .init(receive: configuration.ringBase, transmit: configuration.ringBase),
                          receiveOffloads: receiveOffloads, sendBuffer: configuration.sendBuffer, linkUp: configuration.bringLinkUp)
        logger.debug("\(session.port.name): attached; rings of \(configuration.queueSize) (RX) and \(configuration.transmitQueueSize ?? configuration.queueSize) (TX) in \(session.memory.map.regions.count) guest memory region(s), \(session.netHeaderLength)-byte headers, \(configuration.descriptorLayout) descriptors")
        // TX completions are reaped when the ring fills, never waited for one by one; in poll mode
        // RX is spun on too, so neither asks the device for interrupts (virtqueue_disable_cb).
        transmitQueue.queue.driver.disableInterrupts()
        if configuration.notificationMode == .poll { receiveQueue.queue.driver.disableInterrupts() }
        receiveQueue.refill()
    }

    deinit {
        if session.running { _ = try? stop() }
    }

    /// The device, borrowed.
    public var device: Backend { _read { yield session.device } }
    /// The socket the vrings carry frames through, borrowed.
    public var port: Port { _read { yield session.port } }
    public var offeredFeatures: VirtioFeatures { session.offeredFeatures }
    /// The emulated IOMMU (with VIRTIO_F_ACCESS_PLATFORM), for inspection and fault tests.
    public var iommu: EmulatedIOMMU? { session.iommu }
    public var negotiatedFeatures: VirtioFeatures { session.negotiatedFeatures }
    /// The offload features the driver negotiated with the VMM's side (the tap), not with vhost.
    public var negotiatedOffloads: VirtioFeatures { configuration.offloadFeatures }
    /// What was negotiated above bit 63.
    public var negotiatedHighFeatures: HighFeatures { session.negotiatedHighFeatures }
    public var running: Bool { session.running }

    /// vhost_net_stop: detach both backends and read back each vring's last_avail_idx. The
    /// driver keeps its rings as they are; frames the host sends meanwhile wait in the port's
    /// queue, and chains in flight stay in flight until `resume`.
    @discardableResult
    public func stop() throws(VhostError) -> (receiveBase: UInt32, transmitBase: UInt32) {
        guard let bases = try session.stop(receive: receiveQueue.queue.index, transmit: transmitQueue.queue.index) else { return (0, 0) }
        return (UInt32(bases.receive), UInt32(bases.transmit))
    }

    /// Changes the RX offloads the port accepts (TUNSETOFFLOAD, tun.c set_offload) now, and for
    /// every resume after. Only offloads the driver can take make sense: a subset of
    /// `configuration.effectiveReceiveOffloads`.
    public func setReceiveOffloads(_ offloads: Tap.Offloads) throws(VhostError) {
        try Tap.perform(.setOffload(offloads.rawValue), on: port.fd, observer: configuration.observer)
        receiveOffloads = offloads
    }

    /// Resumes after `stop` on the same device: vhost_dev_start again with each vring's base
    /// where the device left off, so no chain in flight is lost or used twice.
    public func resume() throws(VhostError) { try resume(bringingLinkUp: nil) }

    /// `resume`, with `bringingLinkUp` false leaving the interface's flags alone (SIOCSIFFLAGS
    /// needs CAP_NET_ADMIN, which a process that dropped its privileges after set-up no longer
    /// has); nil: as configured.
    public func resume(bringingLinkUp: Bool?) throws(VhostError) {
        guard !session.running else { return }
        guard let bases = session.savedBases else { throw .invalidState("resume needs a stop first: it restores the bases stop read back") }
        try session.start(receive: receiveQueue.queue, transmit: transmitQueue.queue, bases: bases,
                          receiveOffloads: receiveOffloads, sendBuffer: configuration.sendBuffer, linkUp: bringingLinkUp ?? configuration.bringLinkUp)
        receiveQueue.refill()
    }

    /// Resumes after `stop` on a fresh device (a new `/dev/vhost-net` fd, as after migrating the
    /// backend): the old device is closed, vhost_dev_init runs on `device`, then vhost_dev_start
    /// from the saved bases.
    public func resume(on device: consuming Backend) throws(VhostError) {
        guard !session.running else { throw .invalidState("stop the queue pair before moving it to another device") }
        try session.replaceDevice(with: device, receive: receiveQueue.queue, transmit: transmitQueue.queue)
        try resume()
    }

    /// Stops, issues VHOST_RESET_OWNER (the device forgets everything), sets it up again from
    /// scratch on the same fd (SET_OWNER and on), and resumes from the saved bases.
    public func resetOwnerAndRestart() throws(VhostError) {
        try stop()
        try session.resetOwner(receive: receiveQueue.queue, transmit: transmitQueue.queue)
        try resume()
    }

    public var receiveCounters: QueueCounters { receiveQueue.counters }
    public var transmitCounters: QueueCounters { transmitQueue.counters }

    // MARK: transmit

    /// Reaps finished TX chains. TX used length is always 0 (net.c handle_tx).
    @discardableResult
    public func reapTransmitted() throws(VhostError) -> Int { try transmitQueue.reap() }

    /// Waits (in the configured notification mode) until the TX ring has room for a frame;
    /// false when `milliseconds` passed first. With `post`, this keeps the ring full without
    /// ever draining it.
    public func waitForTransmitRoom(milliseconds: Int32 = 1000) throws(VhostError) -> Bool {
        try transmitQueue.waitForRoom(mode: configuration.notificationMode, milliseconds: milliseconds)
    }

    /// Transmits `count` frames. `fill(i, buffer)` writes frame `i` into the guest buffer and
    /// returns its length; `header` (zeroed by default) goes before it, inline or in its own
    /// descriptor by layout. Keeps the ring full, kicks only when the device asks, and waits
    /// for completions when it is full.
    public func transmit(count: Int, header: VirtioNetHeader = VirtioNetHeader(),
                         fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError) {
        if header.gsoType & ~VirtioNetHeader.gsoECN == VirtioNetHeader.GSOType.udpL4.rawValue && !KernelInfo.tapSupportsUDPSegmentation {
            throw .unsupportedByKernel("UDP_L4 GSO (USO) frames need VIRTIO_NET_F_HOST_USO, which vhost-net and tun offer from Linux 6.2 on; this kernel does not (its tap would pass the frame on unsegmented, as one oversized packet)")
        }
        try transmitQueue.send(count: count, header: header, mode: configuration.notificationMode, fill: fill)
    }

    /// Adds up to `count` frames to the TX ring (as many as fit, after reaping) and publishes
    /// them, kicking when the device asks, without waiting: returns how many were added.
    public func post(count: Int, fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError) -> Int {
        try transmitQueue.post(count: count, header: VirtioNetHeader(), fill: fill)
    }

    /// Writes every TX buffer's frame area once (see `TransmitQueue.fillEveryBuffer`), so that
    /// `post` and `transmit` need not copy a frame that is already in place.
    public func fillEveryTransmitBuffer(_ body: (UnsafeMutableRawBufferPointer) -> Void) throws(VhostError) {
        try transmitQueue.fillEveryBuffer(body)
    }

    /// `post` with `header` before every frame (a GSO header for TSO superframes, say).
    public func post(count: Int, header: VirtioNetHeader, fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError) -> Int {
        try transmitQueue.post(count: count, header: header, fill: fill)
    }

    /// Transmits one frame (bytes without the virtio-net header).
    public func transmit(frame: [UInt8], header: VirtioNetHeader = VirtioNetHeader()) throws(VhostError) {
        try transmit(count: 1, header: header) { _, buffer in
            let n = min(frame.count, buffer.count)
            buffer.copyBytes(from: frame.prefix(n))
            return n
        }
    }

    /// Adds one frame to the TX ring without publishing it: `write` fills the guest buffer the
    /// frame goes out from (a frame larger than a buffer goes in the large buffer, one at a time).
    /// When the ring is full it publishes what it has, and waits for room up to `milliseconds`
    /// (in the configured mode). False when the frame was dropped (too large, or no room in time).
    /// `flushTransmit` publishes, once per batch.
    @discardableResult
    public func enqueueTransmit(length: Int, header: VirtioNetHeader = VirtioNetHeader(), milliseconds: Int32 = 1000,
                                write: (UnsafeMutableRawBufferPointer) -> Void) throws(VhostError) -> Bool {
        // A driver sends only the offloads it negotiated (virtio 1.x 5.1.6.2): the tap was
        // probed for each when the pair was set up.
        if header.gsoType != 0 || header.flags.contains(.needsChecksum) {
            let type = header.gsoType & ~VirtioNetHeader.gsoECN
            let needed: VirtioFeatures = type == VirtioNetHeader.GSOType.tcpV4.rawValue ? [.netCsum, .netHostTSO4]
                : type == VirtioNetHeader.GSOType.tcpV6.rawValue ? [.netCsum, .netHostTSO6]
                : type == VirtioNetHeader.GSOType.udpL4.rawValue ? [.netCsum, .netHostUSO]
                : type == VirtioNetHeader.GSOType.udp.rawValue ? [.netCsum, .netHostUFO] : [.netCsum]
            guard configuration.features.isSuperset(of: needed) else {
                throw .invalidState("a frame with NEEDS_CSUM or gso_type \(header.gsoType) needs \(needed.featureNames.joined(separator: " and ")) negotiated (virtio 1.x 5.1.6.2)")
            }
        }
        return try transmitQueue.enqueue(length: length, header: header, mode: configuration.notificationMode, milliseconds: milliseconds, write: write)
    }

    /// Publishes the frames `enqueueTransmit` added, and kicks when the device asks.
    public func flushTransmit() { transmitQueue.flush() }

    /// Waits until the device has consumed every TX chain.
    public func drainTransmit(milliseconds: Int32 = 5000) throws(VhostError) {
        try transmitQueue.drain(mode: configuration.notificationMode, milliseconds: milliseconds)
    }

    // MARK: receive

    /// Fills every free RX descriptor with a device-writable buffer (virtio_net try_fill_recv).
    public func postReceiveBuffers() { receiveQueue.refill() }

    /// Prepares to sleep until RX work arrives: re-enables RX interrupts and re-checks the used
    /// ring (race-free). Returns the call eventfd to wait on, or nil when work is already pending.
    public func armReceiveNotification() -> Int32? { armReceiveNotification(after: 1) }

    /// `armReceiveNotification` for when `count` more frames are used, not the next one.
    public func armReceiveNotification(after count: UInt16) -> Int32? {
        receiveQueue.armNotification(after: count) ? receiveQueue.queue.call.fd : nil
    }

    public func takeReceiveSignals() -> UInt64? { receiveQueue.queue.call.consume() }

    /// Adaptive RX coalescing's current frame threshold (1 when it is off or the traffic is sparse).
    public var receiveAdaptiveThreshold: UInt16 { receiveQueue.adaptiveThreshold }

    public func withReceiveDriver<R>(_ body: (borrowing SplitVirtqueueDriver) -> R) -> R { body(receiveQueue.driver) }

    /// Clears the RX call eventfd after a wake-up, counting the call.
    public func acknowledgeReceiveNotification() { receiveQueue.acknowledgeNotification() }

    /// Arms RX interrupts for a sleep in the caller's own poller, on `receiveCall` with the
    /// others it watches: for the configuration's coalescing threshold (`receiveCoalescing`), or
    /// for the next frame when `immediate`. Returns what the sleep waits for (its delay bounds
    /// the poller's timeout), or nil when that many frames are used already: do not sleep.
    /// Interrupt mode; end the sleep with `endReceiveSleep`.
    public func armReceiveSleep(immediate: Bool = false) -> ReceiveSleep? {
        receiveQueue.armSleep(coalescing: configuration.receiveCoalescing, immediate: immediate)
    }

    /// Ends a sleep `armReceiveSleep` armed: `signalled` when the poller reported the call
    /// eventfd (it is read and cleared), `delayPassed` when the poller timed out after the
    /// sleep's delay. What it brought moves adaptive coalescing's threshold.
    public func endReceiveSleep(_ sleep: ReceiveSleep, signalled: Bool, delayPassed: Bool) {
        receiveQueue.endSleep(sleep, signalled: signalled, delayPassed: delayPassed, coalescing: configuration.receiveCoalescing)
    }

    /// Receives up to `limit` frames that are used already, without waiting, and re-posts the
    /// buffers (for a loop that sleeps with `armReceiveSleep`). A device that breaks the protocol
    /// marks the queue broken and throws `VhostError.brokenQueue`. `handler` must not receive on
    /// this pair (see `receiveQueue`).
    @discardableResult
    public func receiveUsed(limit: Int = Int.max, handler: (ReceivedFrame) -> Void) throws(VhostError) -> Int {
        try receiveQueue.receiveUsed(limit: limit, handler: handler)
    }

    /// Receives up to `limit` frames, waiting up to `milliseconds` for the first one, and
    /// re-posts the buffers. Returns the number of frames received; a device that breaks the
    /// protocol marks the queue broken and throws `VhostError.brokenQueue`. `handler` must not
    /// receive on this pair (see `receiveQueue`).
    @discardableResult
    public func receive(limit: Int = Int.max, milliseconds: Int32, handler: (ReceivedFrame) -> Void) throws(VhostError) -> Int {
        try receiveQueue.receive(limit: limit, milliseconds: milliseconds, mode: configuration.notificationMode,
                                 coalescing: configuration.receiveCoalescing, handler: handler)
    }

    /// Whether the port's MTU (which the host may raise at any time) now lets frames through
    /// that the RX buffers cannot hold; the message says what to do. `vhostctl attach` checks it
    /// with its counters, since the kernel itself reports such discards nowhere.
    public func receiveTruncationRisk() -> String? {
        guard let mtu = try? session.port.maximumTransmissionUnit() else { return nil }
        return configuration.truncationRisk(mtu: mtu, interface: session.port.name)
    }

    // MARK: ring errors

    /// Ring errors the device signalled since the last call (vq_err on the error eventfds of RX
    /// and TX), each with the likely cause. The queue the device stopped goes on after a kick.
    public func takeRingErrors() -> [RingErrorEvent] {
        var events = [receiveQueue.queue.takeRingError(), transmitQueue.queue.takeRingError()].compactMap { $0 }
        if session.iommu != nil {
            // With an IOMMU the device may have been refused an access the rings allow: a
            // write into a read-only page is vq_err "Translation failure" (vhost.c translate_desc, -EPERM).
            for i in events.indices where events[i].likelyCause == .noRuleBroken(iommuMayDenyAccess: false) {
                events[i].likelyCause = .noRuleBroken(iommuMayDenyAccess: true)
            }
        }
        return events
    }

    /// The error eventfds, for an event loop to watch (readable when the device signals `vq_err`).
    public var ringErrorDescriptors: [Int32] { [receiveQueue.queue.error.fd, transmitQueue.queue.error.fd] }

    /// Lends one of the pair's queues (TX or RX) for a change outside the datapath, on the
    /// thread that drives the pair: the seam VhostTestSupport's fault injection uses, so that
    /// no code that breaks rings on purpose ships in this library.
    package func modifyQueue<R>(transmit: Bool, _ body: (inout NetQueue) -> R) -> R {
        transmit ? body(&transmitQueue.queue) : body(&receiveQueue.queue)
    }

    // MARK: dirty logging

    /// Starts dirty logging the way QEMU does when migration starts (vhost_dev_set_log). From
    /// then on the device marks every guest page it writes.
    public func enableDirtyLog() throws(VhostError) {
        try session.enableDirtyLog(receive: receiveQueue.queue, transmit: transmitQueue.queue)
    }

    /// The dirty log, once enabled (a new one after the memory table grows or shrinks).
    public var dirtyLog: DirtyLog? { session.dirtyLog }

    /// Hot-plugs `size` bytes of guest memory at `address` into the memory table while running;
    /// with dirty logging the log grows to cover it (QEMU's vhost_dev_log_resize).
    @discardableResult
    public func hotplugMemory(size: Int, at address: GuestAddress) throws(VhostError) -> GuestMemoryRegion {
        try session.hotplug(try GuestMemory(size: size, guestAddress: address, backing: configuration.memoryBacking))
    }

    /// Removes the hot-plugged region at `address` from the table; the dirty log shrinks back.
    public func unplugMemory(at address: GuestAddress) throws(VhostError) { try session.unplug(at: address) }

    /// Guest-physical addresses of every RX and TX frame buffer (for checking the dirty log).
    public var receiveBufferAddresses: [GuestAddress] { receiveQueue.queue.memory.buffers.map(\.guestAddress) }
    public var transmitBufferAddresses: [GuestAddress] { transmitQueue.queue.memory.buffers.map(\.guestAddress) }
    public var memoryRegions: [GuestMemoryRegion] { session.memory.map.regions }
}

/// The kernel's flavour: `/dev/vhost-net` and a tap.
public typealias VhostNetQueuePair = VirtioNetQueuePair<VhostNetDevice, Tap>

extension VirtioNetQueuePair where Backend == VhostNetDevice, Port == Tap {
    /// Opens the tap (as QEMU does, before vhost), then `/dev/vhost-net`, and starts the pair.
    public convenience init(_ configuration: Configuration, logger: Logger = Logger(label: "swift-vhost")) throws(VhostError) {
        try configuration.validate()
        // With VHOST_NET_F_VIRTIO_NET_HDR the kernel's vhost adds the header itself and the
        // tap carries none.
        var tapFlags: Tap.Flags = [configuration.tunMode ? .tun : .tap, .noPacketInfo]
        if !configuration.features.contains(.vhostNetVirtioNetHeader) { tapFlags.insert(.vnetHeader) }
        if configuration.multiQueueTap { tapFlags.insert(.multiQueue) }
        if configuration.exclusiveTapCreation { tapFlags.insert(.exclusive) }
        let tap = try Tap(name: configuration.tapName, flags: tapFlags, observer: configuration.observer)
        // QEMU's tap_probe_has_uso: the tap must take UDP_L4 GSO frames before HOST_USO is offered.
        if configuration.features.contains(.netHostUSO) { try tap.requireUDPSegmentation() }
        let device = try VhostNetDevice(path: configuration.devicePath, observer: configuration.observer)
        try self.init(configuration, device: device, port: tap, logger: logger)
    }

    /// The tap, borrowed.
    public var tap: Tap { _read { yield session.port } }
}

/// The kernel's vhost-net on a macvtap queue.
public typealias MacvtapQueuePair = VirtioNetQueuePair<VhostNetDevice, MacvtapPort>

extension VirtioNetQueuePair where Backend == VhostNetDevice, Port == MacvtapPort {
    /// Opens a queue of the macvtap `name` (created in bridge mode on `parent` when it does not
    /// exist, and deleted again when the pair goes) and starts the pair on `/dev/vhost-net` with it.
    public convenience init(_ configuration: Configuration, macvtap name: String, on parent: String, hardwareAddress: [UInt8]? = nil,
                            logger: Logger = Logger(label: "swift-vhost")) throws(VhostError) {
        try configuration.validate()
        let port = try MacvtapPort(name: name, parent: parent, hardwareAddress: hardwareAddress, observer: configuration.observer)
        if configuration.features.contains(.netHostUSO) { try Tap.requireUDPSegmentation(on: port.fd, name: name, observer: configuration.observer) }
        let device = try VhostNetDevice(path: configuration.devicePath, observer: configuration.observer)
        try self.init(configuration, device: device, port: port, logger: logger)
    }
}

/// The kernel's vhost-net on a raw packet socket bound to an interface.
public typealias PacketSocketQueuePair = VirtioNetQueuePair<VhostNetDevice, PacketSocketPort>

extension VirtioNetQueuePair where Backend == VhostNetDevice, Port == PacketSocketPort {
    /// Binds a raw packet socket to `interface` and starts the pair on `/dev/vhost-net` with it
    /// as the backend. The configuration must negotiate VHOST_NET_F_VIRTIO_NET_HDR (a packet
    /// socket carries no virtio-net header).
    public convenience init(_ configuration: Configuration, packetSocketOn interface: String,
                            logger: Logger = Logger(label: "swift-vhost")) throws(VhostError) {
        try configuration.validate()
        guard configuration.features.contains(.vhostNetVirtioNetHeader) else {
            throw .invalidConfiguration("a packet socket backend needs VHOST_NET_F_VIRTIO_NET_HDR negotiated: the socket carries no virtio-net header, so vhost must add and strip it")
        }
        let port = try PacketSocketPort(interface: interface, observer: configuration.observer)
        let device = try VhostNetDevice(path: configuration.devicePath, observer: configuration.observer)
        try self.init(configuration, device: device, port: port, logger: logger)
    }
}

/// What a datapath test or measurement needs of a queue pair, whatever its backend: frames in
/// and out, the counters, the stop, and the TX driver's indices. `VirtioNetQueuePair` conforms.
public protocol QueuePairDatapath: AnyObject {
    func transmit(count: Int, header: VirtioNetHeader, fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError)
    func receive(limit: Int, milliseconds: Int32, handler: (ReceivedFrame) -> Void) throws(VhostError) -> Int
    @discardableResult func stop() throws(VhostError) -> (receiveBase: UInt32, transmitBase: UInt32)
    var transmitCounters: QueueCounters { get }
    var receiveCounters: QueueCounters { get }
    /// Runs `body` with the TX ring driver (indices, IN_ORDER batches).
    func withTransmitDriver<R>(_ body: (borrowing SplitVirtqueueDriver) -> R) -> R
    func drainTransmit(milliseconds: Int32) throws(VhostError)
    func takeRingErrors() -> [RingErrorEvent]
    func resume() throws(VhostError)
    func resetOwnerAndRestart() throws(VhostError)
    /// Adds up to `count` frames to the TX ring and publishes them without waiting for the device.
    func post(count: Int, fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError) -> Int
    /// Waits until the TX ring has room for a frame (reaping); false when `milliseconds` passed first.
    func waitForTransmitRoom(milliseconds: Int32) throws(VhostError) -> Bool
    /// Runs `body` with the RX ring driver (indices, entries the device used and we have not reaped).
    func withReceiveDriver<R>(_ body: (borrowing SplitVirtqueueDriver) -> R) -> R
    /// Re-enables RX interrupts for when `count` more frames are used (coalescing; 1: the next
    /// frame). Returns the call eventfd to wait on, or nil when that many are already used.
    func armReceiveNotification(after count: UInt16) -> Int32?
    /// Reads (and clears) the RX call eventfd without waiting: how many times the device signalled
    /// since it was last read, or nil for none. What the device did, not what the driver counted.
    func takeReceiveSignals() -> UInt64?
    /// Adaptive RX coalescing's current frame threshold (1 when it is off or the traffic is sparse).
    var receiveAdaptiveThreshold: UInt16 { get }
}

extension QueuePairDatapath {
    /// Transmits `count` frames with a zeroed virtio-net header.
    public func transmit(count: Int, fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError) {
        try transmit(count: count, header: VirtioNetHeader(), fill: fill)
    }

    /// Receives what is there (or arrives within `milliseconds`).
    @discardableResult
    public func receive(milliseconds: Int32, handler: (ReceivedFrame) -> Void) throws(VhostError) -> Int {
        try receive(limit: Int.max, milliseconds: milliseconds, handler: handler)
    }
}

extension VirtioNetQueuePair: QueuePairDatapath where Backend: ~Copyable, Port: ~Copyable {
    public func withTransmitDriver<R>(_ body: (borrowing SplitVirtqueueDriver) -> R) -> R { body(transmitQueue.driver) }
}
