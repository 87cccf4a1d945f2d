import Synchronization

/// A device-side model of a split virtqueue that behaves as the Linux kernel's vhost worker
/// does (drivers/vhost/vhost.c vhost_get_vq_desc, get_indirect, vhost_add_used_n,
/// vhost_notify; net.c get_tx_bufs, get_rx_bufs, handle_tx, handle_rx), so that driver logic
/// can be tested without a kernel. Every rule cites where the kernel has it; read against
/// Linux 6.1 (Debian 6.1.192), 6.12 and 7.2, with the differences noted where they matter.
///
/// It is `~Copyable` for the same reason the kernel's `vhost_virtqueue` is one object: its
/// shadows (`last_avail_idx`, the cached `avail_idx`, `last_used_idx`, `signalled_used`) must
/// not fork.
///
/// What it does not model: vhost.c's `BUG_ON(!(vq->used_flags & VRING_USED_F_NO_NOTIFY))` in
/// vhost_get_vq_desc (the kernel always pops with notifications disabled; here `pop()` works
/// either way), memory regions and their permissions (one `translate` call per descriptor,
/// so each non-empty descriptor is one iovec), the dirty log and busy polling.
public struct SplitVirtqueueDevice: ~Copyable, Sendable {
    /// Which net.c handler's checks apply after vhost_get_vq_desc.
    public enum Direction: Sendable {
        /// net.c handle_tx / get_tx_bufs: only readable descriptors.
        case transmit
        /// net.c handle_rx / get_rx_bufs: only writable descriptors, at least one non-empty.
        case receive
        /// No net.c check: vhost.c's own rules only (as vhost-scsi and vhost-vsock, whose
        /// requests carry both readable and writable buffers).
        case any
    }

    /// The ring memory the device reads and writes (`package`: see `SplitRing`).
    package let ring: SplitRing
    /// `VIRTIO_F_RING_EVENT_IDX` negotiated.
    public let eventIndex: Bool
    /// `VIRTIO_F_NOTIFY_ON_EMPTY` negotiated.
    public let notifyOnEmpty: Bool
    /// `VIRTIO_F_IN_ORDER` negotiated (7.x): heads are taken from `nextAvailHead`, not from the
    /// avail ring (vhost.c vhost_get_vq_desc_n), and `push(received:)` writes one element per
    /// packet. 6.1 and 6.12 do not offer IN_ORDER.
    public let inOrder: Bool
    /// Which net.c checks follow vhost_get_vq_desc in `pop()`.
    public let direction: Direction
    /// net.c `nvq->vhost_hlen`: the header vhost itself adds (VHOST_NET_F_VIRTIO_NET_HDR),
    /// 0 when the tap carries it. get_tx_bufs refuses a TX chain no longer than this.
    public let vhostHeaderLength: Int
    /// Guest-physical → host translation (the memory table). nil means "not in the table".
    public let translate: @Sendable (UInt64, UInt32) -> UnsafeMutableRawPointer?

    /// `last_avail_idx`: the next avail entry the device will read.
    public private(set) var lastAvailIndex: UInt16
    /// `avail_idx`: the last avail->idx the device read. vhost.c re-reads avail->idx only when
    /// `lastAvailIndex` has caught up with it (vhost_get_vq_desc → vhost_get_avail_idx).
    public private(set) var cachedAvailIndex: UInt16
    /// `next_avail_head` (7.x): with IN_ORDER, the descriptor the next chain starts at; moves by
    /// the descriptors each chain used (an indirect one counts once).
    public private(set) var nextAvailHead: UInt16
    /// `last_used_idx`: the device's shadow of used->idx.
    public private(set) var lastUsedIndex: UInt16
    /// `signalled_used`: used->idx when the device last decided about a signal (EVENT_IDX).
    public private(set) var signalledUsed: UInt16 = 0
    /// `signalled_used_valid`: false at attach (vhost_vq_init_access) and after used->idx went
    /// a full 2^16 round past `signalledUsed` without a decision (__vhost_add_used_n); while
    /// false the next `shouldSignal()` says yes regardless of used_event.
    public private(set) var signalledUsedValid = false
    /// `used_flags & VRING_USED_F_NO_NOTIFY`: kicks are off (`disableNotify()`).
    public private(set) var notificationsDisabled = false
    /// Set after an error, cleared by a kick: net.c's handlers return on an error and only the
    /// next kick runs them again.
    public private(set) var stopped = false
    /// The last error `vq_err` would have reported (the kernel signals the error eventfd).
    public private(set) var lastError: RingError?

    /// vhost.h `struct iovec iov[UIO_MAXIOV]`: segments one pop (and one RX packet) may use.
    public static let maximumSegments = 1024

    /// A device over the three parts of a split ring laid out as `SplitRingLayout` says, in
    /// memory the caller owns and keeps mapped while the device uses it; attaches as
    /// `init(ring:…)` does.
    public init(queueSize: UInt16, descriptors: UnsafeMutableRawPointer, avail: UnsafeMutableRawPointer, used: UnsafeMutableRawPointer,
                direction: Direction, eventIndex: Bool, notifyOnEmpty: Bool = false,
                inOrder: Bool = false, vhostHeaderLength: Int = 0, base: UInt16 = 0,
                translate: @escaping @Sendable (UInt64, UInt32) -> UnsafeMutableRawPointer?) {
        self.init(ring: SplitRing(queueSize: queueSize, descriptors: descriptors, avail: avail, used: used),
                  direction: direction, eventIndex: eventIndex, notifyOnEmpty: notifyOnEmpty, inOrder: inOrder,
                  vhostHeaderLength: vhostHeaderLength, base: base, translate: translate)
    }

    /// Attaches to a ring as VHOST_SET_VRING_BASE(`base`) + VHOST_NET_SET_BACKEND would.
    /// vhost_vq_init_access writes used->flags from `used_flags` (0), reads `last_used_idx`
    /// from used->idx and marks `signalled_used` invalid; SET_VRING_BASE sets
    /// `last_avail_idx`, the cached `avail_idx` and (7.x) `next_avail_head` to `base`.
    package init(ring: SplitRing, direction: Direction, eventIndex: Bool, notifyOnEmpty: Bool = false,
                inOrder: Bool = false, vhostHeaderLength: Int = 0, base: UInt16 = 0,
                translate: @escaping @Sendable (UInt64, UInt32) -> UnsafeMutableRawPointer?) {
        self.ring = ring
        self.direction = direction
        self.eventIndex = eventIndex
        self.notifyOnEmpty = notifyOnEmpty
        self.inOrder = inOrder
        self.vhostHeaderLength = vhostHeaderLength
        self.translate = translate
        self.lastAvailIndex = base
        self.cachedAvailIndex = base
        self.nextAvailHead = base
        // SAFETY: used->flags and used->idx live in the ring's memory, kept alive by its owner.
        ring.usedFlags = []
        self.lastUsedIndex = ring.usedIndex.pointee.load(ordering: .acquiring)
    }

    /// One chain as the device sees it: host pointers and lengths of its non-empty segments
    /// (translate_desc makes no iovec for a zero-length descriptor), readable ones first.
    public struct Chain {
        /// The chain's head descriptor.
        public var head: UInt16
        /// Device-readable segments (`out`).
        public var readable: [(pointer: UnsafeMutableRawPointer, length: Int)] = []
        /// Device-writable segments (`in`).
        public var writable: [(pointer: UnsafeMutableRawPointer, length: Int)] = []
        /// Descriptors walked in the table, an indirect one counting once (7.x `ndesc`).
        public var descriptorCount = 0
        /// Total readable bytes.
        public var readableLength: Int { readable.reduce(0) { $0 + $1.length } }
        /// Total writable bytes.
        public var writableLength: Int { writable.reduce(0) { $0 + $1.length } }
    }

    /// The errors `vq_err` reports, each named after the kernel's check.
    public enum RingError: Error, Equatable, Sendable {
        /// vhost.c vhost_get_avail_idx: "Invalid available index change from %u to %u" (more than
        /// num ahead of last_avail_idx), as in 6.1.y stable (Debian's 6.1.192), 6.12 and 7.2; the
        /// bad value is not cached. Older kernels (6.1 as released) had the check in
        /// vhost_get_vq_desc as "Guest moved used index from %u to %u", after storing the bad
        /// value in vq->avail_idx.
        case availIndexMovedTooFar(from: UInt16, to: UInt16)
        /// vhost_get_vq_desc: "Guest says index %u > %u is available"
        case headOutOfRange(UInt16)
        /// vhost_get_vq_desc: "Desc index is %u > %u, head = %u" (a `next` ≥ num; older kernels
        /// had it in next_desc as "Desc next is %u > %u").
        case nextOutOfRange(UInt16)
        /// vhost_get_vq_desc: "Loop detected: last one at %u vq size %u head %u" (more than num
        /// descriptors), or get_indirect: "Loop detected: last one at %u indirect size %u" (more
        /// entries than len / 16, including a zero-length table).
        case loop(head: UInt16)
        /// translate_desc: EFAULT for an address outside the memory table ("Translation failure").
        case addressNotMapped(address: UInt64, length: UInt32)
        /// translate_desc: ENOBUFS when a chain needs more than the iovecs left of
        /// UIO_MAXIOV (1024); get_rx_bufs also stops a packet at 1024 segments.
        case tooManySegments
        /// get_indirect: "Invalid length in indirect descriptor: len 0x%llx not multiple of 0x%zx"
        case indirectLengthNotMultipleOf16(UInt32)
        /// get_indirect: "Indirect buffer length too big: %d" (more than 65536 entries).
        case indirectTooLarge(UInt32)
        /// get_indirect: "Nested indirect descriptor: idx %d, %zx"
        case nestedIndirect
        /// vhost_get_vq_desc / get_indirect: "Descriptor has out after in" (a non-empty readable
        /// descriptor after a non-empty writable one).
        case readableAfterWritable
        /// net.c get_tx_bufs: "Unexpected descriptor format for TX: out %d, int %d"
        case writableOnTransmit
        /// net.c get_tx_bufs: "Unexpected header len for TX: %zd expected %zd" (nothing left
        /// after vhost's own header).
        case noPayloadOnTransmit(length: Int)
        /// net.c get_rx_bufs: "unexpected descriptor format for RX: out %d, in %d" (a readable
        /// segment, or no writable one).
        case readableOnReceive

        /// Whether the kernel had already consumed the chain when it reported this: net.c's
        /// checks run after vhost_get_vq_desc advanced last_avail_idx, and nothing rolls that
        /// chain back, so it never gets a used entry. vhost.c's own errors leave
        /// last_avail_idx alone and the same chain fails again at the next kick.
        public var consumesChain: Bool {
            switch self {
            case .writableOnTransmit, .noPayloadOnTransmit, .readableOnReceive: true
            default: false
            }
        }
    }

    /// A kick: clears the error stop, as a new kick re-runs the handler.
    public mutating func kick() { stopped = false }

    /// Takes the next available chain (vhost.c vhost_get_vq_desc, then net.c's direction
    /// check), or nil when the ring is empty or the queue is stopped.
    ///
    /// On a thrown error the queue stops until `kick()`. `RingError.consumesChain` says whether
    /// `lastAvailIndex` moved past the chain (net.c's checks) or not (vhost.c's).
    public mutating func pop() throws(RingError) -> Chain? {
        guard !stopped else { return nil }
        return try popChecked(segmentLimit: Self.maximumSegments, rules: direction)
    }

    /// vhost_get_vq_desc(_n) with `rules`' net.c post-check; stops the queue on an error.
    private mutating func popChecked(segmentLimit: Int, rules: Direction) throws(RingError) -> Chain? {
        do {
            return try walkNextChain(segmentLimit: segmentLimit, rules: rules)
        } catch {
            stopped = true
            lastError = error
            throw error
        }
    }

    private mutating func walkNextChain(segmentLimit: Int, rules: Direction) throws(RingError) -> Chain? {
        let num = ring.queueSize
        if cachedAvailIndex == lastAvailIndex {
            // vhost_get_avail_idx, only once the cache is used up.
            // SAFETY: acquire pairs with the driver's release store of avail->idx: the avail
            // slots and descriptors below it were written before.
            let availIndex = ring.availIndex.pointee.load(ordering: .acquiring)
            if availIndex &- lastAvailIndex > num {
                throw .availIndexMovedTooFar(from: lastAvailIndex, to: availIndex)
            }
            if availIndex == cachedAvailIndex { return nil }
            cachedAvailIndex = availIndex
        }
        // 7.x: "if (in_order) head = vq->next_avail_head & (vq->num - 1);" — the avail ring
        // entry is not read at all.
        // SAFETY: lastAvailIndex is below the acquired avail->idx, so the slot is published.
        let head = inOrder ? nextAvailHead & (num &- 1) : ring.availEntry(lastAvailIndex)
        guard head < num else { throw .headOutOfRange(head) }
        var chain = Chain(head: head)
        var index = head
        var found = 0
        while true {
            guard index < num else { throw .nextOutOfRange(index) }
            found += 1
            if found > Int(num) { throw .loop(head: head) }
            // SAFETY: index < num; published with the avail slot (see above).
            let d = ring.descriptor(index)
            if d.flags.contains(.indirect) {
                try walkIndirect(d, into: &chain, segmentLimit: segmentLimit)
            } else {
                try append(d, to: &chain, segmentLimit: segmentLimit)
            }
            chain.descriptorCount += 1
            // next_desc: the walk goes on while NEXT is set, also after an indirect descriptor.
            guard d.flags.contains(.next) else { break }
            index = d.next
        }
        // "On success, increment avail index."
        lastAvailIndex &+= 1
        nextAvailHead &+= UInt16(truncatingIfNeeded: chain.descriptorCount)
        // net.c's checks come after vhost_get_vq_desc has advanced last_avail_idx.
        switch rules {
        case .transmit:
            // get_tx_bufs: "if (*in)" then init_iov_iter skips vhost_hlen: nothing may remain.
            if !chain.writable.isEmpty { throw .writableOnTransmit }
            let length = chain.readableLength
            if length <= vhostHeaderLength { throw .noPayloadOnTransmit(length: length) }
        case .receive:
            // get_rx_bufs: "if (unlikely(out || in <= 0))"
            if !chain.readable.isEmpty || chain.writable.isEmpty { throw .readableOnReceive }
        case .any:
            break
        }
        return chain
    }

    /// One descriptor as vhost_get_vq_desc / get_indirect handle it: translate_desc first
    /// (nothing for a zero length), then the out-after-in check against the writable iovecs.
    private func append(_ d: Descriptor, to chain: inout Chain, segmentLimit: Int) throws(RingError) {
        var host: UnsafeMutableRawPointer?
        if d.length > 0 {
            guard chain.readable.count + chain.writable.count < segmentLimit else { throw .tooManySegments }
            guard let pointer = translate(d.address, d.length) else { throw .addressNotMapped(address: d.address, length: d.length) }
            host = pointer
        }
        if d.flags.contains(.write) {
            if let host { chain.writable.append((host, Int(d.length))) }
        } else {
            if !chain.writable.isEmpty { throw .readableAfterWritable }
            if let host { chain.readable.append((host, Int(d.length))) }
        }
    }

    /// get_indirect: the table is copied in order with copy_from_iter; an entry's `next` only
    /// says whether the walk goes on (its value is never used as an index), and more than
    /// len / 16 entries is a loop.
    private func walkIndirect(_ d: Descriptor, into chain: inout Chain, segmentLimit: Int) throws(RingError) {
        let size = UInt32(SplitRingLayout.descriptorSize)
        guard d.length % size == 0 else { throw .indirectLengthNotMultipleOf16(d.length) }
        var table: UnsafeMutableRawPointer?
        if d.length > 0 {
            guard let pointer = translate(d.address, d.length) else { throw .addressNotMapped(address: d.address, length: d.length) }
            table = pointer
        }
        let count = Int(d.length / size)
        guard count <= Int(UInt16.max) + 1 else { throw .indirectTooLarge(d.length) }
        var found = 0
        while true {
            found += 1
            if found > count { throw .loop(head: chain.head) }
            // count > 0 here, so the table was translated above.
            guard let table else { throw .loop(head: chain.head) }
            // SAFETY: entry found-1 < count lies inside the translated table, which the driver
            // wrote before its release store of avail->idx; loads are unaligned-safe.
            let base = table + (found - 1) * SplitRingLayout.descriptorSize
            let entry = Descriptor(
                address: UInt64(littleEndian: base.loadUnaligned(as: UInt64.self)),
                length: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                flags: DescriptorFlags(rawValue: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self))),
                next: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 14, as: UInt16.self)))
            if entry.flags.contains(.indirect) { throw .nestedIndirect }
            try append(entry, to: &chain, segmentLimit: segmentLimit)
            guard entry.flags.contains(.next) else { return }
        }
    }

    /// vhost_discard_vq_desc: moves `lastAvailIndex` back by `chains` (and, 7.x, `nextAvailHead`
    /// back by `descriptors`) so the same avail slots are read again. The rollback is by
    /// position: it gives back the last `chains` slots taken, whatever they held.
    public mutating func discard(chains: Int, descriptors: Int) {
        lastAvailIndex &-= UInt16(truncatingIfNeeded: chains)
        nextAvailHead &-= UInt16(truncatingIfNeeded: descriptors)
    }

    /// Gives back a packet's gathered buffers (net.c handle_rx when recvmsg comes up short, or
    /// the num_buffers write fails: `vhost_discard_vq_desc(vq, headcount, ndesc)`).
    public mutating func discard(_ buffers: ReceiveBuffers) {
        discard(chains: buffers.headCount, descriptors: buffers.descriptorCount)
    }

    // MARK: used ring

    /// Returns one chain to the driver (vhost.c vhost_add_used → vhost_add_used_n with one
    /// element). TX chains are returned with length 0 (net.c handle_tx).
    public mutating func push(head: UInt16, length: UInt32) {
        push([UsedElement(id: UInt32(head), length: length)])
    }

    /// Returns several chains with one used->idx update (vhost.c vhost_add_used_n, as net.c
    /// uses it for a batch of TX chains and for the buffers of MRG_RXBUF packets): writes all
    /// elements, split in two where they wrap past the ring's end (vhost_add_used_n_ooo in
    /// 7.x, inline in 6.1/6.12), then publishes used->idx once with a release store ("Make
    /// sure buffer is written before we update index"). An empty list changes nothing.
    public mutating func push(_ elements: [UsedElement]) {
        guard !elements.isEmpty else { return }
        precondition(elements.count <= Int(ring.queueSize), "more used elements than the ring holds")
        let start = Int(lastUsedIndex & (ring.queueSize &- 1))
        let room = Int(ring.queueSize) - start
        if room < elements.count {
            addUsed(elements[..<room])
            addUsed(elements[room...])
        } else {
            addUsed(elements[...])
        }
        publishUsedIndex()
    }

    /// One entry of an IN_ORDER push: `element` (the id of the batch's last chain and a length)
    /// stands for `count` chains (vhost_add_used_n's `nheads`).
    public struct InOrderUsed: Equatable, Sendable {
        /// The id of the batch's last chain and the length reported for the batch.
        public var element: UsedElement
        /// Chains the element completes; used->idx advances by this much.
        public var count: UInt16
        /// A batch entry with the given fields.
        public init(element: UsedElement, count: UInt16) {
            self.element = element
            self.count = count
        }
    }

    /// Returns batches of chains with IN_ORDER (7.x vhost.c vhost_add_used_n_in_order): each
    /// batch's single element goes in the batch's first slot, used->idx advances by every
    /// batch's count, and is published once. net.c uses one batch for a run of TX chains
    /// (length 0) and one per RX packet (length: what the packet's last buffer holds).
    public mutating func pushInOrder(_ batches: [InOrderUsed]) {
        guard !batches.isEmpty else { return }
        var new = lastUsedIndex
        for batch in batches {
            precondition(batch.count > 0, "an IN_ORDER batch completes at least one chain")
            // SAFETY: slot `new` is beyond the published used->idx; the driver reads it only
            // after publishUsedIndex()'s release store.
            ring.setUsedEntry(new, batch.element)
            new &+= batch.count
        }
        advanceUsed(to: new)
        publishUsedIndex()
    }

    /// __vhost_add_used_n: writes the elements at last_used_idx and advances it.
    private mutating func addUsed(_ elements: ArraySlice<UsedElement>) {
        var index = lastUsedIndex
        for element in elements {
            // SAFETY: slots beyond the published used->idx; published by the release store.
            ring.setUsedEntry(index, element)
            index &+= 1
        }
        advanceUsed(to: index)
    }

    /// Moves last_used_idx and, as __vhost_add_used_n and vhost_add_used_n_in_order do,
    /// invalidates signalled_used when the move passed it: "If the driver never bothers to
    /// signal in a very long while, used index might wrap around."
    private mutating func advanceUsed(to new: UInt16) {
        let old = lastUsedIndex
        lastUsedIndex = new
        if new &- signalledUsed < new &- old { signalledUsedValid = false }
    }

    private func publishUsedIndex() {
        // SAFETY: release: the used entries written above are visible to a driver that loads
        // used->idx with acquire.
        ring.usedIndex.pointee.store(lastUsedIndex, ordering: .releasing)
    }

    // MARK: notifications

    /// Whether the device should signal the call eventfd now (vhost.c vhost_notify). With
    /// NOTIFY_ON_EMPTY it compares the cached avail index with `lastAvailIndex` (no re-read).
    public mutating func shouldSignal() -> Bool {
        // "Flush out used index updates. This is paired with the barrier that the Guest
        // executes when enabling interrupts."
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if notifyOnEmpty && cachedAvailIndex == lastAvailIndex {
            return true
        }
        if !eventIndex {
            // SAFETY: avail->flags is a hint; any value is valid.
            return !ring.availFlags.contains(.noInterrupt)
        }
        let old = signalledUsed
        let valid = signalledUsedValid
        let new = lastUsedIndex
        signalledUsed = new
        signalledUsedValid = true
        if !valid { return true }
        // SAFETY: used_event is an Atomic<UInt16> in the avail ring; any value is valid.
        return vringNeedEvent(event: ring.usedEvent.pointee.load(ordering: .acquiring), new: new, old: old)
    }

    /// Asks the driver not to kick (vhost.c vhost_disable_notify): sets NO_NOTIFY in
    /// `used_flags` and, without EVENT_IDX, writes it to used->flags; with EVENT_IDX
    /// avail_event is just left behind.
    public mutating func disableNotify() {
        if notificationsDisabled { return }
        notificationsDisabled = true
        // SAFETY: used->flags is a hint the device owns.
        if !eventIndex { ring.usedFlags = [.noNotify] }
    }

    /// Re-enables kicks and returns true when more entries became available meanwhile
    /// (vhost.c vhost_enable_notify). As in the kernel it returns false at once when kicks
    /// were not disabled, writes avail_event from the cached avail index, and after a full
    /// barrier re-reads avail->idx: true only when it moved past the cached value (which then
    /// takes it). An invalid index is reported (`lastError`) and taken as empty.
    public mutating func enableNotify() -> Bool {
        guard notificationsDisabled else { return false }
        notificationsDisabled = false
        if eventIndex {
            // SAFETY: avail_event is an Atomic<UInt16> in the used ring that the device owns.
            ring.availEvent.pointee.store(cachedAvailIndex, ordering: .releasing)
        } else {
            // SAFETY: used->flags is a hint the device owns.
            ring.usedFlags = []
        }
        // "They could have slipped one in as we were doing that: make sure it's written, then
        // check again."
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        // SAFETY: acquire pairs with the driver's release store of avail->idx.
        let availIndex = ring.availIndex.pointee.load(ordering: .acquiring)
        if availIndex &- lastAvailIndex > ring.queueSize {
            lastError = .availIndexMovedTooFar(from: lastAvailIndex, to: availIndex)
            return false
        }
        if availIndex == cachedAvailIndex { return false }
        cachedAvailIndex = availIndex
        return true
    }

    // MARK: receive (net.c get_rx_bufs)

    /// The buffers net.c get_rx_bufs gathered for one packet.
    public struct ReceiveBuffers {
        /// The chains, in the order they were taken.
        public var chains: [Chain]
        /// Bytes to deliver: header plus frame (`vhost_len`).
        public var length: Int
        /// Descriptors the chains used (7.x `ndesc`, for a discard).
        public var descriptorCount: Int
        /// One element per buffer, as get_rx_bufs fills `heads` without IN_ORDER: each chain's
        /// whole writable length, except the last, which holds the remainder.
        public var usedElements: [UsedElement]
        /// The single element 7.x get_rx_bufs makes with IN_ORDER: the last chain's id, what
        /// the last buffer holds, and the packet's chain count as `nheads`.
        public var inOrderUsed: InOrderUsed
        /// Buffers the packet spans: the `num_buffers` value.
        public var headCount: Int { chains.count }

        /// Copies `bytes` to byte `offset` of the buffers' writable segments, in order and not
        /// beyond `length`, as copy_to_iter does; returns the bytes copied.
        @discardableResult
        public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int {
            var skip = offset
            var copied = 0
            let total = min(bytes.count, max(0, length - offset))
            for chain in chains {
                for segment in chain.writable {
                    if copied == total { return copied }
                    if skip >= segment.length { skip -= segment.length; continue }
                    let n = min(segment.length - skip, total - copied)
                    // SAFETY: the segment is `segment.length` bytes of guest memory the device
                    // owns until it publishes the used entry; skip + n stays inside it.
                    (segment.pointer + skip).copyMemory(from: bytes.baseAddress! + copied, byteCount: n)
                    copied += n
                    skip = 0
                }
            }
            return copied
        }

        /// Writes `num_buffers` (the packet's buffer count, little-endian) at byte 10 of the
        /// packet, after the 10-byte virtio_net_hdr, as net.c handle_rx does on its `fixup`
        /// iterator, crossing into the next segment when the first is short. 6.1 and 6.12 do it
        /// with MRG_RXBUF only; 7.x also with VERSION_1. Returns false when fewer than 12 bytes
        /// are there ("Failed num_buffers write", after which net.c discards the packet's
        /// heads).
        public func writeNumBuffers() -> Bool {
            var value = UInt16(truncatingIfNeeded: headCount).littleEndian
            return withUnsafeBytes(of: &value) { write($0, at: VirtioNetHeader.baseLength) } == 2
        }
    }

    /// What `gatherReceiveBuffers` found for one packet.
    public enum ReceiveGathering {
        /// Enough buffers: deliver into them, then `push(received:)`.
        case buffers(ReceiveBuffers)
        /// The ring ran out first: get_rx_bufs returns 0 after vhost_discard_vq_desc of the
        /// heads it had taken; handle_rx leaves the packet in the socket and re-enables
        /// notifications.
        case notEnoughBuffers
        /// The quota (one chain without MRG_RXBUF) was too small: get_rx_bufs returns
        /// UIO_MAXIOV + 1 after the discard and handle_rx drops the packet (recvmsg with
        /// MSG_TRUNC). This is the kernel's silent RX truncation.
        case overrun
    }

    /// Gathers the buffers for a packet of `frameLength` bytes plus a `headerLength`-byte
    /// virtio-net header as net.c get_rx_bufs does: chains are popped with the RX rule
    /// (writable only) until `frameLength + headerLength` bytes fit; one chain at most without
    /// `mergeable` (MRG_RXBUF), up to UIO_MAXIOV with it.
    ///
    /// On an error every chain taken so far is discarded and the error rethrown. The discard
    /// is by position: after a readable chain following `k` good ones, `lastAvailIndex` is one
    /// past where it started, so with `k` ≥ 1 it is the first good chain's slot that is lost,
    /// and the bad chain is read again at the next kick.
    public mutating func gatherReceiveBuffers(frameLength: Int, headerLength: Int, mergeable: Bool) throws(RingError) -> ReceiveGathering {
        let datalen = frameLength + headerLength
        precondition(datalen > 0, "a packet has at least one byte")
        guard !stopped else { return .notEnoughBuffers }
        let quota = mergeable ? Self.maximumSegments : 1
        var remaining = datalen
        var chains: [Chain] = []
        var segments = 0
        var descriptors = 0
        while remaining > 0 && chains.count < quota {
            if segments >= Self.maximumSegments {
                discard(chains: chains.count, descriptors: descriptors)
                stopped = true
                lastError = .tooManySegments
                throw .tooManySegments
            }
            let chain: Chain?
            do {
                chain = try popChecked(segmentLimit: Self.maximumSegments - segments, rules: .receive)
            } catch {
                discard(chains: chains.count, descriptors: descriptors)
                throw error
            }
            guard let chain else {
                discard(chains: chains.count, descriptors: descriptors)
                return .notEnoughBuffers
            }
            remaining -= chain.writableLength
            segments += chain.writable.count
            descriptors += chain.descriptorCount
            chains.append(chain)
        }
        if remaining > 0 {
            discard(chains: chains.count, descriptors: descriptors)
            return .overrun
        }
        var elements = chains.map { UsedElement(id: UInt32($0.head), length: UInt32($0.writableLength)) }
        let lastLength = UInt32(chains[chains.count - 1].writableLength + remaining)
        elements[elements.count - 1].length = lastLength
        let inOrderUsed = InOrderUsed(element: UsedElement(id: UInt32(chains[chains.count - 1].head), length: lastLength),
                                      count: UInt16(chains.count))
        return .buffers(ReceiveBuffers(chains: chains, length: datalen, descriptorCount: descriptors,
                                       usedElements: elements, inOrderUsed: inOrderUsed))
    }

    /// Returns a received packet's buffers as net.c handle_rx does: one element per buffer with
    /// one used->idx update (vhost_add_used_n), or with IN_ORDER one element for the packet
    /// (vhost_add_used_n_in_order).
    public mutating func push(received buffers: ReceiveBuffers) {
        if inOrder {
            pushInOrder([buffers.inOrderUsed])
        } else {
            push(buffers.usedElements)
        }
    }
}
