import Synchronization

/// One buffer segment of a descriptor chain: a guest-physical address and a length.
public struct BufferSegment: Equatable, Sendable {
    public var address: UInt64
    public var length: UInt32
    /// Device-writable (`VRING_DESC_F_WRITE`): RX buffers; TX buffers are device-readable.
    public var deviceWritable: Bool
    public init(address: UInt64, length: UInt32, deviceWritable: Bool) {
        self.address = address; self.length = length; self.deviceWritable = deviceWritable
    }
}

/// The driver side of a split virtqueue: what the guest's virtio_ring.c does.
///
/// It owns the descriptor free list, fills descriptor chains, publishes `avail->idx` with a
/// release store and reaps `used->idx` with an acquire load. Index arithmetic is modulo 2^16
/// (`&+`/`&-`), and a ring slot is `index & (size - 1)`, so it survives wrapping past 65535.
/// The free list and chain bookkeeping live in driver-private shadows; device-shared memory
/// is never trusted for them (as virtio_ring.c's desc_extra).
public struct SplitVirtqueueDriver: ~Copyable, @unchecked Sendable {
    public let ring: SplitRing
    /// `VIRTIO_F_RING_EVENT_IDX` negotiated: use used_event/avail_event instead of the flags.
    public let eventIndex: Bool
    /// `VIRTIO_F_IN_ORDER` negotiated: the device uses chains in the order they were made
    /// available and may return a batch with one used entry, the id of its last chain
    /// (virtio 1.x §2.7.9); every chain up to that id is then done.
    public let inOrder: Bool
    private var inOrderHeads: [UInt16] = []
    private var inOrderStart = 0

    private var shadowNext: [UInt16]
    private var chainCount: [UInt16]
    private var freeHead: UInt16
    public private(set) var freeCount: Int
    /// The avail index the driver will publish next (`avail_idx_shadow`).
    public private(set) var availIndexShadow: UInt16 = 0
    /// Entries added since the last `publish()`.
    public private(set) var addedSincePublish: UInt16 = 0
    /// Chains completed implicitly by an IN_ORDER batch (no used entry of their own).
    public private(set) var completedInBatch: UInt64 = 0
    /// The next used index to reap (`last_used_idx`).
    public private(set) var lastUsedIndex: UInt16 = 0
    private var interruptsSuppressed = false

    public var queueSize: UInt16 { ring.queueSize }
    /// The head the next `add` will use, when a descriptor is free (lets a caller pick the
    /// buffer that belongs to that head before adding a one-descriptor chain).
    public var nextFreeHead: UInt16? { freeCount > 0 ? freeHead : nil }

    /// Chains given to the device and not yet reaped.
    public var inFlight: Int { Int(queueSize) - freeCount }

    /// Resets the ring memory and threads every descriptor onto the free list (LIFO, as
    /// virtio_ring.c; with IN_ORDER, sequential around the table).
    /// `startIndex` is the base handed to `VHOST_SET_VRING_BASE` (both indices start there).
    public init(ring: SplitRing, eventIndex: Bool, inOrder: Bool = false, startIndex: UInt16 = 0) {
        self.ring = ring
        self.eventIndex = eventIndex
        self.inOrder = inOrder
        let n = Int(ring.queueSize)
        ring.reset()
        // A circle: with IN_ORDER the driver must use descriptors in ring order, from 0 and
        // wrapping at the end of the table (virtio 1.x §2.7.5), so the free list never changes.
        shadowNext = (0..<n).map { UInt16(truncatingIfNeeded: ($0 + 1) % n) }
        chainCount = Array(repeating: 0, count: n)
        freeHead = 0
        freeCount = n
        availIndexShadow = startIndex
        lastUsedIndex = startIndex
        ring.availIndex.pointee.store(startIndex, ordering: .releasing)
        ring.usedIndex.pointee.store(startIndex, ordering: .releasing)
    }

    /// Places a chain of segments on the ring (not yet visible to the device: see `publish`).
    /// Readable segments must come before writable ones (virtio 1.x §2.7.4.2; vhost.c
    /// vhost_get_vq_desc rejects a readable descriptor after a writable one).
    /// Returns the head index, or nil when there are not enough free descriptors.
    public mutating func add<C: Collection>(_ segments: C) -> UInt16? where C.Element == BufferSegment {
        let count = segments.count
        precondition(count > 0, "a chain needs at least one segment")
        guard count <= freeCount else { return nil }
        let head = freeHead
        var index = head
        var sawWritable = false
        var remaining = count
        for segment in segments {
            precondition(!(sawWritable && !segment.deviceWritable), "readable segment after a writable one")
            sawWritable = sawWritable || segment.deviceWritable
            remaining -= 1
            var flags: DescriptorFlags = segment.deviceWritable ? [.write] : []
            let next = shadowNext[Int(index)]
            if remaining > 0 { flags.insert(.next) }
            ring.setDescriptor(index, Descriptor(address: segment.address, length: segment.length, flags: flags, next: remaining > 0 ? next : 0))
            if remaining > 0 { index = next }
        }
        freeHead = shadowNext[Int(index)]
        freeCount -= count
        chainCount[Int(head)] = UInt16(count)
        exposeHead(head)
        return head
    }

    /// Places a chain as one `VRING_DESC_F_INDIRECT` descriptor whose table lives in guest
    /// memory at `tableAddress` (guest-physical) / `table` (host). vhost.c: the table length
    /// must be a multiple of 16 and the table may not itself contain an indirect descriptor.
    public mutating func addIndirect<C: Collection>(_ segments: C, table: UnsafeMutableRawPointer, tableAddress: UInt64) -> UInt16?
    where C.Element == BufferSegment {
        let count = segments.count
        precondition(count > 0 && count <= Int(UInt16.max), "an indirect table holds 1...65535 descriptors")
        guard freeCount >= 1 else { return nil }
        for (i, segment) in segments.enumerated() {
            let last = i == count - 1
            var flags: DescriptorFlags = segment.deviceWritable ? [.write] : []
            if !last { flags.insert(.next) }
            let base = table + i * SplitRingLayout.descriptorSize
            base.storeBytes(of: segment.address.littleEndian, as: UInt64.self)
            base.storeBytes(of: segment.length.littleEndian, toByteOffset: 8, as: UInt32.self)
            base.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 12, as: UInt16.self)
            base.storeBytes(of: UInt16(last ? 0 : i + 1).littleEndian, toByteOffset: 14, as: UInt16.self)
        }
        let head = freeHead
        ring.setDescriptor(head, Descriptor(address: tableAddress, length: UInt32(count * SplitRingLayout.descriptorSize), flags: [.indirect], next: 0))
        freeHead = shadowNext[Int(head)]
        freeCount -= 1
        chainCount[Int(head)] = 1
        exposeHead(head)
        return head
    }

    private mutating func exposeHead(_ head: UInt16) {
        if inOrder { inOrderHeads.append(head) }
        ring.setAvailEntry(availIndexShadow, head: head)
        availIndexShadow &+= 1
        addedSincePublish &+= 1
    }

    /// Makes the added chains visible (`avail->idx` release store) and says whether the device
    /// wants a kick (virtio_ring.c virtqueue_kick_prepare_split).
    public mutating func publish() -> Bool {
        let old = availIndexShadow &- addedSincePublish
        let new = availIndexShadow
        addedSincePublish = 0
        ring.availIndex.pointee.store(new, ordering: .releasing)
        // The device's avail_event / NO_NOTIFY must be read after our index is visible.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            return vringNeedEvent(event: ring.availEvent.pointee.load(ordering: .acquiring), new: new, old: old)
        }
        return !ring.usedFlags.contains(.noNotify)
    }

    /// Whether the device has used entries that `nextUsed` has not returned yet.
    public func hasUsed() -> Bool {
        ring.usedIndex.pointee.load(ordering: .acquiring) != lastUsedIndex
    }

    /// Reaps one used entry: returns the chain's head and the length the device wrote, and
    /// puts the chain's descriptors back on the free list.
    ///
    /// With IN_ORDER one entry may stand for a batch: vhost.c vhost_add_used_in_order writes a
    /// single element (the id of the batch's last chain) in the batch's first slot and advances
    /// used->idx by the batch size. Every chain up to that id is then done; `lastBatch` lists
    /// them in order and the index advances by their count. On RX a batch is one packet and the
    /// length is the packet's total.
    public mutating func nextUsed() throws(RingViolation) -> UsedElement? {
        if let broken { throw broken }
        let deviceIndex = ring.usedIndex.pointee.load(ordering: .acquiring)
        guard deviceIndex != lastUsedIndex else { return nil }
        let element = ring.usedEntry(lastUsedIndex)
        let head = UInt16(truncatingIfNeeded: element.id)
        if Int(element.id) >= Int(queueSize) || chainCount[Int(head)] == 0 {
            let violation = RingViolation(reason: "the device returned used id \(element.id) at used index \(lastUsedIndex), which is not in flight",
                                          ringState: ringState(deviceIndex: deviceIndex))
            broken = violation
            throw violation
        }
        if inOrder {
            lastBatch.removeAll(keepingCapacity: true)
            while true {
                guard inOrderStart < inOrderHeads.count else {
                    let violation = RingViolation(reason: "IN_ORDER: used id \(head) is not among the chains in flight",
                                                  ringState: ringState(deviceIndex: deviceIndex))
                    broken = violation
                    throw violation
                }
                let done = inOrderHeads[inOrderStart]
                inOrderStart += 1
                lastBatch.append(done)
                freeChain(done)
                if done == head { break }
            }
            if lastBatch.count > 1 { completedInBatch &+= UInt64(lastBatch.count - 1) }
            if inOrderStart > 1024 && inOrderStart * 2 > inOrderHeads.count {
                inOrderHeads.removeFirst(inOrderStart)
                inOrderStart = 0
            }
            lastUsedIndex &+= UInt16(lastBatch.count)
        } else {
            lastUsedIndex &+= 1
            freeChain(head)
        }
        if eventIndex && !interruptsSuppressed {
            // Keep asking for an interrupt at the next entry (virtqueue_get_buf_ctx_split).
            ring.usedEvent.pointee.store(lastUsedIndex, ordering: .releasing)
        }
        return element
    }

    /// A one-line dump of both indices, what is in flight and the used entries near the
    /// driver's position, for the message when the device breaks the protocol.
    func ringState(deviceIndex: UInt16) -> String {
        let pending = inOrder ? Array(inOrderHeads[inOrderStart...].prefix(12)) : []
        let entries = (0..<min(8, Int(queueSize))).map { i -> String in
            let e = ring.usedEntry(lastUsedIndex &+ UInt16(i))
            return "\(lastUsedIndex &+ UInt16(i)):\(e.id)/\(e.length)"
        }
        return "used->idx \(deviceIndex), avail idx \(availIndexShadow), in flight \(inFlight), next in order \(pending), used entries \(entries)"
    }

    /// Set when the device broke the protocol; every later `nextUsed` throws it again.
    public private(set) var broken: RingViolation?

    /// With IN_ORDER: the heads the last `nextUsed` completed, oldest first.
    public private(set) var lastBatch: [UInt16] = []

    private mutating func freeChain(_ head: UInt16) {
        let count = Int(chainCount[Int(head)])
        chainCount[Int(head)] = 0
        if inOrder {
            // Chains complete oldest first, so the free part of the circle stays contiguous
            // behind `freeHead`: nothing to relink.
            freeCount += count
            return
        }
        var tail = head
        for _ in 1..<max(count, 1) { tail = shadowNext[Int(tail)] }
        shadowNext[Int(tail)] = freeHead
        freeHead = head
        freeCount += count
    }

    /// Asks the device not to interrupt (virtqueue_disable_cb_split).
    public mutating func disableInterrupts() {
        interruptsSuppressed = true
        if eventIndex {
            // An event index the device cannot cross before we re-enable.
            ring.usedEvent.pointee.store(lastUsedIndex &+ queueSize, ordering: .releasing)
        } else {
            ring.availFlags = [.noInterrupt]
        }
    }

    /// Re-enables interrupts and returns true when used entries arrived meanwhile, in which
    /// case the caller must reap before sleeping (virtqueue_enable_cb_prepare + virtqueue_poll:
    /// the re-check after a full barrier closes the race with the device).
    public mutating func enableInterrupts() -> Bool {
        interruptsSuppressed = false
        if eventIndex {
            ring.usedEvent.pointee.store(lastUsedIndex, ordering: .releasing)
        } else {
            ring.availFlags = []
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return hasUsed()
    }
}

/// The device broke the virtio protocol (virtio_ring.c BAD_RING): the queue is unusable until reset.
public struct RingViolation: Error, Equatable, CustomStringConvertible, Sendable {
    public var reason: String
    public var ringState: String
    public init(reason: String, ringState: String) { self.reason = reason; self.ringState = ringState }
    public var description: String { "\(reason); \(ringState)" }
}
