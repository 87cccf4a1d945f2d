import Glibc
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
    public init() {}
}

/// How the driver waits for the device.
public enum NotificationMode: String, Sendable, CaseIterable {
    /// Sleep on the call eventfd (with interrupts re-enabled race-free before sleeping).
    case interrupt
    /// Spin on used->idx, with interrupts suppressed.
    case poll
}

/// One vring of a queue pair as the driver sees it: the split ring in guest memory, one
/// buffer per descriptor, and the kick, call and error eventfds.
public struct NetQueue: ~Copyable {
    public let index: UInt32
    public var driver: SplitVirtqueueDriver
    public let ringMemory: GuestBuffer
    /// One buffer per descriptor; a one-descriptor chain with head `h` uses `buffers[h]`.
    public let buffers: [GuestBuffer]
    public let kick: EventFD
    public let call: EventFD
    public let error: EventFD
    public var counters = QueueCounters()

    init(index: UInt32, queueSize: UInt16, bufferSize: Int, eventIndex: Bool, memory: inout GuestMemory) throws(VhostError) {
        let kick = try EventFD()
        let call = try EventFD()
        let error = try EventFD()
        let layout = SplitRingLayout.offsets(queueSize: Int(queueSize))
        let ringMemory = try memory.allocate(layout.total, alignment: 4096)
        var buffers: [GuestBuffer] = []
        buffers.reserveCapacity(Int(queueSize))
        for _ in 0..<Int(queueSize) { buffers.append(try memory.allocate(bufferSize, alignment: 64)) }
        let ring = SplitRing(queueSize: queueSize,
                             descriptors: ringMemory.host + layout.descriptors,
                             avail: ringMemory.host + layout.avail,
                             used: ringMemory.host + layout.used)
        self.index = index
        self.ringMemory = ringMemory
        self.driver = SplitVirtqueueDriver(ring: ring, eventIndex: eventIndex)
        self.buffers = buffers
        self.kick = kick
        self.call = call
        self.error = error
    }

    /// Host addresses for VHOST_SET_VRING_ADDR.
    var ringAddresses: (descriptors: UInt64, avail: UInt64, used: UInt64) {
        let ring = driver.ring
        return (UInt64(UInt(bitPattern: ring.descriptors)), UInt64(UInt(bitPattern: ring.avail)), UInt64(UInt(bitPattern: ring.used)))
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
            let deadline = Clock.now(offsetMilliseconds: Int(milliseconds))
            while !driver.hasUsed() {
                if Clock.now(offsetMilliseconds: 0) >= deadline { return false }
            }
            return true
        }
    }

    mutating func collectRingErrors() {
        if let n = error.consume() { counters.ringErrors += n }
    }
}

enum Clock {
    /// Monotonic milliseconds, plus an offset.
    static func now(offsetMilliseconds: Int) -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000 + offsetMilliseconds
    }
}
