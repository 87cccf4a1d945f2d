import Synchronization
import Vhost
import Virtio

/// The device reported an error on a vring: vhost.c `vq_err` signals the vring's error eventfd
/// (`VHOST_SET_VRING_ERR`), and the queue then stops until the next kick. The event says which
/// queue, how many errors, what the driver had published, and the likely cause, found by checking
/// every chain in flight against the rules the device enforces.
public struct RingErrorEvent: Sendable, Equatable, CustomStringConvertible {
    /// Which queue: its direction, and its pair when an endpoint drives several.
    public var queue: QueueIdentity
    /// Errors signalled since the last event (the eventfd's counter).
    public var count: UInt64
    /// The avail index the driver last published, and the used index it last reaped.
    public var availIndex: UInt16
    public var usedIndex: UInt16
    /// Chains given to the device and not yet returned.
    public var inFlight: Int
    /// The first rule a published chain breaks, with the kernel's words for it, or what else may be wrong.
    public var likelyCause: RingErrorCause

    public var description: String {
        "ring error on \(queue) (\(count)×): driver published avail idx \(availIndex), reaped used idx \(usedIndex), \(inFlight) in flight; likely cause: \(likelyCause)"
    }

    /// The one line `vhostctl attach` prints for the event: the queue and its pair, what the
    /// driver had published, the likely cause, and that the device waits for the next kick.
    public var report: String { "warning: \(self); the device waits for the next kick" }
}

extension NetQueue {
    /// Reads and clears the error eventfd; an event when the device signalled it.
    mutating func takeRingError() -> RingErrorEvent? {
        let fresh = error.consume() ?? 0
        counters.ringErrors += fresh
        // Errors a wait already read (and counted) belong to this event too.
        let count = fresh + unreportedRingErrors
        unreportedRingErrors = 0
        guard count > 0 else { return nil }
        return RingErrorEvent(queue: QueueIdentity(direction: direction), count: count, availIndex: driver.publishedAvailIndex, usedIndex: driver.lastUsedIndex,
                              inFlight: driver.inFlight, likelyCause: diagnose())
    }

    /// The first rule a published, unreaped chain breaks (vhost.c vhost_get_vq_desc, get_indirect;
    /// net.c handle_tx, get_rx_bufs), checked on the driver's own memory.
    func diagnose() -> RingErrorCause {
        let ring = driver.ring
        let size = ring.queueSize
        // SAFETY: the driver reads its own ring memory; the device only reads the descriptor
        // table and avail ring, and the values are only inspected, never trusted for pointers.
        let published = ring.availIndex.pointee.load(ordering: .acquiring)
        // Against what was published, not the shadow: chains added since are not the device's yet.
        if published != driver.publishedAvailIndex {
            return .availIndexMoved(inMemory: published, published: driver.publishedAvailIndex)
        }
        var slot = driver.lastUsedIndex
        while slot != published {
            let head = ring.availEntry(slot)
            if head >= size { return .headOutOfRange(slot: slot, head: head, size: size) }
            var index = head, visited = 0, sawWritable = false
            while true {
                visited += 1
                if visited > Int(size) { return .loop(head: head) }
                let d = ring.descriptor(index)
                if d.flags.contains(.indirect) {
                    if d.length % 16 != 0 { return .indirectLength(head: head, length: d.length) }
                    guard let table = memory.host(guest: d.address &- addressOffset, length: Int(d.length)) else {
                        return .outsideMemoryTable(head: head, place: .indirectTable, address: d.address, length: d.length)
                    }
                    // get_indirect reads the table in order; check its entries as the kernel does.
                    for entry in 0..<Int(d.length) / SplitRingLayout.descriptorSize {
                        let base = table + entry * SplitRingLayout.descriptorSize
                        let flags = DescriptorFlags(rawValue: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self)))
                        let address = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
                        let length = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
                        if flags.contains(.indirect) { return .nestedIndirect(head: head, entry: entry) }
                        if length > 0 && !memory.contains(guest: address &- addressOffset, length: Int(length)) {
                            return .outsideMemoryTable(head: head, place: .indirectEntry(entry), address: address, length: length)
                        }
                        if !flags.contains(.next) { break }
                    }
                } else {
                    if d.length > 0 && !memory.contains(guest: d.address &- addressOffset, length: Int(d.length)) {
                        return .outsideMemoryTable(head: head, place: .descriptor(index), address: d.address, length: d.length)
                    }
                    let writable = d.flags.contains(.write)
                    if sawWritable && !writable { return .readableAfterWritable(head: head) }
                    sawWritable = sawWritable || writable
                    if direction == .transmit && writable { return .writableOnTransmit(head: head) }
                    if direction == .receive && !writable { return .readableOnReceive(head: head) }
                }
                guard d.flags.contains(.next) else { break }
                if d.next >= size { return .nextOutOfRange(head: head, next: d.next, size: size) }
                index = d.next
            }
            slot &+= 1
        }
        return .noRuleBroken(iommuMayDenyAccess: false)
    }
}

extension QueueMemory {
    /// Whether `length` bytes at `address` lie inside one region of the memory table.
    func contains(guest address: UInt64, length: Int) -> Bool { host(guest: address, length: length) != nil }

    /// Where `length` bytes at `address` are mapped, when one region of the table holds them all.
    func host(guest address: UInt64, length: Int) -> UnsafeRawPointer? {
        for region in tableRegions where region.contains(guest: GuestAddress(address), length: length) {
            return UnsafeRawPointer(region.host + Int(address - region.guestAddress.rawValue))
        }
        return nil
    }
}

/// A queue of a NIC: its direction and, when an endpoint drives several pairs, which pair.
public struct QueueIdentity: Sendable, Hashable, CustomStringConvertible {
    /// RX (vring 0) or TX (vring 1).
    public var direction: QueueDirection
    /// The queue pair's index in an endpoint, or nil for a lone pair.
    public var pair: Int?

    public init(direction: QueueDirection, pair: Int? = nil) { self.direction = direction; self.pair = pair }

    /// `rx`, `tx`, or `pair 1 tx`.
    public var description: String { (pair.map { "pair \($0) " } ?? "") + direction.rawValue }
}

/// RX or TX, with vhost-net's vring index for each (net.c VHOST_NET_VQ_RX, VHOST_NET_VQ_TX).
public enum QueueDirection: String, Sendable, Hashable {
    case receive = "rx"
    case transmit = "tx"

    /// The vring index vhost-net gives the direction.
    public var vring: VringIndex { self == .receive ? .receive : .transmit }
}

/// Why the device stopped a vring: the first rule a published chain breaks, each with the
/// kernel's own words for it (vhost.c vhost_get_vq_desc and get_indirect, net.c handle_tx and
/// get_rx_bufs), or, when none is broken, what else may be wrong.
public enum RingErrorCause: Sendable, Equatable, CustomStringConvertible {
    /// Where a descriptor address outside the memory table was found.
    public enum Place: Sendable, Equatable {
        case descriptor(UInt16)
        case indirectTable
        case indirectEntry(Int)
    }

    /// avail->idx in memory differs from what the driver published ("Invalid available index
    /// change"; "Guest moved used index" before).
    case availIndexMoved(inMemory: UInt16, published: UInt16)
    /// An avail slot names a head beyond the ring ("Guest says index %u > %u is available").
    case headOutOfRange(slot: UInt16, head: UInt16, size: UInt16)
    /// The chain at this head loops ("Loop detected").
    case loop(head: UInt16)
    /// An indirect table whose length is not a multiple of 16 (get_indirect).
    case indirectLength(head: UInt16, length: UInt32)
    /// An indirect table entry that is itself indirect ("Nested indirect descriptor").
    case nestedIndirect(head: UInt16, entry: Int)
    /// An address outside the memory table (translate_desc: EFAULT).
    case outsideMemoryTable(head: UInt16, place: Place, address: UInt64, length: UInt32)
    /// A readable descriptor after a writable one ("Descriptor has out after in").
    case readableAfterWritable(head: UInt16)
    /// A device-writable descriptor on TX ("Unexpected descriptor format for TX").
    case writableOnTransmit(head: UInt16)
    /// A device-readable descriptor on RX ("unexpected descriptor format for RX").
    case readableOnReceive(head: UInt16)
    /// A next index beyond the ring ("Desc index is %u > %u").
    case nextOutOfRange(head: UInt16, next: UInt16, size: UInt16)
    /// Every published chain follows the rules; with an IOMMU, the device may have been denied
    /// an access the rings allow ("Translation failure").
    case noRuleBroken(iommuMayDenyAccess: Bool)

    /// Whether a descriptor, an indirect table or one of its entries lies outside the memory table.
    public var isOutsideMemoryTable: Bool { if case .outsideMemoryTable = self { return true }; return false }

    /// The head of the chain that breaks the rule, where there is one.
    public var head: UInt16? {
        switch self {
        case .headOutOfRange(_, let head, _), .loop(let head), .indirectLength(let head, _), .nestedIndirect(let head, _),
             .outsideMemoryTable(let head, _, _, _), .readableAfterWritable(let head), .writableOnTransmit(let head),
             .readableOnReceive(let head), .nextOutOfRange(let head, _, _):
            head
        case .availIndexMoved, .noRuleBroken: nil
        }
    }

    /// The kernel's own words for the fault, as `vq_err` prints them: any one of these is in the
    /// kernel's message (kernels word some faults differently). Empty where it says nothing.
    public var kernelWords: [String] {
        switch self {
        // 6.1.0-57, 6.12.117 and 7.2.13 say "Invalid available index change from %u to %u";
        // older kernels "Guest moved used index from %u to %u".
        case .availIndexMoved: ["Invalid available index change", "Guest moved"]
        case .headOutOfRange: ["is available"]
        case .loop: ["Loop detected"]
        case .indirectLength: ["Invalid length in indirect descriptor"]
        case .nestedIndirect: ["Nested indirect descriptor"]
        case .outsideMemoryTable: ["Translation failure"]
        case .readableAfterWritable: ["Descriptor has out after in"]
        case .writableOnTransmit: ["Unexpected descriptor format for TX"]
        case .readableOnReceive: ["unexpected descriptor format for RX"]
        case .nextOutOfRange: ["Desc index is"]
        case .noRuleBroken(let iommu): iommu ? ["Translation failure"] : []
        }
    }

    public var description: String {
        func gpa(_ a: UInt64) -> String { "gpa 0x" + String(a, radix: 16) }
        switch self {
        case .availIndexMoved(let memory, let published):
            return "avail->idx in memory is \(memory), but the driver published \(published) (vhost.c: \"Invalid available index change\")"
        case .headOutOfRange(let slot, let head, let size):
            return "avail slot \(slot) names head \(head), but the ring has \(size) descriptors (vhost.c: \"Guest says index \(head) > \(size) is available\")"
        case .loop(let head):
            return "the chain at head \(head) loops (vhost.c: \"Loop detected\")"
        case .indirectLength(let head, let length):
            return "head \(head): indirect table of \(length) bytes, not a multiple of 16 (get_indirect)"
        case .nestedIndirect(let head, let entry):
            return "head \(head): entry \(entry) of its indirect table is itself indirect (get_indirect: \"Nested indirect descriptor\")"
        case .outsideMemoryTable(let head, let place, let address, let length):
            switch place {
            case .indirectTable:
                return "head \(head): indirect table at \(gpa(address)) (+\(length)) is outside the memory table (translate_desc: EFAULT)"
            case .indirectEntry(let entry):
                return "head \(head): entry \(entry) of its indirect table points at \(gpa(address)) (+\(length)), outside the memory table (translate_desc: EFAULT)"
            case .descriptor(let index):
                return "descriptor \(index) of head \(head) points at \(gpa(address)) (+\(length)), outside the memory table (translate_desc: EFAULT)"
            }
        case .readableAfterWritable(let head):
            return "head \(head): a readable descriptor after a writable one (vhost.c: \"Descriptor has out after in\")"
        case .writableOnTransmit(let head):
            return "head \(head): a device-writable descriptor on TX (net.c: \"Unexpected descriptor format for TX\")"
        case .readableOnReceive(let head):
            return "head \(head): a device-readable descriptor on RX (net.c: \"unexpected descriptor format for RX\")"
        case .nextOutOfRange(let head, let next, let size):
            return "head \(head): next \(next) ≥ queue size \(size) (vhost.c: \"Desc index is %u > %u\")"
        case .noRuleBroken(let iommu):
            return iommu
                ? "every published chain follows the rules; the IOMMU may map a page the device needed without the permission (vhost.c: \"Translation failure\")"
                : "every published chain follows the rules; the device may have failed to reach a ring address or the memory table"
        }
    }
}
