import Vhost
import Virtio

/// What one vring did, for `vhostctl`'s live counters and the tests.
public struct QueueCounters: Sendable, Equatable {
    public var frames: UInt64 = 0
    public var bytes: UInt64 = 0
    /// Kicks written to the kick eventfd.
    public var kicks: UInt64 = 0
    /// Publishes after which the device said it needs no kick (NO_NOTIFY or avail_event).
    public var suppressedKicks: UInt64 = 0
    /// Wake-ups from the call eventfd.
    public var calls: UInt64 = 0
    /// Frames dropped: TX frames that did not fit, RX frames too large or malformed.
    public var drops: UInt64 = 0
    /// Errors the kernel signalled on the vring's error eventfd (vq_err).
    public var ringErrors: UInt64 = 0
    /// RX frames that spanned several buffers (MRG_RXBUF) and were reassembled.
    public var mergedFrames: UInt64 = 0
    public init() {}
}

/// How the driver waits for the device.
public enum NotificationMode: String, Sendable, CaseIterable {
    /// Sleep on the call eventfd (with interrupts re-enabled race-free before sleeping).
    case interrupt
    /// Spin on used->idx, with interrupts suppressed.
    case poll
}

/// How a frame's descriptors are laid out.
public enum DescriptorLayout: String, Sendable, CaseIterable {
    /// One descriptor: the virtio-net header inline before the frame.
    case inline
    /// A chain of two: the header in its own descriptor, then the frame.
    case separateHeader
    /// One ring slot with VRING_DESC_F_INDIRECT, pointing at a two-entry table (header, frame)
    /// in guest memory (needs VIRTIO_F_INDIRECT_DESC).
    case indirect
}

/// Where guest memory lies.
public enum MemoryPlacement: String, Sendable, CaseIterable {
    /// One region at 1 GiB.
    case single
    /// Two regions with a hole between them, like a real VM below and above 4 GiB: one at
    /// 0x0010_0000, one at 0x1_0000_0000. Buffers alternate between them.
    case belowAndAbove4GiB
}

/// One vring of a queue pair as the driver sees it: the split ring in guest memory, per
/// chain head a frame buffer (and a header buffer or an indirect table, by layout), and the
/// kick, call and error eventfds.
public struct NetQueue: ~Copyable {
    public let index: UInt32
    public var driver: SplitVirtqueueDriver
    public let ringMemory: GuestBuffer
    /// Per head: the frame buffer (with the header inline for `.inline`).
    public let buffers: [GuestBuffer]
    /// Per head: the header buffer (`.separateHeader`, `.indirect`).
    public let headers: [GuestBuffer]
    /// Per head: the two-entry indirect table (`.indirect`).
    public let tables: [GuestBuffer]
    public let layout: DescriptorLayout
    public let kick: EventFD
    public let call: EventFD
    public let error: EventFD
    public var counters = QueueCounters()

    init(index: UInt32, queueSize: UInt16, bufferSize: Int, headerLength: Int, layout descriptorLayout: DescriptorLayout,
         eventIndex: Bool, inOrder: Bool, memory: inout GuestMemory) throws(VhostError) {
        let kick = try EventFD()
        let call = try EventFD()
        let error = try EventFD()
        let layout = SplitRingLayout.offsets(queueSize: Int(queueSize))
        // Whole pages, so no buffer shares a page with a ring (the dirty log is per 4 KiB page).
        let ringMemory = try memory.allocate((layout.total + 4095) & ~4095, alignment: 4096)
        let regions = memory.map.regions.count
        var buffers: [GuestBuffer] = [], headers: [GuestBuffer] = [], tables: [GuestBuffer] = []
        buffers.reserveCapacity(Int(queueSize))
        for head in 0..<Int(queueSize) {
            // With several regions, buffers alternate between them.
            let region = head % regions
            buffers.append(try memory.allocate(bufferSize, alignment: 64, region: region))
            if descriptorLayout != .inline { headers.append(try memory.allocate(headerLength, alignment: 16, region: region)) }
            if descriptorLayout == .indirect { tables.append(try memory.allocate(2 * SplitRingLayout.descriptorSize, alignment: 16, region: region)) }
        }
        let ring = SplitRing(queueSize: queueSize,
                             descriptors: ringMemory.host + layout.descriptors,
                             avail: ringMemory.host + layout.avail,
                             used: ringMemory.host + layout.used)
        self.index = index
        self.ringMemory = ringMemory
        self.driver = SplitVirtqueueDriver(ring: ring, eventIndex: eventIndex, inOrder: inOrder)
        self.buffers = buffers
        self.headers = headers
        self.tables = tables
        self.layout = descriptorLayout
        self.kick = kick
        self.call = call
        self.error = error
    }

    /// Host addresses for VHOST_SET_VRING_ADDR.
    var ringAddresses: (descriptors: UInt64, avail: UInt64, used: UInt64) {
        let ring = driver.ring
        return (UInt64(UInt(bitPattern: ring.descriptors)), UInt64(UInt(bitPattern: ring.avail)), UInt64(UInt(bitPattern: ring.used)))
    }

    /// Puts one frame's chain on the ring at the next free head, by layout: `headerLength`
    /// bytes of header then `frameLength` bytes of frame (TX), or room for them (RX).
    /// Returns false when no descriptor is free (or, for a chain, not enough).
    mutating func addChain(headerLength: Int, frameLength: Int, deviceWritable: Bool) -> Bool {
        guard let head = driver.nextFreeHead else { return false }
        let buffer = buffers[Int(head)]
        switch layout {
        case .inline:
            return driver.add(CollectionOfOne(BufferSegment(address: buffer.guestAddress, length: UInt32(headerLength + frameLength), deviceWritable: deviceWritable))) != nil
        case .separateHeader:
            let header = headers[Int(head)]
            return driver.add([BufferSegment(address: header.guestAddress, length: UInt32(headerLength), deviceWritable: deviceWritable),
                               BufferSegment(address: buffer.guestAddress, length: UInt32(frameLength), deviceWritable: deviceWritable)]) != nil
        case .indirect:
            let header = headers[Int(head)], table = tables[Int(head)]
            return driver.addIndirect([BufferSegment(address: header.guestAddress, length: UInt32(headerLength), deviceWritable: deviceWritable),
                                       BufferSegment(address: buffer.guestAddress, length: UInt32(frameLength), deviceWritable: deviceWritable)],
                                      table: table.host, tableAddress: table.guestAddress) != nil
        }
    }

    /// Where the header and the frame of head `h` live.
    func headerPointer(_ head: UInt16) -> UnsafeMutableRawPointer { layout == .inline ? buffers[Int(head)].host : headers[Int(head)].host }
    func framePointer(_ head: UInt16, headerLength: Int) -> UnsafeMutableRawPointer {
        layout == .inline ? buffers[Int(head)].host + headerLength : buffers[Int(head)].host
    }
    func frameCapacity(headerLength: Int) -> Int { layout == .inline ? buffers[0].length - headerLength : buffers[0].length }
    /// Bytes one chain holds, header included.
    func chainCapacity(headerLength: Int) -> Int { layout == .inline ? buffers[0].length : buffers[0].length + headerLength }

    /// Appends the first `length` bytes the device wrote into chain `head`, in iovec order. A
    /// continuation buffer of a merged frame has no header of its own (net.c handle_rx copies
    /// the frame on from the start of the next chain), so for the non-inline layouts its data
    /// begins in the header descriptor.
    func appendChainBytes(head: UInt16, length: Int, headerLength: Int, to bytes: inout [UInt8]) {
        var remaining = max(0, length)
        if layout != .inline {
            let n = min(remaining, headerLength)
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: headers[Int(head)].host, count: n))
            remaining -= n
        }
        let n = min(remaining, buffers[Int(head)].length)
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: buffers[Int(head)].host, count: n))
    }

    /// Publishes what was added and kicks when the device asks for it.
    mutating func publishAndKick() {
        guard driver.addedSincePublish > 0 else { return }
        if driver.publish() {
            kick.signal()
            counters.kicks += 1
        } else {
            counters.suppressedKicks += 1
        }
    }

    /// Waits for used entries: in interrupt mode re-enables interrupts, re-checks (the
    /// virtqueue_enable_cb_prepare/virtqueue_poll pattern) and sleeps on the call eventfd;
    /// in poll mode spins. Returns false on timeout.
    mutating func waitForUsed(mode: NotificationMode, milliseconds: Int32) -> Bool {
        if driver.hasUsed() { return true }
        collectRingErrors()
        switch mode {
        case .interrupt:
            defer { driver.disableInterrupts() }
            if driver.enableInterrupts() { return true }
            guard call.wait(milliseconds: milliseconds) != nil else { return driver.hasUsed() }
            counters.calls += 1
            return true
        case .poll:
            let deadline = MonotonicClock.milliseconds() + Int(milliseconds)
            while !driver.hasUsed() {
                if MonotonicClock.milliseconds() >= deadline { return false }
            }
            return true
        }
    }

    mutating func collectRingErrors() {
        if let n = error.consume() { counters.ringErrors += n }
    }
}
