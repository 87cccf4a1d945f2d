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

/// Ways to break a ring on purpose, to see what the device answers (fault injection). Each
/// corrupts one chain the driver has just added, publishes it and kicks; `repair` puts it right.
public enum RingFault: String, Sendable, CaseIterable {
    /// A descriptor whose guest-physical address lies outside the memory table (translate_desc: EFAULT).
    case addressOutsideMemory
    /// An avail entry naming a head ≥ the queue size ("Guest says index %u > %u is available").
    case headOutOfRange
    /// A descriptor chained to itself ("Loop detected").
    case chainLoop
    /// A device-writable descriptor on TX, or a device-readable one on RX (net.c handle_tx/handle_rx).
    case wrongDirection
    /// A descriptor whose length runs past the end of its memory region (translate_desc: EFAULT).
    case lengthOverflow
    /// `avail->idx` moved more than the queue size past what the device used ("Guest moved avail index").
    case availIndexJump
    /// An indirect descriptor whose length is not a multiple of 16 (get_indirect; needs the indirect layout).
    case indirectLengthNotMultipleOf16
    /// An indirect table holding an indirect descriptor (get_indirect "Nested indirect descriptor").
    case nestedIndirect
}

/// A fault that was injected: the chains it broke, and what to restore.
public struct InjectedFault: @unchecked Sendable {
    public let fault: RingFault
    /// The first chain broken (on TX the only one).
    public var head: UInt16 { chains[0].head }
    let chains: [(head: UInt16, slot: UInt16, descriptor: Descriptor)]
    /// `avail->idx` as published, when the fault moved it.
    var availIndex: UInt16? = nil
    /// The first entry of each chain's indirect table, when the fault changed it.
    var tableEntries: [(pointer: UnsafeMutableRawPointer, bytes: [UInt8])] = []
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

    /// Breaks chains as `fault` says and kicks. On TX it is one new chain carrying `frame`,
    /// broken before it is published. On RX, where every free buffer is already posted and the
    /// host may fill some at any moment, it is every posted buffer the driver has not reaped,
    /// so that whichever the device takes next is broken. Nil when there is no such chain.
    mutating func inject(_ fault: RingFault, frame: [UInt8]) -> InjectedFault? {
        let ring = driver.ring
        var targets: [(head: UInt16, slot: UInt16)] = []
        if index == VhostNetDevice.receiveQueueIndex {
            var slot = driver.lastUsedIndex
            while slot != driver.availIndexShadow {
                targets.append((ring.availEntry(slot), slot))
                slot &+= 1
            }
        } else if canAddChain, let next = driver.nextFreeHead {
            let length = min(frame.count, frameCapacity)
            // SAFETY: the head is free, so the device does not read its buffers before the
            // avail entry naming it is published below.
            VirtioNetHeader().write(to: headerPointer(next), length: headerLength)
            frame.withUnsafeBytes { framePointer(next).copyMemory(from: $0.baseAddress!, byteCount: length) }
            if addChain(frameLength: length, deviceWritable: false) == next { targets.append((next, driver.availIndexShadow &- 1)) }
        }
        guard !targets.isEmpty else { return nil }
        var injected = InjectedFault(fault: fault, chains: [])
        var chains: [(head: UInt16, slot: UInt16, descriptor: Descriptor)] = []
        for (head, slot) in targets {
            let original = ring.descriptor(head)
            var broken = original
            switch fault {
            case .addressOutsideMemory: broken.address = 0x7ff0_0000_0000
            case .headOutOfRange: ring.setAvailEntry(slot, head: ring.queueSize &+ 3)
            case .chainLoop: broken.flags.insert(.next); broken.next = head
            case .wrongDirection:
                if broken.flags.contains(.write) { broken.flags.remove(.write) } else { broken.flags.insert(.write) }
            case .lengthOverflow: broken.length = UInt32.max
            case .availIndexJump: break
            case .indirectLengthNotMultipleOf16:
                if broken.flags.contains(.indirect) { broken.length = 20 }
            case .nestedIndirect:
                if broken.flags.contains(.indirect), layout == .indirect {
                    // SAFETY: the table belongs to this head, which the device has not taken yet.
                    let entry = memory.tables[Int(head)].host
                    injected.tableEntries.append((entry, Array(UnsafeRawBufferPointer(start: entry, count: SplitRingLayout.descriptorSize))))
                    let flags = UInt16(littleEndian: entry.loadUnaligned(fromByteOffset: 12, as: UInt16.self)) | DescriptorFlags.indirect.rawValue
                    entry.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
                }
            }
            // SAFETY: fault injection writes chains the device may read at any time from here
            // on; that race is what is being tested, and the fields are plain values it checks.
            ring.setDescriptor(head, broken)
            chains.append((head, slot, original))
        }
        injected = InjectedFault(fault: fault, chains: chains, availIndex: nil, tableEntries: injected.tableEntries)
        publishAndKick()
        if fault == .availIndexJump {
            injected.availIndex = driver.availIndexShadow
            ring.availIndex.pointee.store(driver.lastUsedIndex &+ ring.queueSize &+ 5, ordering: .releasing)
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        kick.signal()
        return injected
    }

    /// Puts an injected fault right and kicks: the device, stopped since its error, reads the
    /// chain again (a chain the device consumed without a used entry stays lost; see `RingFault`).
    mutating func repair(_ injected: InjectedFault) {
        let ring = driver.ring
        for chain in injected.chains {
            ring.setDescriptor(chain.head, chain.descriptor)
            ring.setAvailEntry(chain.slot, head: chain.head)
        }
        for entry in injected.tableEntries { entry.bytes.withUnsafeBytes { entry.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        if let published = injected.availIndex { ring.availIndex.pointee.store(published, ordering: .releasing) }
        // Make the restored chain visible before the kick (the same ordering publish() gives).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        kick.signal()
        counters.kicks += 1
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
