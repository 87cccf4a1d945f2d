import Synchronization

/// One buffer segment of a descriptor chain: a guest-physical address and a length.
public struct BufferSegment: Equatable, Sendable {
    /// Guest-physical address of the buffer.
    public var address: UInt64
    /// Length of the buffer in bytes.
    public var length: UInt32
    /// Device-writable (`VRING_DESC_F_WRITE`): RX buffers; TX buffers are device-readable.
    public var deviceWritable: Bool
    /// A segment with the given fields.
    public init(address: UInt64, length: UInt32, deviceWritable: Bool) {
        self.address = address; self.length = length; self.deviceWritable = deviceWritable
    }
}

/// The device broke the virtio protocol (virtio_ring.c BAD_RING): the queue is unusable until reset.
public struct RingViolation: Error, Equatable, CustomStringConvertible, Sendable {
    /// What the device did, e.g. "used id 9 at used index 3 is not in flight".
    public var reason: String
    /// A one-line dump of both indices, what is in flight and the used entries near the
    /// driver's position, taken when the violation was found.
    public var ringState: String
    /// A violation with the given reason and ring dump.
    public init(reason: String, ringState: String) {
        self.reason = reason
        self.ringState = ringState
    }
    /// `reason; ringState`.
    public var description: String { "\(reason); \(ringState)" }
}

/// The driver side of a split virtqueue: what the guest's virtio_ring.c does.
///
/// It owns the descriptor free list, fills descriptor chains, publishes `avail->idx` with a
/// release store and reaps `used->idx` with an acquire load. Index arithmetic is modulo 2^16
/// (`&+`/`&-`), and a ring slot is `index & (size - 1)`, so it survives wrapping past 65535.
/// The free list and chain bookkeeping live in driver-private shadows; device-shared memory
/// is never trusted for them (as virtio_ring.c's desc_extra/desc_state).
///
/// The type is `~Copyable`: a ring has exactly one free list, and a copy would be a second
/// driver handing out the same descriptors.
///
/// Nothing the device writes can crash the driver: a used entry that breaks the protocol
/// makes `nextUsed()` throw a `RingViolation` and leaves the driver `broken` (virtio_ring.c
/// BAD_RING sets vq->broken). Only the caller's own mistakes (an empty chain, a readable
/// segment after a writable one) are preconditions.
public struct SplitVirtqueueDriver: ~Copyable, Sendable {
    /// The ring memory the driver writes (`package`: see `SplitRing`).
    @usableFromInline package private(set) var ring: SplitRing
    /// `VIRTIO_F_RING_EVENT_IDX` negotiated: use used_event/avail_event instead of the flags.
    public let eventIndex: Bool
    /// `VIRTIO_F_IN_ORDER` negotiated: the device uses chains in the order they were made
    /// available and may return a batch with one used entry, the id of its last chain
    /// (virtio 1.x §2.7.9); every chain up to that id is then done.
    public let inOrder: Bool
    @usableFromInline var inOrderHeads: [UInt16] = []
    private var inOrderStart = 0

    @usableFromInline let chains: ChainTable
    @usableFromInline var freeHead: UInt16
    /// Descriptors on the free list.
    @usableFromInline var _freeCount: Int
    public var freeCount: Int { _freeCount }
    /// The avail index the driver will publish next (`avail_idx_shadow`).
    @usableFromInline var _availIndexShadow: UInt16 = 0
    public var availIndexShadow: UInt16 { _availIndexShadow }
    /// Entries added since the last `publish()`.
    public var addedSincePublish: UInt16 { _availIndexShadow &- _publishedAvailIndex }
    /// The avail index the last `publish()` stored: adding a chain moves only the shadow (one
    /// store a frame, and no 32-bit load over two 16-bit stores, which stalls store forwarding).
    @usableFromInline var _publishedAvailIndex: UInt16 = 0
    /// The avail index the device has been given (`avail->idx` as the last `publish()` stored it).
    public var publishedAvailIndex: UInt16 { _publishedAvailIndex }
    /// Chains completed implicitly by an IN_ORDER batch (no used entry of their own).
    public private(set) var completedInBatch: UInt64 = 0
    /// The next used index to reap (`last_used_idx`).
    @usableFromInline var _lastUsedIndex: UInt16 = 0
    public var lastUsedIndex: UInt16 { _lastUsedIndex }
    /// Set when the device broke the protocol (virtio_ring.c `vq->broken`); from then on every
    /// `nextUsed()` throws it. Only a new driver over a reset ring clears it.
    @usableFromInline var _broken: RingViolation?
    public var broken: RingViolation? { _broken }
    /// `broken != nil`, as one byte for the hot path.
    public internal(set) var isBroken = false {
        didSet { reapsSlowly = inOrder || isBroken }
    }
    @usableFromInline var interruptsSuppressed = false {
        didSet { requestsEveryInterrupt = eventIndex && !interruptsSuppressed }
    }
    /// `inOrder || isBroken`: the one byte `nextUsed` tests before its fast path.
    @usableFromInline var reapsSlowly: Bool
    /// `eventIndex && !interruptsSuppressed`: whether each reap moves used_event on.
    @usableFromInline var requestsEveryInterrupt: Bool

    /// Entries in the ring.
    public var queueSize: UInt16 { ring.queueSize }

    /// Goes on over a byte-for-byte copy of its ring at other host addresses, as when
    /// live migration moves guest memory: every index, free list and chain stays as it was.
    /// The caller copied the ring memory first; the device must not be using either ring.
    package mutating func move(to ring: SplitRing) {
        precondition(ring.queueSize == self.ring.queueSize, "a moved ring keeps its size")
        self.ring = ring
    }
    /// The head the next `add` will use, when a descriptor is free (lets a caller pick the
    /// buffer that belongs to that head before adding a one-descriptor chain).
    public var nextFreeHead: UInt16? { _freeCount > 0 ? freeHead : nil }

    /// Descriptors given to the device and not yet reaped.
    public var inFlight: Int { Int(queueSize) - _freeCount }

    /// A driver over the three parts of a split ring laid out as `SplitRingLayout` says
    /// (`offsets(queueSize:)` for one block), in memory the caller owns, shares with the device,
    /// and keeps mapped for as long as the driver and the device use it. Resets that memory and
    /// threads every descriptor onto the free list, as `init(ring:…)` does.
    public init(queueSize: UInt16, descriptors: UnsafeMutableRawPointer, avail: UnsafeMutableRawPointer, used: UnsafeMutableRawPointer,
                eventIndex: Bool, inOrder: Bool = false, startIndex: UInt16 = 0) {
        self.init(ring: SplitRing(queueSize: queueSize, descriptors: descriptors, avail: avail, used: used),
                  eventIndex: eventIndex, inOrder: inOrder, startIndex: startIndex)
    }

    /// Resets the ring memory and threads every descriptor onto the free list (LIFO, as
    /// virtio_ring.c; with IN_ORDER, sequential around the table).
    /// `startIndex` is the base handed to `VHOST_SET_VRING_BASE` (both indices start there).
    package init(ring: SplitRing, eventIndex: Bool, inOrder: Bool = false, startIndex: UInt16 = 0) {
        self.ring = ring
        self.eventIndex = eventIndex
        self.inOrder = inOrder
        reapsSlowly = inOrder
        requestsEveryInterrupt = eventIndex
        let n = Int(ring.queueSize)
        ring.reset()
        // A circle: with IN_ORDER the driver must use descriptors in ring order, wrapping at the
        // end of the table (virtio 1.x §2.7.5), so the free list never changes. 7.x vhost.c
        // vhost_get_vq_desc_n takes the IN_ORDER head from vq->next_avail_head, which
        // VHOST_SET_VRING_BASE sets to the base, so the circle starts at `startIndex & (n - 1)`
        // (descriptor 0 for a zero base, as the spec says).
        chains = ChainTable(queueSize: n)
        freeHead = inOrder ? startIndex & (ring.queueSize &- 1) : 0
        _freeCount = n
        _availIndexShadow = startIndex
        _publishedAvailIndex = startIndex
        _lastUsedIndex = startIndex
        // SAFETY: the indices live in the ring's memory, which its owner keeps alive; nothing
        // runs on the other side before the device is attached to this reset ring.
        ring.availIndex.pointee.store(startIndex, ordering: .releasing)
        ring.usedIndex.pointee.store(startIndex, ordering: .releasing)
    }

    /// Places a chain of segments on the ring (not yet visible to the device: see `publish`).
    /// Readable segments must come before writable ones (virtio 1.x §2.7.4.2; vhost.c
    /// vhost_get_vq_desc rejects a readable descriptor after a writable one).
    /// Returns the head index, or nil when there are not enough free descriptors.
    ///
    /// Inlinable so that it never runs unspecialized across modules: a generic call per frame
    /// costs a metadata lookup each time (Benchmarks/ring-vs-c measured 14× the instructions
    /// of a C driver before this). The work is done by the non-generic `add(contiguous:)`.
    @inlinable
    public mutating func add<C: Collection>(_ segments: C) -> UInt16? where C.Element == BufferSegment {
        if segments.count == 1, let only = segments.first { return add(only) }
        if let head = segments.withContiguousStorageIfAvailable({ add(contiguous: $0) }) { return head }
        return ContiguousArray(segments).withUnsafeBufferPointer { add(contiguous: $0) }
    }

    /// Places a one-descriptor chain on the ring, as `add(_:)` does for a collection of one:
    /// the hot path of a frame in one buffer (TX with the header inline, every RX buffer).
    @inlinable @inline(__always)
    public mutating func add(_ segment: BufferSegment) -> UInt16? {
        guard _freeCount >= 1 else { return nil }
        let head = freeHead
        // SAFETY: `head` is on the driver's free list, so the device does not own it; it sees
        // the write only after publish()'s release store of avail->idx.
        ring.setDescriptor(head, Descriptor(address: segment.address, length: segment.length, flags: segment.deviceWritable ? [.write] : [], next: 0))
        freeHead = chains.next(head)
        _freeCount -= 1
        chains.setCount(head, 1)
        exposeHead(head)
        return head
    }

    /// `add(_:)` over segments in contiguous memory.
    @usableFromInline
    mutating func add(contiguous segments: UnsafeBufferPointer<BufferSegment>) -> UInt16? {
        let count = segments.count
        precondition(count > 0, "a chain needs at least one segment")
        guard count <= _freeCount else { return nil }
        let head = freeHead
        var index = head
        var sawWritable = false
        var remaining = count
        for segment in segments {
            precondition(!(sawWritable && !segment.deviceWritable), "readable segment after a writable one")
            sawWritable = sawWritable || segment.deviceWritable
            remaining -= 1
            var flags: DescriptorFlags = segment.deviceWritable ? [.write] : []
            let next = chains.next(index)
            if remaining > 0 { flags.insert(.next) }
            // SAFETY: `index` is on the driver's free list, so the device does not own it; it
            // sees the write only after publish()'s release store of avail->idx.
            ring.setDescriptor(index, Descriptor(address: segment.address, length: segment.length, flags: flags, next: remaining > 0 ? next : 0))
            if remaining > 0 { index = next }
        }
        freeHead = chains.next(index)
        _freeCount -= count
        chains.setCount(head, UInt16(count))
        exposeHead(head)
        return head
    }

    /// Places a chain as one `VRING_DESC_F_INDIRECT` descriptor whose table lives in guest
    /// memory at `tableAddress` (guest-physical) / `table` (host), which must hold
    /// `segments.count` × 16 bytes and stay untouched until the chain is reaped. vhost.c
    /// get_indirect: the table length must be a multiple of 16 and the table may not itself
    /// contain an indirect descriptor; it is read in order.
    @inlinable
    public mutating func addIndirect<C: Collection>(_ segments: C, table: UnsafeMutableRawPointer, tableAddress: UInt64) -> UInt16?
    where C.Element == BufferSegment {
        if let head = segments.withContiguousStorageIfAvailable({ addIndirect(contiguous: $0, table: table, tableAddress: tableAddress) }) {
            return head
        }
        return ContiguousArray(segments).withUnsafeBufferPointer { addIndirect(contiguous: $0, table: table, tableAddress: tableAddress) }
    }

    /// `addIndirect(_:table:tableAddress:)` over segments in contiguous memory.
    @usableFromInline
    mutating func addIndirect(contiguous segments: UnsafeBufferPointer<BufferSegment>, table: UnsafeMutableRawPointer, tableAddress: UInt64) -> UInt16? {
        let count = segments.count
        precondition(count > 0 && count <= Int(UInt16.max), "an indirect table holds 1...65535 descriptors")
        guard _freeCount >= 1 else { return nil }
        var sawWritable = false
        for (i, segment) in segments.enumerated() {
            precondition(!(sawWritable && !segment.deviceWritable), "readable segment after a writable one")
            sawWritable = sawWritable || segment.deviceWritable
            let last = i == count - 1
            var flags: DescriptorFlags = segment.deviceWritable ? [.write] : []
            if !last { flags.insert(.next) }
            // SAFETY: the caller gives `table` with room for `count` entries, owned by this
            // chain; the device reads it only after the release store of avail->idx.
            let base = table + i * SplitRingLayout.descriptorSize
            base.storeBytes(of: segment.address.littleEndian, as: UInt64.self)
            base.storeBytes(of: segment.length.littleEndian, toByteOffset: 8, as: UInt32.self)
            base.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 12, as: UInt16.self)
            base.storeBytes(of: UInt16(last ? 0 : i + 1).littleEndian, toByteOffset: 14, as: UInt16.self)
        }
        let head = freeHead
        // SAFETY: `head` is free (as in `add`).
        ring.setDescriptor(head, Descriptor(address: tableAddress, length: UInt32(count * SplitRingLayout.descriptorSize), flags: [.indirect], next: 0))
        freeHead = chains.next(head)
        _freeCount -= 1
        chains.setCount(head, 1)
        exposeHead(head)
        return head
    }

    @inlinable @inline(__always)
    mutating func exposeHead(_ head: UInt16) {
        if inOrder { inOrderHeads.append(head) }
        // SAFETY: slot availIndexShadow lies beyond the published avail->idx, so the device does
        // not use it until publish()'s release store.
        ring.setAvailEntry(_availIndexShadow, head: head)
        _availIndexShadow &+= 1
    }

    /// Makes the added chains visible (`avail->idx` release store) and says whether the device
    /// wants a kick (virtio_ring.c virtqueue_kick_prepare_split).
    @inlinable
    public mutating func publish() -> Bool {
        let old = _publishedAvailIndex
        let new = _availIndexShadow
        _publishedAvailIndex = new
        // SAFETY: release: the descriptors and avail slots written above are visible to a device
        // that loads this index with acquire.
        ring.availIndex.pointee.store(new, ordering: .releasing)
        // The device's avail_event / NO_NOTIFY must be read after our index is visible.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            // SAFETY: avail_event is an Atomic<UInt16> inside the used ring; any value is valid.
            return vringNeedEvent(event: ring.availEvent.pointee.load(ordering: .acquiring), new: new, old: old)
        }
        // SAFETY: used->flags is a hint; any value is valid.
        return !ring.usedFlags.contains(.noNotify)
    }

    /// Whether `nextUsed` has something to say: used entries it has not returned yet, or, once
    /// the driver is `broken`, the violation (so a caller polling this learns of it).
    @inlinable
    public func hasUsed() -> Bool {
        if isBroken { return true }
        // SAFETY: acquire pairs with the device's release store of used->idx.
        return ring.usedIndex.pointee.load(ordering: .acquiring) != _lastUsedIndex
    }

    /// Reaps one used entry: returns the chain's head and the length the device wrote, and
    /// puts the chain's descriptors back on the free list; nil when nothing is used.
    ///
    /// With IN_ORDER one entry may stand for a batch: vhost.c vhost_add_used_in_order writes a
    /// single element (the id of the batch's last chain) in the batch's first slot and advances
    /// used->idx by the batch size. Every chain up to that id is then done; `lastBatch` lists
    /// them in order and the index advances by their count. On RX a batch is one packet and the
    /// length is what its last buffer holds.
    ///
    /// Throws `RingViolation` (and the driver stays `broken`, as virtio_ring.c's BAD_RING) when
    /// the device returns an id ≥ the queue size ("id %u out of range"), an id that is not in
    /// flight ("id %u is not a head!"), an id of a chain never published, with IN_ORDER an id
    /// not among the chains in flight or a batch longer than used->idx moved, or when used->idx
    /// runs ahead of the chains made available. The length is the device's word: callers must
    /// check it against the buffer (virtio_net does: "rx error: len %u exceeds truesize").
    @inlinable @inline(__always)
    public mutating func nextUsed() throws(RingViolation) -> UsedElement? {
        // One byte for both ways off the fast path: a broken driver, and IN_ORDER's batches.
        if _slowPath(reapsSlowly) { return try nextUsedSlowly() }
        // SAFETY: acquire pairs with the device's release store: every used entry below
        // `deviceIndex` was written before it.
        let deviceIndex = ring.usedIndex.pointee.load(ordering: .acquiring)
        guard deviceIndex != _lastUsedIndex else { return nil }
        // SAFETY: a slot of the used ring; it was published (so the read is ordered by the
        // acquire above) unless used->idx ran ahead, which the check below refuses.
        let element = ring.usedEntry(_lastUsedIndex)
        let head = UInt16(truncatingIfNeeded: element.id)
        // The rules, checked at once on the hot path; which one broke is found out in the cold one.
        guard _fastPath(deviceIndex &- _lastUsedIndex <= _publishedAvailIndex &- _lastUsedIndex
                        && element.id < UInt32(queueSize) && chains.count(head) != 0
                        && (_availIndexShadow == _publishedAvailIndex || !isUnpublished(head))) else {
            throw violation(deviceIndex: deviceIndex, element: element)
        }
        _lastUsedIndex &+= 1
        freeChain(head)
        requestNextInterrupt()
        return element
    }

    /// The used entry at `lastUsedIndex` broke a rule: names the first rule it broke, as
    /// `nextUsed` checks them, and leaves the driver broken.
    @usableFromInline @inline(never)
    mutating func violation(deviceIndex: UInt16, element: UsedElement) -> RingViolation {
        let outstanding = deviceIndex &- _lastUsedIndex
        let given = _publishedAvailIndex &- _lastUsedIndex
        if outstanding > given {
            return fail("used->idx \(deviceIndex) is \(outstanding) entries past used index \(_lastUsedIndex), but only \(given) chains are available to the device", deviceIndex)
        }
        if element.id >= UInt32(queueSize) {
            return fail("used id \(element.id) at used index \(_lastUsedIndex) is out of range (queue size \(queueSize))", deviceIndex)
        }
        if chains.count(UInt16(element.id)) == 0 {
            return fail("used id \(element.id) at used index \(_lastUsedIndex) is not in flight", deviceIndex)
        }
        return fail("used id \(element.id) at used index \(_lastUsedIndex) was added but never published", deviceIndex)
    }

    /// `nextUsed` off its fast path: throws once the driver is broken, else reaps with IN_ORDER.
    @usableFromInline @inline(never)
    mutating func nextUsedSlowly() throws(RingViolation) -> UsedElement? {
        if isBroken { throw _broken! }
        // SAFETY: as in nextUsed.
        let deviceIndex = ring.usedIndex.pointee.load(ordering: .acquiring)
        guard deviceIndex != _lastUsedIndex else { return nil }
        return try nextUsedInOrder(deviceIndex)
    }

    /// `nextUsed` with IN_ORDER: one entry may complete a batch (see `lastBatch`).
    mutating func nextUsedInOrder(_ deviceIndex: UInt16) throws(RingViolation) -> UsedElement {
        let outstanding = deviceIndex &- _lastUsedIndex
        let given = _publishedAvailIndex &- _lastUsedIndex
        if outstanding > given {
            throw fail("used->idx \(deviceIndex) is \(outstanding) entries past used index \(_lastUsedIndex), but only \(given) chains are available to the device", deviceIndex)
        }
        // SAFETY: lastUsedIndex is below deviceIndex (checked above), so the entry is published.
        let element = ring.usedEntry(_lastUsedIndex)
        guard element.id < UInt32(queueSize) else {
            throw fail("used id \(element.id) at used index \(_lastUsedIndex) is out of range (queue size \(queueSize))", deviceIndex)
        }
        let head = UInt16(element.id)
        guard let position = inOrderHeads[inOrderStart...].firstIndex(of: head) else {
            throw fail("IN_ORDER: used id \(head) at used index \(_lastUsedIndex) is not among the chains in flight", deviceIndex)
        }
        let batch = position - inOrderStart + 1
        guard batch <= Int(outstanding) else {
            throw fail("IN_ORDER: used id \(head) at used index \(_lastUsedIndex) completes \(batch) chains, but used->idx is only \(outstanding) ahead", deviceIndex)
        }
        lastBatch.removeAll(keepingCapacity: true)
        for done in inOrderHeads[inOrderStart...position] {
            lastBatch.append(done)
            freeChainInOrder(done)
        }
        inOrderStart = position + 1
        if lastBatch.count > 1 { completedInBatch &+= UInt64(lastBatch.count - 1) }
        if inOrderStart > 1024 && inOrderStart * 2 > inOrderHeads.count {
            inOrderHeads.removeFirst(inOrderStart)
            inOrderStart = 0
        }
        _lastUsedIndex &+= UInt16(batch)
        requestNextInterrupt()
        return element
    }

    /// With EVENT_IDX, keeps asking for an interrupt at the next entry (virtqueue_get_buf_ctx_split).
    @inlinable @inline(__always)
    func requestNextInterrupt() {
        if requestsEveryInterrupt {
            // SAFETY: used_event is an Atomic<UInt16> the driver owns; release orders it after
            // our reads of the used entries.
            ring.usedEvent.pointee.store(_lastUsedIndex, ordering: .releasing)
        }
    }

    /// Records the violation and returns it: the driver is broken from now on.
    private mutating func fail(_ reason: String, _ deviceIndex: UInt16) -> RingViolation {
        let violation = RingViolation(reason: reason, ringState: ringState(deviceIndex: deviceIndex))
        _broken = violation
        isBroken = true
        return violation
    }

    /// A one-line dump of both indices, what is in flight and the used entries near the
    /// driver's position, for the message when the device breaks the protocol.
    func ringState(deviceIndex: UInt16) -> String {
        let pending = inOrder ? Array(inOrderHeads[inOrderStart...].prefix(12)) : []
        let entries = (0..<min(8, Int(queueSize))).map { i -> String in
            // SAFETY: a masked slot inside the used ring; read only for the dump.
            let e = ring.usedEntry(_lastUsedIndex &+ UInt16(i))
            return "\(_lastUsedIndex &+ UInt16(i)):\(e.id)/\(e.length)"
        }
        return "used->idx \(deviceIndex), avail idx \(_availIndexShadow), in flight \(inFlight), next in order \(pending), used entries \(entries)"
    }

    /// With IN_ORDER: the heads the last `nextUsed` completed, oldest first.
    public private(set) var lastBatch: [UInt16] = []

    /// Whether `head` was added since the last `publish()`: its avail slot lies in
    /// [published avail->idx, availIndexShadow), which only the driver writes. Out of line:
    /// `nextUsed` calls it only when chains were added after the last publish.
    @usableFromInline @inline(never)
    func isUnpublished(_ head: UInt16) -> Bool {
        for offset in 0..<addedSincePublish where ring.availEntry(_publishedAvailIndex &+ offset) == head { return true }
        return false
    }

    /// Returns an IN_ORDER chain: chains complete oldest first, so the free part of the circle
    /// stays contiguous behind `freeHead` and there is nothing to relink.
    mutating func freeChainInOrder(_ head: UInt16) {
        _freeCount &+= Int(chains.count(head))
        chains.setCount(head, 0)
    }

    /// Puts a chain's descriptors back on the free list, head first (not IN_ORDER: `nextUsed`'s
    /// fast path, which knows it).
    @inlinable @inline(__always)
    mutating func freeChain(_ head: UInt16) {
        let count = Int(chains.count(head))
        chains.setCount(head, 0)
        var tail = head
        for _ in 1..<max(count, 1) { tail = chains.next(tail) }
        chains.setNext(tail, freeHead)
        freeHead = head
        _freeCount &+= count
    }

    /// Asks the device not to interrupt (virtqueue_disable_cb_split).
    public mutating func disableInterrupts() {
        interruptsSuppressed = true
        if eventIndex {
            // An event index the device cannot cross before we re-enable.
            // SAFETY: used_event is an Atomic<UInt16> the driver owns.
            ring.usedEvent.pointee.store(_lastUsedIndex &+ queueSize, ordering: .releasing)
        } else {
            // SAFETY: avail->flags is a hint the driver owns.
            ring.availFlags = [.noInterrupt]
        }
    }

    /// Re-enables interrupts and returns true when used entries arrived meanwhile, in which
    /// case the caller must reap before sleeping (virtqueue_enable_cb_prepare + virtqueue_poll:
    /// the re-check after a full barrier closes the race with the device). Also true once the
    /// driver is `broken`, so the caller reaps and sees the violation.
    public mutating func enableInterrupts() -> Bool { enableInterrupts(after: 1) }

    /// Re-enables interrupts for when `count` more entries are used, not the first: with
    /// EVENT_IDX, used_event = last used + count - 1, and the device signals once used->idx passes
    /// it (vhost.c vhost_notify → vhost_vring_need_event). Interrupt coalescing, as
    /// virtqueue_enable_cb_delayed does for TX; the caller bounds the wait, since fewer than
    /// `count` entries never signal. Returns true when `count` entries are already used (or the
    /// driver is broken). Without EVENT_IDX there is no threshold: the first entry signals.
    public mutating func enableInterrupts(after count: UInt16) -> Bool {
        interruptsSuppressed = false
        let threshold = max(1, count)
        if eventIndex {
            // SAFETY: as in disableInterrupts.
            ring.usedEvent.pointee.store(_lastUsedIndex &+ (threshold &- 1), ordering: .releasing)
        } else {
            // SAFETY: as in disableInterrupts.
            ring.availFlags = []
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return isBroken || usedPending >= (eventIndex ? threshold : 1)
    }

    /// Used entries the device has published that `nextUsed` has not returned yet.
    @inlinable
    public var usedPending: UInt16 {
        // SAFETY: acquire pairs with the device's release store of used->idx.
        ring.usedIndex.pointee.load(ordering: .acquiring) &- _lastUsedIndex
    }
}

/// The free list's shadow next links and the descriptor count of every chain in flight (0 for
/// a free head), in one allocation: the driver is `~Copyable`, so it owns this alone and no
/// copy-on-write check or retain runs per frame, as arrays would need.
@usableFromInline
struct ChainTable: ~Copyable, @unchecked Sendable {
    // SAFETY (@unchecked Sendable): the storage is reached only through the one driver that
    // owns it, and a ~Copyable driver is used by one thread at a time.
    @usableFromInline let storage: UnsafeMutablePointer<UInt16>
    @usableFromInline let size: Int

    /// Links every descriptor to the next, around the table, with no chain in flight.
    @usableFromInline
    init(queueSize n: Int) {
        size = n
        storage = .allocate(capacity: 2 * n)
        for i in 0..<n { (storage + i).initialize(to: UInt16(truncatingIfNeeded: (i + 1) % n)) }
        (storage + n).initialize(repeating: 0, count: n)
    }

    deinit { storage.deallocate() }

    // SAFETY: every index is a descriptor index below the queue size: a head from the free
    // list, a link the driver wrote, or a used id that nextUsed checked against the size.
    @inlinable
    func next(_ index: UInt16) -> UInt16 {
        assert(Int(index) < size)
        return storage[Int(index)]
    }
    @inlinable
    func setNext(_ index: UInt16, _ next: UInt16) {
        assert(Int(index) < size)
        storage[Int(index)] = next
    }
    @inlinable
    func count(_ head: UInt16) -> UInt16 {
        assert(Int(head) < size)
        return storage[size &+ Int(head)]
    }
    @inlinable
    func setCount(_ head: UInt16, _ count: UInt16) {
        assert(Int(head) < size)
        storage[size &+ Int(head)] = count
    }
}
