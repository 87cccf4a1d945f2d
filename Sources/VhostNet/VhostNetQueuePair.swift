import Logging
import Vhost
import Virtio

/// One virtio-net queue pair driven by this process and served by the kernel: a
/// `/dev/vhost-net` fd, guest memory with an RX and a TX ring, and one queue of a tap.
///
/// `init` runs the same ioctl sequence as QEMU's vhost_net_start with the kernel backend
/// (hw/virtio/vhost.c vhost_dev_init + vhost_dev_start, hw/net/vhost_net.c), all of it in
/// `start(...)` below so it reads in one place. `stop()` is vhost_net_stop.
public final class VhostNetQueuePair {
    public struct Configuration: Sendable {
        /// The tap to create, or to attach to when it exists.
        public var tapName: String
        /// Ring size: a power of 2 from 2 to 32768 (vhost.c vhost_vring_set_num).
        public var queueSize: UInt16 = 256
        /// Features to negotiate. Every one must be offered by the kernel.
        public var features: VirtioFeatures = [.version1]
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
        public var receiveOffloads: Tap.Offloads = []
        public var notificationMode: NotificationMode = .interrupt
        /// Tap flags beyond IFF_TAP|IFF_NO_PI (IFF_VNET_HDR is added unless the kernel adds the header).
        public var multiQueueTap: Bool = false
        public var bringLinkUp: Bool = true
        public var devicePath: String = VhostNetDevice.defaultPath
        public var observer: IoctlObserver? = nil

        public init(tapName: String) { self.tapName = tapName }

        /// Rejects what the kernel would reject, before any ioctl, naming the rule.
        public func validate() throws(VhostError) {
            guard SplitRingLayout.isValidQueueSize(Int(queueSize)), queueSize >= 2 else {
                throw .invalidArgument("queue size \(queueSize) is invalid: it must be a power of 2 from 2 to 32768 (vhost.c vhost_vring_set_num)")
            }
            guard bufferSize >= features.netHeaderLength + EthernetFrame.headerLength, bufferSize <= 1 << 20 else {
                throw .invalidArgument("buffer size \(bufferSize) must hold at least a \(features.netHeaderLength)-byte virtio-net header and an Ethernet header, and be at most 1 MiB")
            }
            if features.contains(.logAll) {
                throw .invalidArgument("VHOST_F_LOG_ALL needs a dirty log (VHOST_SET_LOG_BASE) first, or the kernel fails with EFAULT: start without it and call enableDirtyLog()")
            }
            if descriptorLayout == .indirect && !features.contains(.indirectDescriptors) {
                throw .invalidArgument("indirect descriptors need VIRTIO_F_INDIRECT_DESC negotiated")
            }
            let frameRoom = descriptorLayout == .inline ? bufferSize - features.netHeaderLength : bufferSize
            if !receiveOffloads.isDisjoint(with: [.tso4, .tso6, .ufo, .uso4, .uso6]) && !features.contains(.netMergeableRxBuffers) && frameRoom < 65536 + 14 {
                throw .invalidArgument("GSO on RX (TUNSETOFFLOAD TSO/UFO/USO) needs MRG_RXBUF or RX buffers with room for a 64 KiB frame; these hold \(frameRoom) bytes, so the kernel would discard big frames (net.c handle_rx)")
            }
            if !features.contains(.netMergeableRxBuffers) && frameRoom < 1514 {
                throw .invalidArgument("without MRG_RXBUF each RX buffer must hold a whole 1514-byte frame, or the kernel truncates and discards it (net.c handle_rx); these hold \(frameRoom)")
            }
            try Tap.validate(name: tapName)
        }

        var memoryLayout: [GuestMemory.Layout] {
            let rings = 2 * (SplitRingLayout.offsets(queueSize: Int(queueSize)).total + 4096)
            let perHead = ((bufferSize + 63) & ~63) + 16 + 32
            let buffers = 2 * Int(queueSize) * perHead
            let total = rings + buffers + extraMemory + 4096
            func rounded(_ n: Int) -> Int { (n + GuestMemory.hugePageSize - 1) & ~(GuestMemory.hugePageSize - 1) }
            switch memoryPlacement {
            case .single:
                return [GuestMemory.Layout(guestAddress: GuestMemory.defaultGuestBase, size: rounded(total))]
            case .belowAndAbove4GiB:
                // Rings and half the buffers low, half the buffers above the 4 GiB boundary.
                return [GuestMemory.Layout(guestAddress: 0x20_0000, size: rounded(rings + buffers / 2 + extraMemory + 8192)),
                        GuestMemory.Layout(guestAddress: 0x1_0000_0000, size: rounded(buffers / 2 + 8192))]
            }
        }
    }

    public let configuration: Configuration
    public let device: VhostNetDevice
    public let tap: Tap
    public private(set) var memory: GuestMemory
    public private(set) var receiveQueue: NetQueue
    public private(set) var transmitQueue: NetQueue
    /// What the kernel offered and what was negotiated.
    public let offeredFeatures: VirtioFeatures
    public let negotiatedFeatures: VirtioFeatures
    /// The virtio-net header length on both rings (10 or 12).
    public let headerLength: Int
    public private(set) var running = false
    let logger: Logger

    public init(_ configuration: Configuration, logger: Logger = Logger(label: "swift-vhost")) throws(VhostError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        let features = configuration.features
        let eventIndex = features.contains(.eventIndex)
        headerLength = features.netHeaderLength

        // The tap first, as QEMU opens it before vhost. With VHOST_NET_F_VIRTIO_NET_HDR the
        // kernel's vhost adds the header itself and the tap carries none.
        var tapFlags: Tap.Flags = [.tap, .noPacketInfo]
        if !features.contains(.vhostNetVirtioNetHeader) { tapFlags.insert(.vnetHeader) }
        if configuration.multiQueueTap { tapFlags.insert(.multiQueue) }
        tap = try Tap(name: configuration.tapName, flags: tapFlags, observer: configuration.observer)
        // The tap's MTU says how big the host's frames get; refuse now, before any vhost ioctl,
        // rather than let the kernel discard the bigger ones without a trace.
        if let problem = VhostNetQueuePair.truncationRisk(configuration: configuration, tapMTU: try tap.mtu(), tapName: tap.name) {
            throw .invalidArgument(problem)
        }

        let layout = configuration.memoryLayout
        if let limit = KernelInfo.maxMemoryRegions(), layout.count > limit {
            throw .invalidArgument("guest memory has \(layout.count) regions but the vhost module allows \(limit) (max_mem_regions in /sys/module/vhost/parameters)")
        }
        memory = try GuestMemory(layout: layout, backing: configuration.memoryBacking)
        let inOrder = features.contains(.inOrder)
        receiveQueue = try NetQueue(index: VhostNetDevice.receiveQueueIndex, queueSize: configuration.queueSize,
                                    bufferSize: configuration.bufferSize, headerLength: headerLength, layout: configuration.descriptorLayout,
                                    eventIndex: eventIndex, inOrder: inOrder, memory: &memory)
        transmitQueue = try NetQueue(index: VhostNetDevice.transmitQueueIndex, queueSize: configuration.queueSize,
                                     bufferSize: configuration.bufferSize, headerLength: headerLength, layout: configuration.descriptorLayout,
                                     eventIndex: eventIndex, inOrder: inOrder, memory: &memory)

        // ---- vhost_dev_init: open, SET_OWNER, GET_FEATURES, per vring CALL then ERR ----
        device = try VhostNetDevice(path: configuration.devicePath, observer: configuration.observer)
        try device.setOwner()
        offeredFeatures = try device.features()
        let missing = features.subtracting(offeredFeatures)
        guard missing.isEmpty else {
            throw .featureUnavailable(requested: missing.featureNames.joined(separator: ", "), offered: offeredFeatures.description)
        }
        negotiatedFeatures = features
        logger.debug("\(configuration.tapName): kernel offers \(offeredFeatures); negotiating \(features)")
        for queue in [receiveQueue.index, transmitQueue.index] {
            try device.setVringCall(index: queue, fd: queue == 0 ? receiveQueue.call.fd : transmitQueue.call.fd)
            try device.setVringErr(index: queue, fd: queue == 0 ? receiveQueue.error.fd : transmitQueue.error.fd)
        }
        try start()
    }

    /// vhost_net_start / vhost_dev_start: features, backend features, memory table, each
    /// vring's NUM, BASE, ADDR, KICK, CALL; then the tap's header length and the backends.
    private func start() throws(VhostError) {
        try device.setFeatures(negotiatedFeatures)
        // QEMU acks IOTLB_MSG_V2 when offered (vhost_kernel_set_backend_cap).
        let backend = try device.backendFeatures()
        try device.setBackendFeatures(backend.intersection(.iotlbMessageV2))
        try device.setMemoryTable(memory.map.memoryTable)
        try configureVring(receiveQueue)
        try configureVring(transmitQueue)

        // vhost-net's sock_hlen: the tap must prepend and expect the same header length
        // (net.c vhost_net_set_features). With VHOST_NET_F_VIRTIO_NET_HDR the tap has none.
        if !negotiatedFeatures.contains(.vhostNetVirtioNetHeader) {
            try tap.setVnetHeaderSize(Int32(headerLength))
        }
        try tap.setSendBuffer(Int32.max)
        // What we accept on RX; without it the host segments GSO frames before the tap.
        if !configuration.receiveOffloads.isEmpty { try tap.setOffloads(configuration.receiveOffloads) }
        if configuration.bringLinkUp { try tap.setLinkUp(true) }

        // The kernel reads used->idx when a backend is attached (vhost_vq_init_access), so the
        // rings were initialised above, in NetQueue.init.
        try device.setBackend(index: receiveQueue.index, fd: tap.fd)
        try device.setBackend(index: transmitQueue.index, fd: tap.fd)
        running = true
        logger.debug("\(tap.name): attached; rings of \(configuration.queueSize) in \(memory.map.regions.count) guest memory region(s), \(headerLength)-byte headers, \(configuration.descriptorLayout) descriptors")
        transmitQueue.driver.disableInterrupts()
        postReceiveBuffers()
    }

    private func configureVring(_ queue: borrowing NetQueue) throws(VhostError) {
        let addresses = queue.ringAddresses
        try device.setVringNum(index: queue.index, num: UInt32(queue.driver.queueSize))
        try device.setVringBase(index: queue.index, base: UInt32(queue.driver.availIndexShadow))
        try device.setVringAddress(index: queue.index, descriptors: addresses.descriptors, avail: addresses.avail, used: addresses.used)
        try device.setVringKick(index: queue.index, fd: queue.kick.fd)
        try device.setVringCall(index: queue.index, fd: queue.call.fd)
    }

    /// vhost_net_stop: detach both backends and read back each vring's last_avail_idx.
    @discardableResult
    public func stop() throws(VhostError) -> (receiveBase: UInt32, transmitBase: UInt32) {
        guard running else { return (0, 0) }
        running = false
        try device.setBackend(index: receiveQueue.index, fd: -1)
        try device.setBackend(index: transmitQueue.index, fd: -1)
        let rx = try device.vringBase(index: receiveQueue.index)
        let tx = try device.vringBase(index: transmitQueue.index)
        return (rx, tx)
    }

    deinit {
        if running { _ = try? stop() }
    }

    public var receiveCounters: QueueCounters { receiveQueue.counters }
    public var transmitCounters: QueueCounters { transmitQueue.counters }

    // MARK: transmit

    /// Reaps finished TX chains. TX used length is always 0 (net.c handle_tx).
    @discardableResult
    public func reapTransmitted() -> Int {
        var count = 0
        while transmitQueue.driver.nextUsed() != nil { count += 1 }
        return count
    }

    /// Transmits `count` frames. `fill(i, buffer)` writes frame `i` into the guest buffer and
    /// returns its length; `header` (zeroed by default) goes before it, inline or in its own
    /// descriptor by layout. Keeps the ring full, kicks only when the device asks, and waits
    /// for completions when it is full.
    public func transmit(count: Int, header: VirtioNetHeader = VirtioNetHeader(),
                         fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError) {
        if header.gsoType & ~VirtioNetHeader.gsoECN == VirtioNetHeader.GSOType.udpL4.rawValue && !KernelInfo.tapSupportsUDPSegmentation {
            throw .unsupportedByKernel("UDP_L4 GSO (USO) frames need a tap from Linux 6.2 on; this kernel would drop them without a trace")
        }
        var sent = 0
        let mode = configuration.notificationMode
        let capacity = transmitQueue.frameCapacity(headerLength: headerLength)
        while sent < count {
            reapTransmitted()
            while sent < count, let head = transmitQueue.driver.nextFreeHead,
                  transmitQueue.layout != .separateHeader || transmitQueue.driver.freeCount >= 2 {
                header.write(to: transmitQueue.headerPointer(head), length: headerLength)
                let length = fill(sent, UnsafeMutableRawBufferPointer(start: transmitQueue.framePointer(head, headerLength: headerLength), count: capacity))
                precondition(length >= 0 && length <= capacity, "fill returned \(length) for a \(capacity)-byte buffer")
                _ = transmitQueue.addChain(headerLength: headerLength, frameLength: length, deviceWritable: false)
                transmitQueue.counters.frames += 1
                transmitQueue.counters.bytes += UInt64(length)
                sent += 1
            }
            transmitQueue.publishAndKick()
            if sent < count {
                guard transmitQueue.waitForUsed(mode: mode, milliseconds: 5000) else {
                    throw .timeout("the kernel completed no TX descriptor in 5 s (\(transmitQueue.driver.inFlight) in flight); is the backend attached?")
                }
            }
        }
        try drainTransmit()
    }

    /// Transmits one frame (bytes without the virtio-net header).
    public func transmit(frame: [UInt8], header: VirtioNetHeader = VirtioNetHeader()) throws(VhostError) {
        try transmit(count: 1, header: header) { _, buffer in
            let n = min(frame.count, buffer.count)
            buffer.copyBytes(from: frame.prefix(n))
            return n
        }
    }

    /// Waits until the kernel has consumed every TX chain.
    public func drainTransmit(milliseconds: Int32 = 5000) throws(VhostError) {
        reapTransmitted()
        while transmitQueue.driver.inFlight > 0 {
            guard transmitQueue.waitForUsed(mode: configuration.notificationMode, milliseconds: milliseconds) else {
                throw .timeout("the kernel left \(transmitQueue.driver.inFlight) TX descriptors unused for \(milliseconds) ms")
            }
            reapTransmitted()
        }
    }

    // MARK: receive

    /// Fills every free RX descriptor with a device-writable buffer (virtio_net try_fill_recv),
    /// publishes, and kicks when the device asks.
    public func postReceiveBuffers() {
        let capacity = receiveQueue.frameCapacity(headerLength: headerLength)
        while receiveQueue.addChain(headerLength: headerLength, frameLength: capacity, deviceWritable: true) {}
        receiveQueue.publishAndKick()
    }

    /// Prepares to sleep until RX work arrives: re-enables RX interrupts and re-checks the used
    /// ring (race-free). Returns the call eventfd to wait on, or nil when work is already pending.
    public func armReceiveNotification() -> Int32? {
        receiveQueue.driver.enableInterrupts() ? nil : receiveQueue.call.fd
    }

    /// Clears the RX call eventfd after a wake-up, counting the call.
    public func acknowledgeReceiveNotification() {
        if receiveQueue.call.consume() != nil { receiveQueue.counters.calls += 1 }
        receiveQueue.collectRingErrors()
    }

    /// A received frame: the virtio-net header and the frame bytes (valid only during the callback).
    public struct ReceivedFrame {
        public var header: VirtioNetHeader
        public var frame: UnsafeRawBufferPointer
    }

    /// Receives up to `limit` frames, waiting up to `milliseconds` for the first one, and
    /// re-posts the buffers. With MRG_RXBUF a frame may span `num_buffers` buffers; they are
    /// reassembled before `handler` sees the frame. Returns the number of frames received.
    @discardableResult
    public func receive(limit: Int = Int.max, milliseconds: Int32, handler: (ReceivedFrame) -> Void) -> Int {
        var received = 0
        if !receiveQueue.driver.hasUsed() {
            _ = receiveQueue.waitForUsed(mode: configuration.notificationMode, milliseconds: milliseconds)
        }
        let mergeable = negotiatedFeatures.contains(.netMergeableRxBuffers)
        while received < limit, let used = receiveQueue.driver.nextUsed() {
            let head = UInt16(used.id)
            let length = Int(used.length)
            let capacity = receiveQueue.frameCapacity(headerLength: headerLength)
            let inOrderBatch = receiveQueue.driver.inOrder ? receiveQueue.driver.lastBatch : []
            guard length >= headerLength || inOrderBatch.count > 1 else {
                receiveQueue.counters.drops += 1
                continue
            }
            let header = VirtioNetHeader(reading: receiveQueue.headerPointer(inOrderBatch.first ?? head), length: headerLength)
            let buffers = mergeable ? Int(header.numBuffers) : 1
            if inOrderBatch.count <= 1 && buffers <= 1 {
                guard length - headerLength <= capacity else { receiveQueue.counters.drops += 1; continue }
                let frame = UnsafeRawBufferPointer(start: receiveQueue.framePointer(head, headerLength: headerLength), count: length - headerLength)
                handler(ReceivedFrame(header: header, frame: frame))
                receiveQueue.counters.bytes += UInt64(frame.count)
            } else {
                // A frame in several buffers: (head, bytes written) of each, in order.
                var pieces: [(UInt16, Int)] = []
                if inOrderBatch.count > 1 {
                    // IN_ORDER: one used entry for the whole packet (net.c get_rx_bufs: id of the
                    // last buffer, nheads = buffers); the buffers are filled in order, each to
                    // capacity but the last, and the entry's length is what the last one holds.
                    let full = receiveQueue.chainCapacity(headerLength: headerLength)
                    pieces = inOrderBatch.enumerated().map { ($1, $0 == inOrderBatch.count - 1 ? length : full) }
                } else {
                    // MRG_RXBUF (net.c handle_rx): a frame's buffers are added with one
                    // vhost_add_used_n, so they are all visible once the first is.
                    pieces = [(head, length)]
                    for _ in 1..<buffers {
                        guard let more = receiveQueue.driver.nextUsed() else { break }
                        pieces.append((UInt16(more.id), Int(more.length)))
                    }
                    guard pieces.count == buffers else { receiveQueue.counters.drops += 1; continue }
                }
                reassembly.removeAll(keepingCapacity: true)
                for (h, n) in pieces { receiveQueue.appendChainBytes(head: h, length: n, headerLength: headerLength, to: &reassembly) }
                reassembly.removeFirst(min(headerLength, reassembly.count))
                receiveQueue.counters.mergedFrames += 1
                reassembly.withUnsafeBytes { handler(ReceivedFrame(header: header, frame: $0)) }
                receiveQueue.counters.bytes += UInt64(reassembly.count)
            }
            receiveQueue.counters.frames += 1
            received += 1
        }
        postReceiveBuffers()
        return received
    }

    private var reassembly: [UInt8] = []

    // MARK: frames too big for the RX buffers

    /// The largest Ethernet frame one RX chain takes, or nil when MRG_RXBUF lets a frame span
    /// buffers (no limit below 64 KiB).
    static func receiveFrameLimit(_ configuration: Configuration) -> Int? {
        let features = configuration.features
        guard !features.contains(.netMergeableRxBuffers) else { return nil }
        return configuration.descriptorLayout == .inline ? configuration.bufferSize - features.netHeaderLength : configuration.bufferSize
    }

    static func truncationRisk(configuration: Configuration, tapMTU: Int, tapName: String) -> String? {
        guard let limit = receiveFrameLimit(configuration), tapMTU + EthernetFrame.headerLength > limit else { return nil }
        return "tap \(tapName) has MTU \(tapMTU), so the host sends frames of up to \(tapMTU + EthernetFrame.headerLength) bytes, but without MRG_RXBUF an RX buffer holds \(limit): the kernel would discard the bigger frames without a trace (net.c handle_rx); negotiate MRG_RXBUF or use buffers of at least \(tapMTU + EthernetFrame.headerLength + headerLength(configuration)) bytes"
    }

    static func headerLength(_ configuration: Configuration) -> Int {
        configuration.descriptorLayout == .inline ? configuration.features.netHeaderLength : 0
    }

    /// Whether the tap's MTU (which the host may raise at any time) now lets frames through
    /// that the RX buffers cannot hold; the message says what to do. `vhostctl attach` checks it
    /// with its counters, since the kernel itself reports such discards nowhere.
    public func receiveTruncationRisk() -> String? {
        guard let mtu = try? tap.mtu() else { return nil }
        return VhostNetQueuePair.truncationRisk(configuration: configuration, tapMTU: mtu, tapName: tap.name)
    }

    // MARK: dirty logging

    /// Starts dirty logging the way QEMU does when migration starts (vhost_dev_set_log):
    /// `VHOST_SET_LOG_BASE` with a bitmap of one bit per 4 KiB guest page, `SET_FEATURES` with
    /// VHOST_F_LOG_ALL, and each vring's address again with VHOST_VRING_F_LOG and the used
    /// ring's guest-physical address. From then on the kernel marks every page it writes.
    public func enableDirtyLog() throws(VhostError) {
        guard dirtyLog == nil else { return }
        guard offeredFeatures.contains(.logAll) else {
            throw .featureUnavailable(requested: "VHOST_F_LOG_ALL", offered: offeredFeatures.description)
        }
        let highest = memory.map.regions.map { $0.guestAddress + UInt64($0.size) }.max() ?? 0
        let log = try DirtyLog(coveringGuestBytes: highest)
        try device.setLogBase(UInt64(UInt(bitPattern: log.base)))
        try device.setFeatures(negotiatedFeatures.union(.logAll))
        for queue in [receiveQueue.index, transmitQueue.index] {
            let addresses = queue == 0 ? receiveQueue.ringAddresses : transmitQueue.ringAddresses
            let usedHost = UnsafeRawPointer(bitPattern: UInt(addresses.used))!
            guard let usedGuest = memory.map.guest(host: usedHost) else {
                throw .invalidArgument("the used ring is not in guest memory, so it cannot be logged")
            }
            try device.setVringAddress(index: queue, descriptors: addresses.descriptors, avail: addresses.avail, used: addresses.used,
                                       log: usedGuest, logging: true)
        }
        dirtyLog = log
    }

    /// The dirty log, once enabled.
    public private(set) var dirtyLog: DirtyLog?

    /// Guest-physical addresses of every RX and TX frame buffer (for checking the dirty log).
    public var receiveBufferAddresses: [UInt64] { receiveQueue.buffers.map(\.guestAddress) }
    public var transmitBufferAddresses: [UInt64] { transmitQueue.buffers.map(\.guestAddress) }
    public var memoryRegions: [GuestMemoryRegion] { memory.map.regions }
}
