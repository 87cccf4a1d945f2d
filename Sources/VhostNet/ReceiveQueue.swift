import Vhost
import Virtio

/// A received frame: the virtio-net header and the frame bytes (valid only during the callback).
public struct ReceivedFrame {
    public var header: VirtioNetHeader
    public var frame: UnsafeRawBufferPointer
}

/// The RX vring: frames from the device to this driver. It owns its buffers, header length and
/// the reassembly buffer for frames that span several buffers (MRG_RXBUF, IN_ORDER).
public struct ReceiveQueue: ~Copyable {
    public internal(set) var queue: NetQueue
    /// MRG_RXBUF negotiated: a frame may span `num_buffers` buffers.
    let mergeable: Bool
    private var reassembly: [UInt8] = []

    init(_ queue: consuming NetQueue, mergeable: Bool) {
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
        let capacity = queue.frameCapacity
        while queue.canAddChain, queue.addChain(frameLength: capacity, deviceWritable: true) != nil {}
        queue.publishAndKick()
    }

    /// Receives up to `limit` frames, waiting up to `milliseconds` for the first one, and
    /// refills. With MRG_RXBUF a frame may span `num_buffers` buffers, and with IN_ORDER one used
    /// entry may stand for several; they are reassembled before `handler` sees the frame.
    /// A protocol violation by the device marks the queue broken and throws.
    /// With `coalescing` (interrupt mode) it sleeps until that many frames are used, or its
    /// delay (at most `milliseconds`) passed.
    public mutating func receive(limit: Int, milliseconds: Int32, mode: NotificationMode, coalescing: ReceiveCoalescing? = nil,
                                 handler: (ReceivedFrame) -> Void) throws(VhostError) -> Int {
        var received = 0
        _ = queue.waitForUsed(mode: mode, milliseconds: milliseconds, wanted: coalescing?.frames ?? 1,
                              maxDelayMilliseconds: coalescing?.maxDelayMilliseconds)
        let headerLength = queue.headerLength
        while received < limit, let used = try queue.nextUsed() {
            let head = UInt16(used.id)
            let length = Int(used.length)
            let capacity = queue.frameCapacity
            let inOrderBatch = queue.driver.inOrder ? queue.driver.lastBatch : []
            guard length >= headerLength || inOrderBatch.count > 1 else {
                queue.counters.drops += 1
                continue
            }
            // SAFETY: the device wrote these buffers before it published used->idx (release),
            // which nextUsed read with an acquire load; the chains are ours again until refilled.
            let header = VirtioNetHeader(reading: queue.headerPointer(inOrderBatch.first ?? head), length: headerLength)
            let buffers = mergeable ? Int(header.numBuffers) : 1
            if inOrderBatch.count <= 1 && buffers <= 1 {
                guard length - headerLength <= capacity else { queue.counters.drops += 1; continue }
                let frame = UnsafeRawBufferPointer(start: queue.framePointer(head), count: length - headerLength)
                handler(ReceivedFrame(header: header, frame: frame))
                queue.counters.bytes += UInt64(frame.count)
            } else {
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
                    guard pieces.count == buffers else { queue.counters.drops += 1; continue }
                }
                reassembly.removeAll(keepingCapacity: true)
                for (h, n) in pieces { queue.appendChainBytes(head: h, length: n, to: &reassembly) }
                reassembly.removeFirst(min(headerLength, reassembly.count))
                queue.counters.mergedFrames += 1
                reassembly.withUnsafeBytes { handler(ReceivedFrame(header: header, frame: $0)) }
                queue.counters.bytes += UInt64(reassembly.count)
            }
            queue.counters.frames += 1
            received += 1
        }
        refill()
        return received
    }

    /// Prepares to sleep until RX work arrives: re-enables interrupts and re-checks the used
    /// ring (race-free). Returns false when work is already pending.
    mutating func armNotification(after count: UInt16 = 1) -> Bool { !queue.driver.enableInterrupts(after: count) }

    /// Clears the call eventfd after a wake-up, counting the call.
    mutating func acknowledgeNotification() {
        if queue.call.consume() != nil { queue.counters.calls += 1 }
        queue.collectRingErrors()
    }
}
