import Synchronization

/// A device-side model of a split virtqueue that enforces the rules the kernel's vhost worker
/// enforces (drivers/vhost/vhost.c vhost_get_vq_desc, get_indirect, vhost_notify; net.c
/// handle_tx/handle_rx). It exists so that driver logic can be unit-tested without a kernel;
/// every rule here cites where the kernel has it.
public struct SplitVirtqueueDevice: @unchecked Sendable {
    public enum Direction: Sendable { case transmit, receive }

    public let ring: SplitRing
    public let eventIndex: Bool
    public let notifyOnEmpty: Bool
    public let direction: Direction
    /// Guest-physical → host translation (the memory table). nil means "not in the table".
    public let translate: @Sendable (UInt64, UInt32) -> UnsafeMutableRawPointer?

    /// `last_avail_idx`: the next avail entry the device will read.
    public private(set) var lastAvailIndex: UInt16
    /// `last_used_idx`: the device's shadow of used->idx.
    public private(set) var lastUsedIndex: UInt16
    /// `signalled_used`: used->idx when the device last interrupted.
    private var signalledUsed: UInt16
    private var signalledUsedValid = false
    /// Set after an error, cleared by a kick (vq_err: "the queue stops until the next kick").
    public private(set) var stopped = false

    public init(ring: SplitRing, direction: Direction, eventIndex: Bool, notifyOnEmpty: Bool = false, base: UInt16 = 0,
                translate: @escaping @Sendable (UInt64, UInt32) -> UnsafeMutableRawPointer?) {
        self.ring = ring
        self.direction = direction
        self.eventIndex = eventIndex
        self.notifyOnEmpty = notifyOnEmpty
        self.translate = translate
        // vhost.c vhost_vq_init_access: last_used_idx is read from used->idx at attach time.
        self.lastAvailIndex = base
        self.lastUsedIndex = ring.usedIndex.pointee.load(ordering: .acquiring)
        self.signalledUsed = lastUsedIndex
    }

    /// One chain as the device sees it, with host pointers for each segment.
    public struct Chain {
        public var head: UInt16
        public var readable: [(UnsafeMutableRawPointer, Int)] = []
        public var writable: [(UnsafeMutableRawPointer, Int)] = []
        public var readableLength: Int { readable.reduce(0) { $0 + $1.1 } }
        public var writableLength: Int { writable.reduce(0) { $0 + $1.1 } }
    }

    /// The errors `vq_err` reports, each named after the kernel's check.
    public enum RingError: Error, Equatable, Sendable {
        /// vhost.c vhost_get_vq_desc: "Guest moved avail index from %u to %u" (more than num).
        case availIndexMovedTooFar(from: UInt16, to: UInt16)
        /// "Guest says index %u > %u is available"
        case headOutOfRange(UInt16)
        /// "Desc next is %u > %u"
        case nextOutOfRange(UInt16)
        /// "Loop detected: last one at %u vq size %u head %u"
        case loop(head: UInt16)
        /// translate_desc: EFAULT for an address outside the memory table.
        case addressNotMapped(address: UInt64, length: UInt32)
        /// get_indirect: "Invalid length in indirect descriptor"
        case indirectLengthNotMultipleOf16(UInt32)
        /// get_indirect: "Nested indirect descriptor"
        case nestedIndirect
        /// "Descriptor has out after in"
        case readableAfterWritable
        /// net.c handle_tx: "Unexpected descriptor format for TX: out %d, int %d"
        case writableOnTransmit
        /// net.c get_rx_bufs: "unexpected descriptor format for RX: out %d, in %d"
        case readableOnReceive
    }

    /// A kick: clears the error stop, as a new kick re-runs the handler.
    public mutating func kick() { stopped = false }

    /// Takes the next available chain, or nil when the ring is empty or stopped.
    public mutating func pop() throws(RingError) -> Chain? {
        guard !stopped else { return nil }
        do {
            return try popChecked()
        } catch {
            stopped = true
            throw error
        }
    }

    private mutating func popChecked() throws(RingError) -> Chain? {
        let availIndex = ring.availIndex.pointee.load(ordering: .acquiring)
        if availIndex &- lastAvailIndex > ring.queueSize {
            throw .availIndexMovedTooFar(from: lastAvailIndex, to: availIndex)
        }
        if availIndex == lastAvailIndex { return nil }
        let head = ring.availEntry(lastAvailIndex)
        guard head < ring.queueSize else { throw .headOutOfRange(head) }
        var chain = Chain(head: head)
        var index = head
        var visited = 0
        while true {
            visited += 1
            if visited > Int(ring.queueSize) { throw .loop(head: head) }
            let d = ring.descriptor(index)
            if d.flags.contains(.indirect) {
                try walkIndirect(d, into: &chain)
            } else {
                try append(d, to: &chain)
            }
            guard d.flags.contains(.next) else { break }
            guard d.next < ring.queueSize else { throw .nextOutOfRange(d.next) }
            index = d.next
        }
        if direction == .transmit && !chain.writable.isEmpty { throw .writableOnTransmit }
        if direction == .receive && !chain.readable.isEmpty { throw .readableOnReceive }
        lastAvailIndex &+= 1
        return chain
    }

    private func append(_ d: Descriptor, to chain: inout Chain) throws(RingError) {
        guard let host = translate(d.address, d.length) else { throw .addressNotMapped(address: d.address, length: d.length) }
        if d.flags.contains(.write) {
            chain.writable.append((host, Int(d.length)))
        } else {
            if !chain.writable.isEmpty { throw .readableAfterWritable }
            chain.readable.append((host, Int(d.length)))
        }
    }

    private func walkIndirect(_ d: Descriptor, into chain: inout Chain) throws(RingError) {
        guard d.length % UInt32(SplitRingLayout.descriptorSize) == 0 else { throw .indirectLengthNotMultipleOf16(d.length) }
        guard let table = translate(d.address, d.length) else { throw .addressNotMapped(address: d.address, length: d.length) }
        let count = Int(d.length) / SplitRingLayout.descriptorSize
        var i = 0
        var visited = 0
        while true {
            visited += 1
            if visited > count { throw .loop(head: chain.head) }
            let base = table + i * SplitRingLayout.descriptorSize
            let entry = Descriptor(
                address: UInt64(littleEndian: base.loadUnaligned(as: UInt64.self)),
                length: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                flags: DescriptorFlags(rawValue: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self))),
                next: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 14, as: UInt16.self)))
            if entry.flags.contains(.indirect) { throw .nestedIndirect }
            try append(entry, to: &chain)
            guard entry.flags.contains(.next) else { return }
            guard Int(entry.next) < count else { throw .nextOutOfRange(entry.next) }
            i = Int(entry.next)
        }
    }

    /// Returns a chain to the driver: writes the used element and publishes used->idx with a
    /// release store (vhost.c vhost_add_used: "Make sure buffer is written before we update index").
    /// TX chains are returned with length 0 (net.c handle_tx uses vhost_add_used(vq, head, 0)).
    public mutating func push(head: UInt16, length: UInt32) {
        ring.setUsedEntry(lastUsedIndex, UsedElement(id: UInt32(head), length: length))
        lastUsedIndex &+= 1
        ring.usedIndex.pointee.store(lastUsedIndex, ordering: .releasing)
    }

    /// Whether the device should signal the call eventfd now (vhost.c vhost_notify).
    public mutating func shouldSignal() -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        // "Flush out used index updates. This is paired with the barrier that the Guest executes when enabling interrupts."
        if notifyOnEmpty && ring.availIndex.pointee.load(ordering: .acquiring) == lastAvailIndex {
            return true
        }
        if !eventIndex {
            return !ring.availFlags.contains(.noInterrupt)
        }
        let old = signalledUsed
        let valid = signalledUsedValid
        let new = lastUsedIndex
        signalledUsed = new
        signalledUsedValid = true
        if !valid { return true }
        return vringNeedEvent(event: ring.usedEvent.pointee.load(ordering: .acquiring), new: new, old: old)
    }

    /// Asks the driver not to kick (VRING_USED_F_NO_NOTIFY), or with EVENT_IDX lets
    /// avail_event lag (vhost.c vhost_disable_notify).
    public func disableNotify() {
        if !eventIndex { ring.usedFlags = [.noNotify] }
    }

    /// Re-enables kicks and returns true when more entries became available meanwhile
    /// (vhost.c vhost_enable_notify).
    public func enableNotify() -> Bool {
        if eventIndex {
            ring.availEvent.pointee.store(lastAvailIndex, ordering: .releasing)
        } else {
            ring.usedFlags = []
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return ring.availIndex.pointee.load(ordering: .acquiring) != lastAvailIndex
    }
}

extension SplitVirtqueueDevice {
    /// The buffers net.c get_rx_bufs gathers for one packet.
    public struct ReceiveBuffers {
        public var chains: [Chain]
        /// Bytes the chains can take in all.
        public var capacity: Int
    }

    /// Gathers RX buffers for `bytes` (header included) as net.c get_rx_bufs does: one chain
    /// without MRG_RXBUF (its capacity may fall short: the caller discards the packet and the
    /// chain), as many as it takes with it. Returns nil, with nothing consumed, when the ring
    /// runs out first (vhost_discard_vq_desc of every head taken).
    public mutating func gatherReceiveBuffers(bytes: Int, mergeable: Bool) throws(RingError) -> ReceiveBuffers? {
        var chains: [Chain] = []
        var capacity = 0
        while capacity < bytes && (mergeable || chains.isEmpty) {
            let chain: Chain?
            do { chain = try pop() } catch {
                discard(chains.count)
                throw error
            }
            guard let chain else {
                discard(chains.count)
                return nil
            }
            capacity += chain.writableLength
            chains.append(chain)
        }
        return ReceiveBuffers(chains: chains, capacity: capacity)
    }

    /// vhost.c vhost_discard_vq_desc: gives back the last `count` chains taken from the avail ring.
    public mutating func discard(_ count: Int) { lastAvailIndex &-= UInt16(truncatingIfNeeded: count) }

    /// Copies `data` into the chains' writable segments in order; returns how many bytes each
    /// chain received (net.c: every buffer full but the last).
    public static func scatter(_ data: [UInt8], into chains: [Chain]) -> [UInt32] {
        var offset = 0
        var lengths: [UInt32] = []
        for chain in chains {
            var written = 0
            for (pointer, length) in chain.writable where offset < data.count {
                let n = min(length, data.count - offset)
                data.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
                offset += n
                written += n
            }
            lengths.append(UInt32(written))
        }
        return lengths
    }

    /// Adds the used entries of one received packet: one per buffer, published together
    /// (vhost_add_used_n), or with IN_ORDER one for the whole packet (the last buffer's id in
    /// the first slot, used->idx advanced by the buffer count; vhost_add_used_in_order).
    public mutating func pushReceived(heads: [UInt16], lengths: [UInt32], inOrder: Bool) {
        if inOrder {
            ring.setUsedEntry(lastUsedIndex, UsedElement(id: UInt32(heads.last!), length: lengths.last!))
            lastUsedIndex &+= UInt16(heads.count)
        } else {
            for (head, length) in zip(heads, lengths) {
                ring.setUsedEntry(lastUsedIndex, UsedElement(id: UInt32(head), length: length))
                lastUsedIndex &+= 1
            }
        }
        ring.usedIndex.pointee.store(lastUsedIndex, ordering: .releasing)
    }
}
