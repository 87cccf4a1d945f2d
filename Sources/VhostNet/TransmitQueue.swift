import Vhost
import Virtio

/// The TX vring: frames from this driver to the device. It owns its buffers and header length;
/// `send` keeps the ring full, kicks only when the device asks, and waits when it is full.
public struct TransmitQueue: ~Copyable {
    public internal(set) var queue: NetQueue
    /// The head whose chain holds the large buffer, while the device has it.
    private var largeHead: UInt16? = nil

    init(_ queue: consuming NetQueue) { self.queue = queue }

    /// Bytes of frame the large buffer holds (0 without one): frames up to this size go out
    /// whole, one at a time.
    public var largeFrameCapacity: Int { queue.memory.large.map { queue.layout == .inline ? $0.length - queue.headerLength : $0.length } ?? 0 }

    /// The ring driver, for inspection.
    public var driver: SplitVirtqueueDriver { _read { yield queue.driver } }
    public var counters: QueueCounters { queue.counters }
    /// Bytes of frame one chain holds.
    public var frameCapacity: Int { queue.frameCapacity }

    /// Reaps finished chains. TX used length is always 0 (net.c handle_tx).
    @discardableResult
    public mutating func reap() throws(VhostError) -> Int {
        var count = 0
        while let used = try queue.nextUsed() {
            count += 1
            if let large = largeHead, used.id == UInt32(large) || (queue.driver.inOrder && queue.driver.lastBatch.contains(large)) { largeHead = nil }
        }
        return count
    }

    /// What `enqueue` did with a frame.
    public enum EnqueueOutcome: Sendable, Equatable {
        /// On the ring (not yet published).
        case added
        /// No chain is free now (or the large buffer is the device's): reap, or wait, and retry.
        case full
        /// Larger than any buffer of this queue holds.
        case tooLarge
    }

    /// Adds one frame of `length` bytes, without publishing: `write` fills the guest buffer it
    /// goes out from (its own head's, or the large buffer when it is longer than that), with
    /// `header` before it. The frame is written once, where the device reads it. See `flush`.
    public mutating func enqueue(length: Int, header: VirtioNetHeader, write: (UnsafeMutableRawBufferPointer) -> Void) -> EnqueueOutcome {
        guard length >= 0 else { return .tooLarge }
        if length <= queue.frameCapacity {
            guard queue.canAddChain, let head = queue.driver.nextFreeHead else { return .full }
            // SAFETY: head `head` is free, so the device reads none of its buffers until the
            // avail entry naming it is published (release store, after these writes).
            header.write(to: queue.headerPointer(head), length: queue.headerLength)
            write(UnsafeMutableRawBufferPointer(start: queue.framePointer(head), count: length))
            _ = queue.addChain(frameLength: length, deviceWritable: false)
        } else {
            guard length <= largeFrameCapacity else { return .tooLarge }
            guard largeHead == nil, queue.canAddChain, let head = queue.driver.nextFreeHead, let place = queue.largeFramePointers(head: head) else { return .full }
            // SAFETY: the large buffer is not in flight (largeHead is nil once the device used its
            // chain), and neither is head `head`; the device reads them after the publish.
            header.write(to: place.header, length: queue.headerLength)
            write(UnsafeMutableRawBufferPointer(start: place.frame, count: length))
            largeHead = queue.addLargeChain(frameLength: length)
        }
        queue.counters.frames += 1
        queue.counters.bytes += UInt64(length)
        return .added
    }

    /// Publishes what `enqueue` added, kicking when the device asks: once per batch.
    public mutating func flush() { queue.publishAndKick() }

    /// `enqueue`, and when the ring (or the large buffer) is the device's: publishes what was
    /// added, reaps, and waits for the device to use chains, up to `milliseconds` in all.
    /// Returns false (and counts a drop) when the frame is too large or the time passed.
    public mutating func enqueue(length: Int, header: VirtioNetHeader, mode: NotificationMode, milliseconds: Int32,
                                 write: (UnsafeMutableRawBufferPointer) -> Void) throws(VhostError) -> Bool {
        switch enqueue(length: length, header: header, write: write) {
        case .added: return true
        case .tooLarge: queue.counters.drops += 1; return false
        case .full: break
        }
        // The chains added so far must reach the device before it can use any.
        flush()
        let deadline = MonotonicClock.coarseMilliseconds() + Int(milliseconds)
        while true {
            try reap()
            switch enqueue(length: length, header: header, write: write) {
            case .added: return true
            case .tooLarge: queue.counters.drops += 1; return false
            case .full: break
            }
            let left = deadline - MonotonicClock.coarseMilliseconds()
            guard left > 0 else { queue.counters.drops += 1; return false }
            _ = queue.waitForUsed(mode: mode, milliseconds: Int32(clamping: left))
        }
    }

    /// Runs `body` once on the frame area of every TX buffer, for frames that stay in place (a
    /// benchmark's constant frame, a pool of pre-built packets): `fill` then only returns the
    /// length, and no frame is copied per transmit. Only while no chain is in flight, since the
    /// device reads the buffers of chains in flight.
    public mutating func fillEveryBuffer(_ body: (UnsafeMutableRawBufferPointer) -> Void) throws(VhostError) {
        guard queue.driver.inFlight == 0 else {
            throw .invalidState("\(queue.chainsInFlight) TX chains are in flight: their buffers belong to the device until it uses them")
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
    /// then refills most of the ring. Without EVENT_IDX the first used chain signals. Counted in
    /// chains, not descriptors: the device writes a used entry per chain, so 3/4 of the
    /// descriptors of two-descriptor chains would never be used, and each wait would run its
    /// whole time (seen: TX with the header in its own descriptor at 319 frames/s on 7.2).
    private mutating func waitForMostInFlight(mode: NotificationMode, milliseconds: Int32) -> Bool {
        let wanted = UInt16(clamping: max(1, queue.chainsInFlight * 3 / 4))
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
