import Vhost
import Virtio

/// The TX vring: frames from this driver to the device. It owns its buffers and header length;
/// `send` keeps the ring full, kicks only when the device asks, and waits when it is full.
public struct TransmitQueue: ~Copyable {
    public internal(set) var queue: NetQueue

    init(_ queue: consuming NetQueue) { self.queue = queue }

    /// The ring driver, for inspection.
    public var driver: SplitVirtqueueDriver { _read { yield queue.driver } }
    public var counters: QueueCounters { queue.counters }
    /// Bytes of frame one chain holds.
    public var frameCapacity: Int { queue.frameCapacity }

    /// Reaps finished chains. TX used length is always 0 (net.c handle_tx).
    @discardableResult
    public mutating func reap() throws(VhostError) -> Int {
        var count = 0
        while try queue.nextUsed() != nil { count += 1 }
        return count
    }

    /// Runs `body` once on the frame area of every TX buffer, for frames that stay in place (a
    /// benchmark's constant frame, a pool of pre-built packets): `fill` then only returns the
    /// length, and no frame is copied per transmit. Only while no chain is in flight, since the
    /// device reads the buffers of chains in flight.
    public mutating func fillEveryBuffer(_ body: (UnsafeMutableRawBufferPointer) -> Void) throws(VhostError) {
        guard queue.driver.inFlight == 0 else {
            throw .invalidState("\(queue.driver.inFlight) TX chains are in flight: their buffers belong to the device until it uses them")
        }
        for head in 0..<queue.driver.queueSize {
            // SAFETY: no chain is in flight, so the device reads none of these buffers now.
            body(UnsafeMutableRawBufferPointer(start: queue.framePointer(head), count: queue.frameCapacity))
        }
    }

    /// Adds up to `count` frames (as many as fit after reaping), publishes them and kicks when
    /// the device asks. Returns how many were added; does not wait.
    public mutating func post(count: Int, header: VirtioNetHeader, fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError) -> Int {
        try reap()
        let added = add(count: count, first: 0, header: header, fill: fill)
        queue.publishAndKick()
        return added
    }

    /// Adds frames `first..<count` while chains fit; returns how many it added.
    private mutating func add(count: Int, first: Int, header: VirtioNetHeader, fill: (Int, UnsafeMutableRawBufferPointer) -> Int) -> Int {
        let capacity = queue.frameCapacity
        var sent = first
        while sent < count, queue.canAddChain, let head = queue.driver.nextFreeHead {
            // SAFETY: head `head` is free (not in flight), so the device does not read its
            // buffers until the avail entry naming it is published (release store, after these writes).
            header.write(to: queue.headerPointer(head), length: queue.headerLength)
            let length = fill(sent, UnsafeMutableRawBufferPointer(start: queue.framePointer(head), count: capacity))
            precondition(length >= 0 && length <= capacity, "fill returned \(length) for a \(capacity)-byte buffer")
            let used = queue.addChain(frameLength: length, deviceWritable: false)
            assert(used == head, "the chain went to head \(String(describing: used)), not \(head)")
            queue.counters.frames += 1
            queue.counters.bytes += UInt64(length)
            sent += 1
        }
        return sent - first
    }

    /// Transmits `count` frames. `fill(i, buffer)` writes frame `i` into the guest buffer and
    /// returns its length; `header` goes before it, inline or in its own descriptor by layout.
    /// Returns after the device has used every chain.
    public mutating func send(count: Int, header: VirtioNetHeader, mode: NotificationMode,
                              fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws(VhostError) {
        var sent = 0
        while sent < count {
            try reap()
            sent += add(count: count, first: sent, header: header, fill: fill)
            queue.publishAndKick()
            if sent < count {
                guard waitForMostInFlight(mode: mode, milliseconds: 5000) else {
                    throw .timeout("the device completed no TX descriptor in 5 s (\(queue.driver.inFlight) in flight); is the backend attached?")
                }
            }
        }
        try drain(mode: mode)
    }

    /// Waits until a chain is free to add (reaping what the device used), in the queue's mode;
    /// returns false when `milliseconds` passed without one.
    public mutating func waitForRoom(mode: NotificationMode, milliseconds: Int32) throws(VhostError) -> Bool {
        try reap()
        if queue.canAddChain { return true }
        guard waitForMostInFlight(mode: mode, milliseconds: milliseconds) else { return false }
        try reap()
        return queue.canAddChain
    }

    /// Sleeps until 3/4 of what is in flight is used, not the first chain, as virtio_net's
    /// start_xmit does with a full ring (virtio_ring.c virtqueue_enable_cb_delayed): one wake-up
    /// then refills most of the ring. Without EVENT_IDX the first used chain signals.
    private mutating func waitForMostInFlight(mode: NotificationMode, milliseconds: Int32) -> Bool {
        let wanted = UInt16(clamping: max(1, queue.driver.inFlight * 3 / 4))
        return queue.waitForUsed(mode: mode, milliseconds: milliseconds, wanted: wanted, maxDelayMilliseconds: nil)
    }

    /// Waits until the device has used every TX chain.
    public mutating func drain(mode: NotificationMode, milliseconds: Int32 = 5000) throws(VhostError) {
        try reap()
        while queue.driver.inFlight > 0 {
            guard queue.waitForUsed(mode: mode, milliseconds: milliseconds) else {
                throw .timeout("the device left \(queue.driver.inFlight) TX descriptors unused for \(milliseconds) ms")
            }
            try reap()
        }
    }
}
