import Synchronization
import Vhost
import Virtio

/// The device reported an error on a vring: vhost.c `vq_err` signals the vring's error eventfd
/// (`VHOST_SET_VRING_ERR`), and the queue then stops until the next kick. The event says which
/// queue, how many errors, what the driver had published, and the likely cause, found by checking
/// every chain in flight against the rules the device enforces.
public struct RingErrorEvent: Sendable, Equatable, CustomStringConvertible {
    /// `rx` or `tx` (the endpoint prefixes the queue pair: `pair 1 tx`).
    public var queue: String
    /// Errors signalled since the last event (the eventfd's counter).
    public var count: UInt64
    /// The avail index the driver last published, and the used index it last reaped.
    public var availIndex: UInt16
    public var usedIndex: UInt16
    /// Chains given to the device and not yet returned.
    public var inFlight: Int
    /// The first rule a published chain breaks, as the kernel words it, or what else may be wrong.
    public var likelyCause: String

    public var description: String {
        "ring error on \(queue) (\(count)×): driver published avail idx \(availIndex), reaped used idx \(usedIndex), \(inFlight) in flight; likely cause: \(likelyCause)"
    }
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
        return RingErrorEvent(queue: name, count: count, availIndex: driver.publishedAvailIndex, usedIndex: driver.lastUsedIndex,
                              inFlight: driver.inFlight, likelyCause: diagnose())
    }

    /// The first rule a published, unreaped chain breaks (vhost.c vhost_get_vq_desc, get_indirect;
    /// net.c handle_tx, get_rx_bufs), checked on the driver's own memory.
    func diagnose() -> String {
        let ring = driver.ring
        let size = ring.queueSize
        // SAFETY: the driver reads its own ring memory; the device only reads the descriptor
        // table and avail ring, and the values are only inspected, never trusted for pointers.
        let published = ring.availIndex.pointee.load(ordering: .acquiring)
        // Against what was published, not the shadow: chains added since are not the device's yet.
        if published != driver.publishedAvailIndex {
            return "avail->idx in memory is \(published), but the driver published \(driver.publishedAvailIndex) (vhost.c: \"Guest moved avail index\")"
        }
        var slot = driver.lastUsedIndex
        while slot != published {
            let head = ring.availEntry(slot)
            if head >= size { return "avail slot \(slot) names head \(head), but the ring has \(size) descriptors (vhost.c: \"Guest says index \(head) > \(size) is available\")" }
            var index = head, visited = 0, sawWritable = false
            while true {
                visited += 1
                if visited > Int(size) { return "the chain at head \(head) loops (vhost.c: \"Loop detected\")" }
                let d = ring.descriptor(index)
                if d.flags.contains(.indirect) {
                    if d.length % 16 != 0 { return "head \(head): indirect table of \(d.length) bytes, not a multiple of 16 (get_indirect)" }
                    guard let table = memory.host(guest: d.address &- addressOffset, length: Int(d.length)) else {
                        return "head \(head): indirect table at gpa 0x\(String(d.address, radix: 16)) (+\(d.length)) is outside the memory table (translate_desc: EFAULT)"
                    }
                    // get_indirect reads the table in order; check its entries as the kernel does.
                    for entry in 0..<Int(d.length) / SplitRingLayout.descriptorSize {
                        let base = table + entry * SplitRingLayout.descriptorSize
                        let flags = DescriptorFlags(rawValue: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self)))
                        let address = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
                        let length = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
                        if flags.contains(.indirect) { return "head \(head): entry \(entry) of its indirect table is itself indirect (get_indirect: \"Nested indirect descriptor\")" }
                        if length > 0 && !memory.contains(guest: address &- addressOffset, length: Int(length)) {
                            return "head \(head): entry \(entry) of its indirect table points at gpa 0x\(String(address, radix: 16)) (+\(length)), outside the memory table (translate_desc: EFAULT)"
                        }
                        if !flags.contains(.next) { break }
                    }
                } else {
                    if d.length > 0 && !memory.contains(guest: d.address &- addressOffset, length: Int(d.length)) {
                        return "descriptor \(index) of head \(head) points at gpa 0x\(String(d.address, radix: 16)) (+\(d.length)), outside the memory table (translate_desc: EFAULT)"
                    }
                    let writable = d.flags.contains(.write)
                    if sawWritable && !writable { return "head \(head): a readable descriptor after a writable one (vhost.c: \"Descriptor has out after in\")" }
                    sawWritable = sawWritable || writable
                    if self.index == VhostNetDevice.transmitQueueIndex && writable {
                        return "head \(head): a device-writable descriptor on TX (net.c: \"Unexpected descriptor format for TX\")"
                    }
                    if self.index == VhostNetDevice.receiveQueueIndex && !writable {
                        return "head \(head): a device-readable descriptor on RX (net.c: \"unexpected descriptor format for RX\")"
                    }
                }
                guard d.flags.contains(.next) else { break }
                if d.next >= size { return "head \(head): next \(d.next) ≥ queue size \(size) (vhost.c: \"Desc index is %u > %u\")" }
                index = d.next
            }
            slot &+= 1
        }
        return "every published chain follows the rules; the device may have failed to reach a ring address or the memory table"
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
