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
    /// Errors the device signalled on the vring's error eventfd (vq_err).
    public var ringErrors: UInt64 = 0
    /// RX frames that spanned several buffers (MRG_RXBUF) and were reassembled.
    public var mergedFrames: UInt64 = 0
    /// Sleeps for used entries (interrupt mode) that ran their whole time, or RX coalescing's
    /// delay, without a signal. On TX, where nothing coalesces, each is a wait the device could
    /// not end: it was asked to signal at a used index it never reached.
    public var timedOutSleeps: UInt64 = 0
    public init() {}

    public static func + (a: QueueCounters, b: QueueCounters) -> QueueCounters {
        var c = QueueCounters()
        c.frames = a.frames + b.frames
        c.bytes = a.bytes + b.bytes
        c.kicks = a.kicks + b.kicks
        c.suppressedKicks = a.suppressedKicks + b.suppressedKicks
        c.calls = a.calls + b.calls
        c.drops = a.drops + b.drops
        c.ringErrors = a.ringErrors + b.ringErrors
        c.mergedFrames = a.mergedFrames + b.mergedFrames
        c.timedOutSleeps = a.timedOutSleeps + b.timedOutSleeps
        return c
    }
}

/// How the driver waits for the device.
public enum NotificationMode: String, Sendable, CaseIterable {
    /// Sleep on the call eventfd (with interrupts re-enabled race-free before sleeping).
    case interrupt
    /// Spin on used->idx, with interrupts suppressed.
    case poll
}

/// One vring as the driver sees it: the split ring driver over the queue's guest memory, the
/// kick, call and error eventfds, and the counters. `TransmitQueue` and `ReceiveQueue` build on
/// it; each queue's driver, buffers and counters are updated here, in one place.
public struct NetQueue: ~Copyable {
    /// The vring index: 0 (RX) or 1 (TX).
    public let index: UInt32
    public internal(set) var driver: SplitVirtqueueDriver
    public internal(set) var memory: QueueMemory
    public let layout: DescriptorLayout
    /// The virtio-net header length on the ring (10 or 12).
    public let headerLength: Int
    public let kick: EventFD
    public let call: EventFD
    public let error: EventFD
    /// What the interrupt-mode wait sleeps in: the call eventfd edge-triggered (token 0), so a
    /// wake-up costs one epoll_wait(2) and no read(2) to clear the count, and the error eventfd
    /// level-triggered (token 1). Kept for the queue's life: no wait-queue set-up per sleep, as
    /// poll(2) does for each fd on each call.
    let waiter: EventPoller
    public package(set) var counters = QueueCounters()
    /// Set when the device broke the protocol on this queue.
    public internal(set) var broken: RingViolation?
    /// Added to every guest-physical address the device is given: the IOVA offset of an
    /// emulated IOMMU (VIRTIO_F_ACCESS_PLATFORM), else 0.
    public let addressOffset: UInt64
    /// Kick after every publish whatever the device asked (for comparison runs).
    var kickEveryPublish = false
    /// Told of every publish and kick (nil: nobody records; the hot path pays one test).
    var ringObserver: RingObserver? = nil
    /// Frame bytes added since the last publish, for the ring observer.
    private var addedFrameBytes = 0
    /// Ring errors a wait read from the error eventfd that `takeRingError` has not reported yet.
    var unreportedRingErrors: UInt64 = 0

    init(index: UInt32, memory: QueueMemory, layout: DescriptorLayout, headerLength: Int, eventIndex: Bool, inOrder: Bool, startIndex: UInt16 = 0, addressOffset: UInt64 = 0) throws(VhostError) {
        let kick = try EventFD(), call = try EventFD(), error = try EventFD()
        let waiter = try EventPoller()
        try waiter.add(call.fd, token: Self.callToken, edgeTriggered: true)
        try waiter.add(error.fd, token: Self.errorToken)
        self.waiter = waiter
        self.index = index
        self.memory = memory
        self.layout = layout
        self.headerLength = headerLength
        self.addressOffset = addressOffset
        self.kick = kick
        self.call = call
        self.error = error
        // SAFETY: the ring lies in guest memory the session keeps mapped for as long as this
        // queue exists; the driver initialises it (zeroed, indices 0) before the device is given
        // its address, and from then on shares it only through Atomic indices (SplitRing).
        driver = SplitVirtqueueDriver(ring: memory.ring, eventIndex: eventIndex, inOrder: inOrder, startIndex: startIndex)
    }

    /// RX or TX, from the vring index.
    var direction: QueueDirection { index == VhostNetDevice.receiveQueueIndex ? .receive : .transmit }
    var name: String { direction.rawValue }

    /// Moves the queue onto a byte-for-byte copy of guest memory (same guest-physical
    /// addresses, other host addresses): its buffers and its driver follow (live migration).
    mutating func move(to map: GuestMemoryMap) throws(VhostError) {
        let moved = try memory.moved(to: map)
        memory = moved
        driver.move(to: moved.ring)
    }

    /// Bytes of frame one chain holds (without the header when it is inline).
    public var frameCapacity: Int { layout == .inline ? memory.buffers[0].length - headerLength : memory.buffers[0].length }
    /// Bytes one chain holds, header included.
    public var chainCapacity: Int { layout == .inline ? memory.buffers[0].length : memory.buffers[0].length + headerLength }

    /// Where the header and the frame of head `h` live.
    package func headerPointer(_ head: UInt16) -> UnsafeMutableRawPointer { layout == .inline ? memory.buffers[Int(head)].host : memory.headers[Int(head)].host }
    package func framePointer(_ head: UInt16) -> UnsafeMutableRawPointer {
        layout == .inline ? memory.buffers[Int(head)].host + headerLength : memory.buffers[Int(head)].host
    }

    /// Whether a whole chain fits now: the next head is free (and for a two-descriptor chain, two are).
    package var canAddChain: Bool { driver.nextFreeHead != nil && (layout != .separateHeader || driver.freeCount >= 2) }

    /// Chains the device holds. The driver counts descriptors; a chain with the header in its own
    /// descriptor takes two (an indirect chain one ring slot), and the device returns each chain
    /// as one used entry (vhost.c vhost_get_vq_desc walks a whole chain per head).
    package var chainsInFlight: Int { layout == .separateHeader ? driver.inFlight / 2 : driver.inFlight }

    /// Puts one frame's chain on the ring at the next free head, by layout: the header then
    /// `frameLength` bytes of frame (TX), or room for them (RX). Returns the head it used, or nil
    /// when no descriptor is free (or, for a chain, not enough).
    package mutating func addChain(frameLength: Int, deviceWritable: Bool) -> UInt16? {
        guard let head = driver.nextFreeHead else { return nil }
        let buffer = memory.buffers[Int(head)]
        if ringObserver != nil { addedFrameBytes += frameLength }
        func device(_ address: GuestAddress) -> UInt64 { address.rawValue + addressOffset }
        switch layout {
        case .inline:
            // fillWithReceiveBuffers writes this descriptor for RX without coming here.
            return driver.add(BufferSegment(address: device(buffer.guestAddress), length: UInt32(headerLength + frameLength), deviceWritable: deviceWritable))
        case .separateHeader, .indirect:
            let header = memory.headers[Int(head)]
            // Two segments on the stack, not in an array: no allocation per frame.
            return withUnsafeTemporaryAllocation(of: BufferSegment.self, capacity: 2) { segments in
                segments.initialize(repeating: BufferSegment(address: device(header.guestAddress), length: UInt32(headerLength), deviceWritable: deviceWritable))
                segments[1] = BufferSegment(address: device(buffer.guestAddress), length: UInt32(frameLength), deviceWritable: deviceWritable)
                let chain = UnsafeBufferPointer(segments)
                guard layout == .indirect else { return driver.add(chain) }
                let table = memory.tables[Int(head)]
                // SAFETY: the table is guest memory of this head's, not in flight, so the device
                // does not read it until the avail entry that names it is published.
                return driver.addIndirect(chain, table: table.host, tableAddress: device(table.guestAddress))
            }
        }
    }

    /// Puts one TX frame's chain at the next free head with the frame in the large buffer instead
    /// of the head's own (the header inline before it, or in the head's header buffer, by
    /// layout). Returns the head, or nil when there is no large buffer or no chain fits.
    package mutating func addLargeChain(frameLength: Int) -> UInt16? {
        guard let large = memory.large, canAddChain, let head = driver.nextFreeHead else { return nil }
        if ringObserver != nil { addedFrameBytes += frameLength }
        let offset = addressOffset
        switch layout {
        case .inline:
            return driver.add(BufferSegment(address: large.guestAddress.rawValue &+ offset, length: UInt32(headerLength + frameLength), deviceWritable: false))
        case .separateHeader, .indirect:
            let header = memory.headers[Int(head)]
            let segments = [BufferSegment(address: header.guestAddress.rawValue &+ offset, length: UInt32(headerLength), deviceWritable: false),
                            BufferSegment(address: large.guestAddress.rawValue &+ offset, length: UInt32(frameLength), deviceWritable: false)]
            guard layout == .indirect else { return driver.add(segments) }
            let table = memory.tables[Int(head)]
            // SAFETY: the table is this head's, not in flight (as in addChain).
            return driver.addIndirect(segments, table: table.host, tableAddress: table.guestAddress.rawValue &+ offset)
        }
    }

    /// Where the header and the frame go in the large buffer (TX), by layout; nil without one.
    package func largeFramePointers(head: UInt16) -> (header: UnsafeMutableRawPointer, frame: UnsafeMutableRawPointer, capacity: Int)? {
        guard let large = memory.large else { return nil }
        if layout == .inline { return (large.host, large.host + headerLength, large.length - headerLength) }
        return (memory.headers[Int(head)].host, large.host, large.length)
    }

    /// Puts a device-writable chain on every free head (RX; virtio_net try_fill_recv), without
    /// publishing. With the header inline each chain is one descriptor over the head's buffer:
    /// that loop is written out here, since it runs once per received frame, and must put the
    /// same descriptor on the ring as `addChain`'s `.inline` case (address + offset, the whole buffer).
    mutating func fillWithReceiveBuffers() {
        guard layout == .inline && ringObserver == nil else {
            while canAddChain, addChain(frameLength: frameCapacity, deviceWritable: true) != nil {}
            return
        }
        let buffers = memory.buffers, offset = addressOffset
        let length = UInt32(buffers[0].length)
        buffers.withUnsafeBufferPointer { buffers in
            while let head = driver.nextFreeHead {
                // A head is below the queue size, and there is a buffer per head (GuestMemoryPlan).
                let address = buffers[Int(head)].guestAddress.rawValue &+ offset
                _ = driver.add(BufferSegment(address: address, length: length, deviceWritable: true))
            }
        }
    }

    /// Reaps one used entry; a protocol violation marks the queue broken and throws. Always
    /// inlined: every TX and RX frame is reaped here (12% of the TX driver's samples as a call).
    @inline(__always)
    mutating func nextUsed() throws(VhostError) -> UsedElement? {
        do {
            return try driver.nextUsed()
        } catch {
            broken = error
            throw .brokenQueue(queue: name, reason: error.description)
        }
    }

    /// Appends the first `length` bytes the device wrote into chain `head`, in iovec order. A
    /// continuation buffer of a merged frame has no header of its own (net.c handle_rx copies
    /// the frame on from the start of the next chain), so for the non-inline layouts its data
    /// begins in the header descriptor.
    func appendChainBytes(head: UInt16, length: Int, to bytes: inout [UInt8]) {
        var remaining = max(0, length)
        if layout != .inline {
            let n = min(remaining, headerLength)
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: memory.headers[Int(head)].host, count: n))
            remaining -= n
        }
        let n = min(remaining, memory.buffers[Int(head)].length)
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: memory.buffers[Int(head)].host, count: n))
    }

    /// Publishes what was added and kicks when the device asks for it.
    package mutating func publishAndKick() {
        guard driver.addedSincePublish > 0 else { return }
        if let ringObserver {
            ringObserver(.published(queue: index, chains: Int(driver.addedSincePublish), frameBytes: addedFrameBytes))
            addedFrameBytes = 0
        }
        if driver.publish() || kickEveryPublish {
            kick.signal()
            counters.kicks += 1
            ringObserver?(.kicked(queue: index))
        } else {
            counters.suppressedKicks += 1
        }
    }

    /// Waits for used entries: in interrupt mode re-enables interrupts, re-checks (the
    /// virtqueue_enable_cb_prepare/virtqueue_poll pattern) and sleeps on the call eventfd;
    /// in poll mode spins. Returns false on timeout.
    mutating func waitForUsed(mode: NotificationMode, milliseconds: Int32) -> Bool {
        waitForUsed(mode: mode, milliseconds: milliseconds, wanted: 1, maxDelayMilliseconds: nil)
    }

    /// Waits until `wanted` entries are used (in interrupt mode; one in poll mode), at most
    /// `milliseconds`, or `maxDelayMilliseconds` when that is shorter; true when any is used.
    mutating func waitForUsed(mode: NotificationMode, milliseconds: Int32, wanted: UInt16, maxDelayMilliseconds: Int32?) -> Bool {
        switch wait(mode: mode, milliseconds: milliseconds, wanted: wanted, maxDelayMilliseconds: maxDelayMilliseconds) {
        case .ready, .signalled: true
        case .timedOut: driver.hasUsed()
        }
    }

    /// How a wait for used entries ended.
    enum WaitOutcome {
        /// Enough entries were used (or the driver is broken) without sleeping.
        case ready
        /// The device signalled the call eventfd (interrupt mode) or an entry was used (poll mode).
        case signalled
        /// The time (or the coalescing delay) passed first.
        case timedOut
    }

    /// `waitForUsed`, saying how the wait ended. A ring error the device signals meanwhile is
    /// counted (`counters.ringErrors`): in interrupt mode the error eventfd is watched in the
    /// same poll(2) as the call eventfd.
    mutating func wait(mode: NotificationMode, milliseconds: Int32, wanted: UInt16, maxDelayMilliseconds: Int32?) -> WaitOutcome {
        let wanted = mode == .interrupt ? wanted : 1
        if driver.isBroken || driver.usedPending >= wanted { return .ready }
        switch mode {
        case .interrupt:
            // A look without waiting: used->idx was just read above, so arming interrupts and an
            // epoll_wait(2) with no time would only add a system call per look (an endpoint that
            // looks between frames of a stream paid several per frame).
            if milliseconds == 0 { return .timedOut }
            defer { driver.disableInterrupts() }
            if driver.enableInterrupts(after: wanted) { return .ready }
            return sleep(milliseconds: min(milliseconds, maxDelayMilliseconds ?? milliseconds))
        case .poll:
            // Spinning costs the whole CPU by design; one read(2) of the error eventfd per wait is
            // nothing beside it.
            collectRingErrors()
            let deadline = MonotonicClock.coarseMilliseconds() + Int(milliseconds)
            while !driver.hasUsed() {
                if MonotonicClock.coarseMilliseconds() >= deadline { return .timedOut }
            }
            return .signalled
        }
    }

    static let callToken: UInt64 = 0, errorToken: UInt64 = 1

    /// Sleeps in `waiter` until the device signals the call eventfd or `milliseconds` pass (0:
    /// only looks, -1: for ever). A ring error the device signals meanwhile is read and counted,
    /// and the wait goes on for the time left, as after EINTR. The call eventfd's count is not
    /// read: each signal is one edge, so the calls counted are the wake-ups it caused. A signal
    /// left from before the wait (an edge the last wake-up did not take) ends it at once, as a
    /// readable eventfd ended poll(2) before.
    private mutating func sleep(milliseconds: Int32) -> WaitOutcome {
        let wait = CoarseWait(milliseconds: milliseconds)
        var left = milliseconds
        while true {
            if let ready = waiter.readyPair(milliseconds: left) {
                if ready & (1 << Self.errorToken) != 0, let n = error.consume() { noteRingErrors(n) }
                if ready & (1 << Self.callToken) != 0 {
                    counters.calls += 1
                    return .signalled
                }
                if ready == 0 { return timedOut() }
            }
            guard milliseconds > 0 else {
                if milliseconds == 0 { return .timedOut }
                continue
            }
            left = wait.left
            if left == 0 { return timedOut() }
        }
    }

    /// A sleep that ran its time without a signal, counted.
    private mutating func timedOut() -> WaitOutcome {
        counters.timedOutSleeps += 1
        return .timedOut
    }

    mutating func collectRingErrors() {
        if let n = error.consume() { noteRingErrors(n) }
    }

    /// Counts ring errors read from the error eventfd outside `takeRingError`, and keeps them
    /// for it, so that its event (and the endpoint's handler) still hears of them.
    mutating func noteRingErrors(_ count: UInt64) {
        counters.ringErrors += count
        unreportedRingErrors += count
    }
}
