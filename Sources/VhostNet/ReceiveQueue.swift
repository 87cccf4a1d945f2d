import Vhost
import Virtio

/// A received frame: the virtio-net header and the frame bytes, both valid only during the
/// callback (the buffers are posted again after it).
public struct ReceivedFrame {
    /// The header as the device wrote it, read when asked for: a handler that never looks at it
    /// (a counting benchmark) pays nothing for it.
    public var header: VirtioNetHeader { VirtioNetHeader(reading: headerBytes, length: headerLength) }
    /// The header's flags alone (NEEDS_CSUM, DATA_VALID), one byte read.
    public var headerFlags: VirtioNetHeader.Flags { VirtioNetHeader.Flags(rawValue: headerBytes.load(as: UInt8.self)) }
    /// The Ethernet frame, without the virtio-net header.
    public var frame: UnsafeRawBufferPointer
    let headerBytes: UnsafeRawPointer
    let headerLength: Int
}

/// The RX vring: frames from the device to this driver. It owns its buffers, header length and
/// the reassembly buffer for frames that span several buffers (MRG_RXBUF, IN_ORDER).
public struct ReceiveQueue: ~Copyable {
    public internal(set) var queue: NetQueue
    /// MRG_RXBUF negotiated: a frame may span `num_buffers` buffers.
    let mergeable: Bool
    private var reassembly: [UInt8] = []

    /// Every frame is one used entry of one chain (neither MRG_RXBUF nor IN_ORDER): the fast path.
    private let oneChainPerFrame: Bool
    /// Adaptive coalescing's current threshold (see `ReceiveCoalescing`).
    public private(set) var adaptiveThreshold: UInt16 = 1
    /// The last `receive` stopped at its limit with used frames left: the next one does not wait.
    private var backlog = false

    init(_ queue: consuming NetQueue, mergeable: Bool) {
        oneChainPerFrame = !mergeable && !queue.driver.inOrder
        self.queue = queue
        self.mergeable = mergeable
    }

    /// The ring driver, for inspection.
    public var driver: SplitVirtqueueDriver { _read { yield queue.driver } }
    public var counters: QueueCounters { queue.counters }
    /// Bytes of frame one chain holds.
    public var frameCapacity: Int { queue.frameCapacity }

    /// Fills every free descriptor with a device-writable buffer (virtio_net try_fill_recv),
    /// publishes, and kicks when the device asks.
    public mutating func refill() {
        queue.fillWithReceiveBuffers()
        queue.publishAndKick()
    }

    /// Receives up to `limit` frames, waiting up to `milliseconds` for the first one, and
    /// refills. With MRG_RXBUF a frame may span `num_buffers` buffers, and with IN_ORDER one used
    /// entry may stand for several; they are reassembled before `handler` sees the frame.
    /// A protocol violation by the device marks the queue broken and throws.
    /// With `coalescing` (interrupt mode) it sleeps until that many frames are used (adaptive:
    /// `adaptiveThreshold` many), or its delay (at most `milliseconds`) passed. After a call that
    /// stopped at `limit` with frames left, the next call takes them without waiting.
    public mutating func receive(limit: Int, milliseconds: Int32, mode: NotificationMode, coalescing: ReceiveCoalescing? = nil,
                                 handler: (ReceivedFrame) -> Void) throws(VhostError) -> Int {
        // The last call stopped at its limit with frames still used: take them now, as NAPI polls
        // again when it used its whole budget, rather than wait for a coalescing threshold
        // counted past frames that are already there.
        if !backlog {
            let wake = wakeCondition(coalescing)
            let outcome = queue.wait(mode: mode, milliseconds: milliseconds, wanted: wake.frames, maxDelayMilliseconds: wake.delayMilliseconds)
            if let coalescing, coalescing.adaptive, mode == .interrupt {
                adapt(to: outcome, wanted: wake.frames, upTo: coalescing.frames, delayPassed: milliseconds >= coalescing.maxDelayMilliseconds)
            }
        }
        return try receiveUsed(limit: limit, handler: handler)
    }

    /// What a sleep for RX work waits for: `coalescing`'s frames (adaptive: `adaptiveThreshold`),
    /// 1 without it, and the delay that bounds the sleep. A threshold of 1 is signalled by the
    /// first frame: no delay to bound, so an idle queue sleeps the caller's whole time instead of
    /// waking once per delay for nothing.
    func wakeCondition(_ coalescing: ReceiveCoalescing?) -> ReceiveSleep {
        let frames = coalescing.map { $0.adaptive ? adaptiveThreshold : $0.frames } ?? 1
        return ReceiveSleep(frames: frames, delayMilliseconds: frames > 1 ? coalescing?.maxDelayMilliseconds : nil, adapts: coalescing?.adaptive == true)
    }

    /// Arms RX interrupts for a sleep in the caller's own poller (`VirtioNetEndpoint`, which
    /// waits on every queue's call eventfd at once): for `coalescing`'s threshold, or for the
    /// next frame when `immediate`. Returns what the sleep waits for, or nil when that many frames
    /// are used already (which moves the adaptive threshold as a wake-up would).
    mutating func armSleep(coalescing: ReceiveCoalescing?, immediate: Bool) -> ReceiveSleep? {
        // The last receive stopped at its limit with frames left: take them first.
        guard !backlog else { return nil }
        let wake = immediate ? ReceiveSleep(frames: 1, delayMilliseconds: nil, adapts: false) : wakeCondition(coalescing)
        if queue.driver.enableInterrupts(after: wake.frames) {
            queue.driver.disableInterrupts()
            if wake.adapts, let coalescing { adapt(to: .ready, wanted: wake.frames, upTo: coalescing.frames, delayPassed: false) }
            return nil
        }
        return wake
    }

    /// Ends a sleep `armSleep` armed: interrupts off until the next one (an event index left
    /// ahead would signal a wake-up the loop does not need), the call eventfd cleared when it
    /// was `signalled`, and what the sleep brought moves the adaptive threshold. `delayPassed`:
    /// the poller timed out after the sleep's delay.
    mutating func endSleep(_ sleep: ReceiveSleep, signalled: Bool, delayPassed: Bool, coalescing: ReceiveCoalescing?) {
        queue.driver.disableInterrupts()
        if signalled { acknowledgeNotification() } else if delayPassed { queue.counters.timedOutSleeps += 1 }
        guard sleep.adapts, let coalescing else { return }
        adapt(to: signalled ? .signalled : .timedOut, wanted: sleep.frames, upTo: coalescing.frames, delayPassed: delayPassed)
    }

    /// Receives up to `limit` frames that are used already, without waiting, and refills.
    mutating func receiveUsed(limit: Int, handler: (ReceivedFrame) -> Void) throws(VhostError) -> Int {
        let headerLength = queue.headerLength
        let capacity = queue.frameCapacity
        // Counted here and added once: the counters are not touched per frame.
        var received = 0, bytes = 0, drops = 0
        defer {
            queue.counters.frames &+= UInt64(received)
            queue.counters.bytes &+= UInt64(bytes)
            queue.counters.drops &+= UInt64(drops)
        }
        while received < limit, let used = try queue.nextUsed() {
            let head = UInt16(truncatingIfNeeded: used.id)
            let length = Int(used.length)
            if _fastPath(oneChainPerFrame) {
                guard let frameBytes = deliver(head: head, length: length, headerBytes: queue.headerPointer(head), headerLength: headerLength,
                                               capacity: capacity, handler: handler) else { drops += 1; continue }
                bytes += frameBytes
                received += 1
                continue
            }
            guard let frameBytes = try receiveSpanning(head: head, length: length, headerLength: headerLength, capacity: capacity, handler: handler) else {
                drops += 1
                continue
            }
            bytes += frameBytes
            received += 1
        }
        refill()
        backlog = received == limit && queue.driver.usedPending > 0
        return received
    }

    /// Moves the adaptive threshold after a wait for `wanted` frames (see `ReceiveCoalescing`):
    /// becomes twice what was used when they were used within the delay (the stream is at least
    /// that fast). When the delay passed first, it goes to `limit` if the delay brought a stream
    /// (at least `ReceiveCoalescing.streamFrames`), so the next wake-up is the delay's or the
    /// limit's, falls to what the delay brought when that was a few frames (request and reply),
    /// and to 1 when it brought none. A wake-up with fewer used (vhost's first signal after set-up, a
    /// stale count) or a caller's timeout shorter than the delay says nothing about the rate,
    /// and moves nothing.
    ///
    /// Why a stream goes to the limit: vhost publishes RX used entries in steps of up to 65
    /// (net.c handle_rx flushes once done_idx passes VHOST_NET_BATCH), and its worker runs in
    /// bursts beside the sender, so what one delay brought is a poor estimate of the next. Set to
    /// it, the threshold was met early by the next burst, then climbed back by doublings, a
    /// wake-up each. With this rule (and the doubling from what was used, and no delay at 1),
    /// RX from pktgen under TCG took 0.0059 signals per frame against 0.0104 on 6.12, and the
    /// driver's CPU per frame fell from 0.35× the worker's to 0.22× (7.2: 0.28× to 0.16×;
    /// medians of 5 interleaved trials, docs/benchmarks.md).
    private mutating func adapt(to outcome: NetQueue.WaitOutcome, wanted: UInt16, upTo limit: UInt16, delayPassed: Bool) {
        let used = queue.driver.usedPending
        switch outcome {
        case .ready, .signalled:
            // What came beyond the threshold also says how fast the stream is.
            if used >= wanted { adaptiveThreshold = used > limit / 2 ? limit : used &* 2 }
        case .timedOut:
            guard delayPassed else { return }
            adaptiveThreshold = used >= ReceiveCoalescing.streamFrames ? limit : max(1, min(limit, used))
        }
    }

    /// Hands the frame in chain `head` to `handler` and returns its length, or nil when the
    /// device's length is not one to trust: it must hold a header and fit the buffer
    /// (virtio_net receive_buf: "rx error: len %u exceeds truesize").
    @inline(__always)
    private func deliver(head: UInt16, length: Int, headerBytes: UnsafeMutableRawPointer, headerLength: Int, capacity: Int,
                         handler: (ReceivedFrame) -> Void) -> Int? {
        guard length >= headerLength else { return nil }
        // Cannot wrap: length ≥ headerLength was just checked (no overflow check on the hot path).
        let frameLength = length &- headerLength
        guard frameLength <= capacity else { return nil }
        // SAFETY: the device wrote this buffer before it published used->idx (release), which
        // nextUsed read with an acquire load; the chain is ours again until refilled.
        handler(ReceivedFrame(frame: UnsafeRawBufferPointer(start: queue.framePointer(head), count: frameLength),
                              headerBytes: UnsafeRawPointer(headerBytes), headerLength: headerLength))
        return frameLength
    }

    /// A frame that may span several chains (MRG_RXBUF, IN_ORDER): reassembled, then handed to
    /// `handler`. Returns its length, or nil when it is dropped as malformed.
    private mutating func receiveSpanning(head: UInt16, length: Int, headerLength: Int, capacity: Int,
                                          handler: (ReceivedFrame) -> Void) throws(VhostError) -> Int? {
        let inOrderBatch = queue.driver.inOrder ? queue.driver.lastBatch : []
        guard length >= headerLength || inOrderBatch.count > 1 else { return nil }
        // SAFETY: as in receive: the device wrote the buffers before publishing used->idx.
        let headerBytes = queue.headerPointer(inOrderBatch.first ?? head)
        let buffers = mergeable ? Int(VirtioNetHeader(reading: headerBytes, length: headerLength).numBuffers) : 1
        if inOrderBatch.count <= 1 && buffers <= 1 {
            return deliver(head: head, length: length, headerBytes: headerBytes, headerLength: headerLength, capacity: capacity, handler: handler)
        }
        // A frame in several buffers: (head, bytes written) of each, in order.
        var pieces: [(UInt16, Int)] = []
        if inOrderBatch.count > 1 {
            // IN_ORDER: one used entry for the whole packet (net.c get_rx_bufs: id of the
            // last buffer, nheads = buffers); the buffers are filled in order, each to
            // capacity but the last, and the entry's length is what the last one holds.
            let full = queue.chainCapacity
            pieces = inOrderBatch.enumerated().map { ($1, $0 == inOrderBatch.count - 1 ? length : full) }
        } else {
            // MRG_RXBUF (net.c handle_rx): a frame's buffers are added with one
            // vhost_add_used_n, so they are all visible once the first is.
            pieces = [(head, length)]
            for _ in 1..<buffers {
                guard let more = try queue.nextUsed() else { break }
                pieces.append((UInt16(more.id), Int(more.length)))
            }
            guard pieces.count == buffers else { return nil }
        }
        reassembly.removeAll(keepingCapacity: true)
        for (h, n) in pieces { queue.appendChainBytes(head: h, length: n, to: &reassembly) }
        reassembly.removeFirst(min(headerLength, reassembly.count))
        queue.counters.mergedFrames += 1
        // The header stays where the device wrote it (the first buffer, not yet refilled).
        reassembly.withUnsafeBytes { handler(ReceivedFrame(frame: $0, headerBytes: UnsafeRawPointer(headerBytes), headerLength: headerLength)) }
        return reassembly.count
    }

    /// Prepares to sleep until RX work arrives: re-enables interrupts and re-checks the used
    /// ring (race-free). Returns false when work is already pending.
    mutating func armNotification(after count: UInt16 = 1) -> Bool { !queue.driver.enableInterrupts(after: count) }

    /// Clears the call eventfd after a wake-up, counting the call. The error eventfd is not
    /// read: the caller's poller watches it (a read(2) failing with EAGAIN per wake-up cost a
    /// system call for nothing).
    mutating func acknowledgeNotification() {
        if queue.call.consume() != nil { queue.counters.calls += 1 }
    }
}

/// What one sleep for RX work waits for (`VirtioNetQueuePair.armReceiveSleep`): `frames` used
/// frames, and at most `delayMilliseconds` when that is more than one (coalescing).
public struct ReceiveSleep: Sendable, Equatable {
    /// Used frames that end the sleep (the device signals once that many are used: EVENT_IDX).
    public var frames: UInt16
    /// The coalescing delay that bounds the sleep; nil when the first frame ends it.
    public var delayMilliseconds: Int32?
    /// What the sleep brings moves the adaptive threshold.
    var adapts: Bool
}

