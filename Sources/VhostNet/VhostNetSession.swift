import Logging
import Vhost
import Virtio

/// Where each vring resumes: the device's `last_avail_idx`, as `stop` read it back.
public struct VringBases: Sendable, Equatable {
    public var receive: UInt16
    public var transmit: UInt16
    public init(receive: UInt16, transmit: UInt16) { self.receive = receive; self.transmit = transmit }
}

/// The bring-up and teardown of one virtio-net queue pair on a vhost backend: QEMU's
/// `vhost_net_start`/`vhost_net_stop` with the kernel backend (hw/virtio/vhost.c vhost_dev_init
/// and vhost_dev_start, hw/net/vhost_net.c), every ioctl of it in this file, in QEMU's order.
///
/// The session owns the device, the network port and guest memory, and releases them in the
/// only safe order (crosvm's `vhost::net` keeps the same rule by field order): the device is
/// closed first, so that the kernel's worker has stopped touching the rings and buffers before
/// the memory under them is unmapped. See `deinit`.
public final class VhostNetSession<Backend: VhostBackend & ~Copyable, Port: NetworkPort & ~Copyable> {
    /// Optional only so that `deinit` can close it before `memory` goes: nil only there.
    private var backend: Backend?
    /// The socket the vrings carry frames through (a tap queue, or a frame pipe).
    public let port: Port
    /// Every byte the device may touch: rings, buffers, indirect tables.
    public private(set) var memory: GuestMemory
    /// What the device offered and what was negotiated.
    public let offeredFeatures: VirtioFeatures
    public let negotiatedFeatures: VirtioFeatures
    /// Above bit 63 (VHOST_SET_FEATURES_ARRAY, Linux 6.17): negotiated, always with the array form.
    public let negotiatedHighFeatures: HighFeatures
    /// The virtio-net header length on both rings, as negotiated: 24 with UDP-tunnel GSO, else
    /// 12 with VERSION_1 or MRG_RXBUF, else 10 (net.c vhost_net_set_features). Stored once, at
    /// init; the queue pair, the port's `prepare` and the tools read it here.
    public let netHeaderLength: Int
    /// The header length on the port's side (vhost-net's sock_hlen): `netHeaderLength`, or nil
    /// when vhost adds and strips the header itself (VHOST_NET_F_VIRTIO_NET_HDR), so the port
    /// carries bare frames.
    public var socketHeaderLength: Int? {
        negotiatedFeatures.contains(.vhostNetVirtioNetHeader) ? nil : netHeaderLength
    }
    public private(set) var running = false
    /// The dirty log, once enabled; released after the device, like `memory`.
    public private(set) var dirtyLog: DirtyLog?
    /// Guest memory added after start (hot-plugged regions), released after the device like `memory`.
    private var hotplugged: [HotpluggedMemory] = []
    final class HotpluggedMemory {
        let memory: GuestMemory
        init(_ memory: consuming GuestMemory) { self.memory = memory }
    }
    /// The emulated IOMMU answering the device's IOTLB misses (VIRTIO_F_ACCESS_PLATFORM), if any.
    public internal(set) var iommu: EmulatedIOMMU?
    let logger: Logger

    /// The device, borrowed.
    public var device: Backend { _read { yield backend! } }

    /// vhost_dev_init: SET_OWNER, GET_FEATURES (checked against `features`), then per vring
    /// SET_VRING_CALL and SET_VRING_ERR.
    init(device: consuming Backend, port: consuming Port, memory: consuming GuestMemory, features: VirtioFeatures,
         highFeatures: HighFeatures = [], receive: borrowing NetQueue, transmit: borrowing NetQueue, logger: Logger) throws(VhostError) {
        self.logger = logger
        let offered = try VhostNetSession.initialize(device, features: features, highFeatures: highFeatures, receive: receive, transmit: transmit)
        offeredFeatures = offered
        negotiatedFeatures = features
        negotiatedHighFeatures = highFeatures
        netHeaderLength = features.netHeaderLength(with: highFeatures)
        self.backend = consume device
        self.port = port
        self.memory = memory
        logger.debug("\(self.port.name): \(self.device.backendName) offers \(offered); negotiating \(features)")
    }

    /// vhost_dev_init's ioctls on `device`; returns what it offers.
    private static func initialize(_ device: borrowing Backend, features: VirtioFeatures, highFeatures: HighFeatures,
                                   receive: borrowing NetQueue, transmit: borrowing NetQueue) throws(VhostError) -> VirtioFeatures {
        try device.setOwner()
        let offered = try device.features()
        let missing = features.subtracting(offered)
        guard missing.isEmpty else {
            throw .featureUnavailable(requested: missing.featureNames.joined(separator: ", "), offered: offered.description)
        }
        if !highFeatures.isEmpty {
            // Bits above 63 are offered only through VHOST_GET_FEATURES_ARRAY (Linux 6.17).
            let words = try device.featureWords(count: 2)
            let offeredHigh = HighFeatures(rawValue: words.count > 1 ? words[1] : 0)
            let missingHigh = highFeatures.subtracting(offeredHigh)
            guard missingHigh.isEmpty else {
                if offeredHigh.isEmpty {
                    throw .unsupportedByKernel("this kernel has no \(missingHigh.featureNames.joined(separator: ", ")): feature bits above 63 come with VHOST_GET_FEATURES_ARRAY in Linux 6.17, and \(device.backendName) offers none")
                }
                throw .featureUnavailable(requested: missingHigh.featureNames.joined(separator: ", "), offered: offeredHigh.description)
            }
        }
        try device.setVringCall(index: receive.index, receive.call)
        try device.setVringErr(index: receive.index, receive.error)
        try device.setVringCall(index: transmit.index, transmit.call)
        try device.setVringErr(index: transmit.index, transmit.error)
        return offered
    }

    /// vhost_dev_start: features, backend features, memory table, each vring's NUM, BASE, ADDR,
    /// KICK, CALL; then the port's header length and offloads; then the backends. `bases` are
    /// where the device starts reading each avail ring (the driver's start index at first, what
    /// `stop` read back on a resume); with a dirty log, logging is set up again first.
    func start(receive: borrowing NetQueue, transmit: borrowing NetQueue, bases: VringBases,
               receiveOffloads: Tap.Offloads, sendBuffer: Int32?, linkUp: Bool) throws(VhostError) {
        if let dirtyLog {
            // SAFETY: as in enableDirtyLog: the session keeps the log until the device is closed.
            try device.setLogBase(dirtyLog.hostAddress)
        }
        try applyFeatures(dirtyLog == nil ? [] : .logAll)
        // QEMU acks IOTLB_MSG_V2 when offered (vhost_kernel_set_backend_cap).
        let backendFeatures = try device.backendFeatures()
        try device.setBackendFeatures(backendFeatures.intersection(.iotlbMessageV2))
        // SAFETY: from here the device reads and writes `memory` (the table's regions, and the
        // rings inside it) from its own thread until it is closed; the session owns `memory` and
        // closes the device first (deinit).
        try device.setMemoryTable(memoryTable)
        if let iommu {
            // Every SET_FEATURES with ACCESS_PLATFORM starts an empty IOTLB (net.c
            // vhost_net_set_features → vhost_init_device_iotlb); the rings must be mapped again
            // before the backend is attached, and MISSes answered from then on.
            guard let fd = device.iotlbDescriptor else {
                throw .unsupportedByKernel("\(device.backendName) has no device IOTLB for VIRTIO_F_ACCESS_PLATFORM")
            }
            try iommu.preload(receive.memory.ringBlock, fd: fd, observer: iommu.observer)
            try iommu.preload(transmit.memory.ringBlock, fd: fd, observer: iommu.observer)
            iommu.start(fd: fd, observer: iommu.observer)
        }
        try configureVring(receive, base: bases.receive)
        try configureVring(transmit, base: bases.transmit)
        // vhost-net's sock_hlen: the socket side carries the header unless vhost adds it
        // (VHOST_NET_F_VIRTIO_NET_HDR: net.c vhost_net_set_features).
        try port.prepare(headerLength: socketHeaderLength, receiveOffloads: receiveOffloads, sendBuffer: sendBuffer, linkUp: linkUp)
        // The device reads used->idx when a backend is attached (vhost.c vhost_vq_init_access),
        // so the rings were initialised when the queues were made.
        try device.setBackend(index: receive.index, port)
        try device.setBackend(index: transmit.index, port)
        running = true
    }

    /// SET_FEATURES with the negotiated features and `extra`; with bits above 63 the array form,
    /// since 7.x's 64-bit SET_FEATURES would clear them (net.c vhost_net_ioctl).
    private func applyFeatures(_ extra: VirtioFeatures) throws(VhostError) {
        let low = negotiatedFeatures.union(extra)
        if negotiatedHighFeatures.isEmpty {
            try device.setFeatures(low)
        } else {
            try device.setFeatureWords([low.rawValue, negotiatedHighFeatures.rawValue])
        }
    }

    private func configureVring(_ queue: borrowing NetQueue, base: UInt16) throws(VhostError) {
        try device.setVringNum(index: queue.index, num: UInt32(queue.driver.queueSize))
        try device.setVringBase(index: queue.index, base: UInt32(base))
        try device.setVringAddress(index: queue.index, queue.memory.vringAddresses(logged: dirtyLog != nil, iovaOffset: iommu?.offset))
        try device.setVringKick(index: queue.index, queue.kick)
        try device.setVringCall(index: queue.index, queue.call)
    }

    /// vhost_net_stop: detach both backends, then read back each vring's last_avail_idx. Frames
    /// the host sends meanwhile wait in the port's queue.
    func stop(receive: UInt32, transmit: UInt32) throws(VhostError) -> VringBases? {
        guard running else { return nil }
        running = false
        iommu?.stop()
        try device.detachBackend(index: receive)
        try device.detachBackend(index: transmit)
        let rx = try device.vringBase(index: receive), tx = try device.vringBase(index: transmit)
        let bases = VringBases(receive: UInt16(truncatingIfNeeded: rx), transmit: UInt16(truncatingIfNeeded: tx))
        savedBases = bases
        return bases
    }

    /// What the last `stop` read back.
    public private(set) var savedBases: VringBases?

    /// Closes the device and takes `fresh` in its place (a new `/dev/vhost-net` fd), running
    /// vhost_dev_init on it; `start` then resumes from the saved bases.
    func replaceDevice(with fresh: consuming Backend, receive: borrowing NetQueue, transmit: borrowing NetQueue) throws(VhostError) {
        precondition(!running, "stop the session before replacing its device")
        _ = try VhostNetSession.initialize(fresh, features: negotiatedFeatures, highFeatures: negotiatedHighFeatures, receive: receive, transmit: transmit)
        backend = consume fresh   // closes the old device
    }

    /// The switch-over of a migration: closes the device (and with it the dirty log's use),
    /// takes `fresh` in its place (vhost_dev_init on it), then replaces guest memory with `copy`,
    /// in that order, so that no device ever holds memory that is gone. `start` then resumes
    /// from the saved bases over the copy, without dirty logging.
    func migrate(to fresh: consuming Backend, memory copy: consuming GuestMemory,
                 receive: borrowing NetQueue, transmit: borrowing NetQueue) throws(VhostError) {
        precondition(!running, "stop the session before migrating it")
        _ = try VhostNetSession.initialize(fresh, features: negotiatedFeatures, highFeatures: negotiatedHighFeatures, receive: receive, transmit: transmit)
        backend = consume fresh   // closes the old device: its worker stops using the old memory
        dirtyLog = nil
        memory = consume copy     // unmaps the old memory
    }

    /// Every region of the memory table: the session's memory, then the hot-plugged regions.
    public var memoryTable: MemoryTable {
        MemoryTable(regions: memory.map.memoryTable.regions + hotplugged.flatMap { $0.memory.map.memoryTable.regions })
    }

    /// Adds a region to the memory table while the device runs (SET_MEM_TABLE is allowed then:
    /// vhost.c vhost_set_memory); with dirty logging the log grows to cover it first.
    func hotplug(_ region: consuming GuestMemory) throws(VhostError) -> GuestMemoryRegion {
        let added = region.map.regions[0]
        hotplugged.append(HotpluggedMemory(region))
        do {
            try resizeDirtyLog()
            try device.setMemoryTable(memoryTable)
        } catch {
            hotplugged.removeLast()
            throw error
        }
        return added
    }

    /// Removes a hot-plugged region from the table, then shrinks the dirty log; the region is
    /// unmapped only after the device stopped translating into it.
    func unplug(at address: GuestAddress) throws(VhostError) {
        guard let index = hotplugged.firstIndex(where: { $0.memory.map.regions[0].guestAddress == address }) else {
            throw .invalidState("no hot-plugged region at \(address)")
        }
        var removed: HotpluggedMemory? = hotplugged.remove(at: index)
        do {
            try device.setMemoryTable(memoryTable)
        } catch {
            hotplugged.insert(removed!, at: index)   // still in the kernel's table: keep it mapped
            throw error
        }
        removed = nil   // unmapped now: the kernel swapped the table under every vring's mutex
        _ = removed
        try resizeDirtyLog()
    }

    /// QEMU's vhost_dev_log_resize: a log sized for the table's highest guest address,
    /// SET_LOG_BASE to it, then what the old log held carried over and the old log freed.
    private func resizeDirtyLog() throws(VhostError) {
        guard let old = dirtyLog else { return }
        let end = memoryTable.regions.map { $0.guestAddress + $0.size }.max() ?? 0
        let log = try DirtyLog(coveringGuestBytes: end)
        guard log.size != old.size else { return }
        // SAFETY: as in enableDirtyLog; the old log stays mapped until the kernel moved to the new one.
        try device.setLogBase(log.hostAddress)
        for page in old.sync() where page.rawValue < end { log.mark(page) }
        dirtyLog = log
    }

    /// Attaches an eventfd as the log's doorbell (VHOST_SET_LOG_FD).
    func setLogDoorbell(_ event: borrowing EventFD) throws(VhostError) { try device.setLogFD(event) }

    /// VHOST_RESET_OWNER (the device forgets its owner and every setting), then vhost_dev_init
    /// again on the same fd; `start` then resumes from the saved bases.
    func resetOwner(receive: borrowing NetQueue, transmit: borrowing NetQueue) throws(VhostError) {
        precondition(!running, "stop the session before resetting its owner")
        try device.resetOwner()
        _ = try VhostNetSession.initialize(device, features: negotiatedFeatures, highFeatures: negotiatedHighFeatures, receive: receive, transmit: transmit)
    }

    /// QEMU's vhost_dev_set_log when migration starts: `SET_LOG_BASE` with a bitmap of one bit
    /// per 4 KiB guest page, `SET_FEATURES` with VHOST_F_LOG_ALL, and each vring's address again
    /// with VHOST_VRING_F_LOG and the used ring's guest-physical address.
    func enableDirtyLog(receive: borrowing NetQueue, transmit: borrowing NetQueue) throws(VhostError) {
        guard dirtyLog == nil else { return }
        guard offeredFeatures.contains(.logAll) else {
            throw .featureUnavailable(requested: "VHOST_F_LOG_ALL", offered: offeredFeatures.description)
        }
        let log = try DirtyLog(coveringGuestBytes: memoryTable.regions.map { $0.guestAddress + $0.size }.max() ?? 0)
        // SAFETY: the device writes the log from now on; the session keeps it (and `memory`,
        // whose pages it marks) until the device is closed in deinit.
        try device.setLogBase(log.hostAddress)
        dirtyLog = log
        try applyFeatures(.logAll)
        try device.setVringAddress(index: receive.index, receive.memory.vringAddresses(logged: true, iovaOffset: iommu?.offset))
        try device.setVringAddress(index: transmit.index, transmit.memory.vringAddresses(logged: true, iovaOffset: iommu?.offset))
    }

    deinit {
        // The IOMMU's thread reads the device's fd: it stops first.
        iommu?.stop()
        // Closing the device stops its worker and drops its hold on our memory (net.c
        // vhost_net_release; the in-process device joins its thread). Only then may `memory`
        // and `dirtyLog` be unmapped, which Swift does after this body.
        backend = nil
    }
}
