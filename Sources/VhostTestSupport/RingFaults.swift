import Synchronization
import Vhost
import VhostNet
import Virtio

// Fault injection for the tests (the unit tier, DatapathSuite, vhost-kernel-tests): break a
// ring on purpose, see what the device answers on its error eventfd, then put it right. It
// lives here, not in VhostNet, so that no product links code that corrupts its own rings; it
// reaches the queues through VhostNet's `package` API (`VirtioNetQueuePair.modifyQueue`, and
// NetQueue's chain helpers), and the rings through Virtio's `package` `SplitRing`.

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
// SAFETY (@unchecked Sendable): the table pointers name indirect-table entries in guest memory
// the queue pair owns, and are written only by `repair`, on the thread that drives the pair.
public struct InjectedFault: @unchecked Sendable {
    /// What was broken.
    public let fault: RingFault
    /// The first chain broken (on TX the only one).
    public var head: UInt16 { chains[0].head }
    let chains: [(head: UInt16, slot: UInt16, descriptor: Descriptor)]
    /// `avail->idx` as published, when the fault moved it.
    var availIndex: UInt16? = nil
    /// The first entry of each chain's indirect table, when the fault changed it.
    var tableEntries: [(pointer: UnsafeMutableRawPointer, bytes: [UInt8])] = []
}

/// A queue pair whose rings a test may break on purpose (`VirtioNetQueuePair` conforms, on
/// every backend): the device's answer arrives as a `RingErrorEvent` (`takeRingErrors`).
public protocol RingFaultInjecting: AnyObject {
    /// Breaks one new TX chain (carrying `frame`) as `fault` says, publishes it and kicks: the
    /// device's answer arrives on the error eventfd. Nil when the ring is full.
    func injectTransmitFault(_ fault: RingFault, frame: [UInt8]) -> InjectedFault?
    /// Breaks every posted RX buffer not yet reaped as `fault` says, and kicks (the device finds
    /// the next one broken when a frame arrives). Nil when no buffer is posted.
    func injectReceiveFault(_ fault: RingFault) -> InjectedFault?
    /// Puts an injected fault right and kicks the queue it was on.
    func repair(_ injected: InjectedFault, onTransmit: Bool)
}

extension VirtioNetQueuePair: RingFaultInjecting where Backend: ~Copyable, Port: ~Copyable {
    /// Breaks one new TX chain (carrying `frame`) as `fault` says, publishes it and kicks.
    public func injectTransmitFault(_ fault: RingFault, frame: [UInt8]) -> InjectedFault? {
        modifyQueue(transmit: true) { $0.inject(fault, frame: frame) }
    }

    /// Breaks every posted RX buffer not yet reaped as `fault` says, and kicks.
    public func injectReceiveFault(_ fault: RingFault) -> InjectedFault? {
        modifyQueue(transmit: false) { $0.inject(fault, frame: []) }
    }

    /// Puts an injected fault right and kicks the queue it was on.
    public func repair(_ injected: InjectedFault, onTransmit: Bool) {
        modifyQueue(transmit: onTransmit) { $0.repair(injected) }
    }
}

extension NetQueue {
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
