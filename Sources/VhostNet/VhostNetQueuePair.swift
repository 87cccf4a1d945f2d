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
                throw .invalidArgument("VHOST_F_LOG_ALL needs a dirty log (VHOST_SET_LOG_BASE) first; without one the kernel fails with EFAULT")
            }
            try Tap.validate(name: tapName)
        }

        var memorySize: Int {
            let rings = 2 * (SplitRingLayout.offsets(queueSize: Int(queueSize)).total + 4096)
            let buffers = 2 * Int(queueSize) * ((bufferSize + 63) & ~63)
            let total = rings + buffers + extraMemory + 4096
            return (total + GuestMemory.hugePageSize - 1) & ~(GuestMemory.hugePageSize - 1)
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

        memory = try GuestMemory(size: configuration.memorySize, backing: configuration.memoryBacking)
        receiveQueue = try NetQueue(index: VhostNetDevice.receiveQueueIndex, queueSize: configuration.queueSize,
                                    bufferSize: configuration.bufferSize, eventIndex: eventIndex, memory: &memory)
        transmitQueue = try NetQueue(index: VhostNetDevice.transmitQueueIndex, queueSize: configuration.queueSize,
                                     bufferSize: configuration.bufferSize, eventIndex: eventIndex, memory: &memory)

        // ---- vhost_dev_init: open, SET_OWNER, GET_FEATURES, per vring CALL then ERR ----
        device = try VhostNetDevice(path: configuration.devicePath, observer: configuration.observer)
        try device.setOwner()
        offeredFeatures = try device.features()
        let missing = features.subtracting(offeredFeatures)
        guard missing.isEmpty else {
            throw .featureUnavailable(requested: missing.featureNames.joined(separator: ", "), offered: offeredFeatures.description)
        }
        negotiatedFeatures = features
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
        if configuration.bringLinkUp { try tap.setLinkUp(true) }

        // The kernel reads used->idx when a backend is attached (vhost_vq_init_access), so the
        // rings were initialised above, in NetQueue.init.
        try device.setBackend(index: receiveQueue.index, fd: tap.fd)
        try device.setBackend(index: transmitQueue.index, fd: tap.fd)
        running = true
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

    /// Transmits `count` frames. `fill(i, buffer)` writes frame `i` into the guest buffer
    /// (after the virtio-net header, which is zeroed) and returns its length. Keeps the ring
    /// full, kicks only when the device asks, and waits for completions when it is full.
    public func transmit(count: Int, header: VirtioNetHeader = VirtioNetHeader(),
                         fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError) {
        var sent = 0
        let mode = configuration.notificationMode
        while sent < count {
            reapTransmitted()
            while sent < count, let head = transmitQueue.driver.nextFreeHead {
                let buffer = transmitQueue.buffers[Int(head)]
                header.write(to: buffer.host, length: headerLength)
                let length = fill(sent, UnsafeMutableRawBufferPointer(start: buffer.host + headerLength, count: buffer.length - headerLength))
                precondition(length >= 0 && length <= buffer.length - headerLength, "fill returned \(length) for a \(buffer.length - headerLength)-byte buffer")
                _ = transmitQueue.driver.add(CollectionOfOne(BufferSegment(address: buffer.guestAddress, length: UInt32(headerLength + length), deviceWritable: false)))
                transmitQueue.counters.frames += 1
                transmitQueue.counters.bytes += UInt64(length)
                sent += 1
            }
            transmitQueue.publishAndKick()
            if transmitQueue.driver.freeCount == 0 {
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
        while let head = receiveQueue.driver.nextFreeHead {
            let buffer = receiveQueue.buffers[Int(head)]
            _ = receiveQueue.driver.add(CollectionOfOne(BufferSegment(address: buffer.guestAddress, length: UInt32(buffer.length), deviceWritable: true)))
        }
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

    /// Receives up to `limit` frames, waiting up to `milliseconds` for the first one.
    /// Buffers are re-posted after `handler` has seen them. Returns the number received.
    @discardableResult
    public func receive(limit: Int = Int.max, milliseconds: Int32, handler: (ReceivedFrame) -> Void) -> Int {
        var received = 0
        if !receiveQueue.driver.hasUsed() {
            _ = receiveQueue.waitForUsed(mode: configuration.notificationMode, milliseconds: milliseconds)
        }
        while received < limit, let used = receiveQueue.driver.nextUsed() {
            let buffer = receiveQueue.buffers[Int(used.id)]
            let length = Int(used.length)
            guard length >= headerLength, length <= buffer.length else {
                receiveQueue.counters.drops += 1
                continue
            }
            let header = VirtioNetHeader(reading: buffer.host, length: headerLength)
            handler(ReceivedFrame(header: header, frame: UnsafeRawBufferPointer(start: buffer.host + headerLength, count: length - headerLength)))
            receiveQueue.counters.frames += 1
            receiveQueue.counters.bytes += UInt64(length - headerLength)
            received += 1
        }
        postReceiveBuffers()
        return received
    }
}
