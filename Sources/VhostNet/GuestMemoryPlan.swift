import Vhost
import Virtio

/// Where guest memory lies.
public enum MemoryPlacement: String, Sendable, CaseIterable {
    /// One region at 1 GiB.
    case single
    /// Two regions with a hole between them, like a real VM below and above 4 GiB: one at
    /// 0x0020_0000, one at 0x1_0000_0000. Buffers alternate between them.
    case belowAndAbove4GiB
}

/// How a frame's descriptors are laid out.
public enum DescriptorLayout: String, Sendable, CaseIterable {
    /// One descriptor: the virtio-net header inline before the frame.
    case inline
    /// A chain of two: the header in its own descriptor, then the frame.
    case separateHeader
    /// One ring slot with VRING_DESC_F_INDIRECT, pointing at a two-entry table (header, frame)
    /// in guest memory (needs VIRTIO_F_INDIRECT_DESC).
    case indirect
}

/// The one plan for a queue pair's guest memory: the regions, and for each of the two queues a
/// ring block plus, per descriptor head, a frame buffer (and, by layout, a header buffer and an
/// indirect table). The queues take their memory from `carveQueue`; nothing else repeats this
/// arithmetic.
public struct GuestMemoryPlan: Sendable, Equatable {
    /// The RX ring's size (and the TX ring's, unless `transmitQueueSize` differs).
    public var queueSize: Int
    /// The TX ring's size.
    public var transmitQueueSize: Int
    /// Bytes per frame buffer (with the header inline for `.inline`).
    public var bufferSize: Int
    /// The virtio-net header length (10 or 12).
    public var headerLength: Int
    public var layout: DescriptorLayout
    public var placement: MemoryPlacement
    public var extraMemory: Int
    /// Bytes of the one large TX buffer (frames bigger than a buffer), 0 for none.
    public var largeTransmitBuffer: Int

    /// `transmitQueueSize` nil: the TX ring is `queueSize` too.
    public init(queueSize: Int, transmitQueueSize: Int? = nil, bufferSize: Int, headerLength: Int, layout: DescriptorLayout, placement: MemoryPlacement, extraMemory: Int = 0,
                largeTransmitBuffer: Int = 0) {
        self.queueSize = queueSize; self.transmitQueueSize = transmitQueueSize ?? queueSize
        self.bufferSize = bufferSize; self.headerLength = headerLength
        self.layout = layout; self.placement = placement; self.extraMemory = extraMemory
        self.largeTransmitBuffer = largeTransmitBuffer
    }

    /// One queue's ring block: descriptors, avail and used rings, in whole pages so that no
    /// buffer shares a page with a ring (the dirty log marks 4 KiB pages: vhost.c log_write).
    public var ringBlockSize: Int { ringBlockSize(queueSize: queueSize) }

    /// The ring block of a ring of `queueSize` descriptors, in whole pages.
    public func ringBlockSize(queueSize: Int) -> Int { (SplitRingLayout.offsets(queueSize: queueSize).total + 4095) & ~4095 }

    /// Bytes one head needs at most: its frame buffer, header buffer and table, with alignment.
    var perHead: Int { ((bufferSize + 63) & ~63) + 16 + 32 }

    /// The guest memory regions: sizes rounded to 2 MiB so that huge pages can back them.
    public var regions: [GuestMemory.Layout] {
        let rings = ringBlockSize(queueSize: queueSize) + ringBlockSize(queueSize: transmitQueueSize) + 2 * 4096
        let buffers = (queueSize + transmitQueueSize) * perHead
        let large = largeTransmitBuffer > 0 ? (largeTransmitBuffer + 63) & ~63 : 0
        func rounded(_ n: Int) -> Int { (n + GuestMemory.hugePageSize - 1) & ~(GuestMemory.hugePageSize - 1) }
        switch placement {
        case .single:
            return [GuestMemory.Layout(guestAddress: GuestMemory.defaultGuestBase, size: rounded(rings + buffers + large + extraMemory + 4096))]
        case .belowAndAbove4GiB:
            // Rings and half the buffers low, half the buffers above the 4 GiB boundary.
            return [GuestMemory.Layout(guestAddress: 0x20_0000, size: rounded(rings + buffers / 2 + large + extraMemory + 8192)),
                    GuestMemory.Layout(guestAddress: 0x1_0000_0000, size: rounded(buffers / 2 + 8192))]
        }
    }

    /// Carves one queue's ring block and per-head buffers out of `memory` (made from `regions`).
    /// With several regions, heads alternate between them. With `largeBuffer` (the TX queue) the
    /// plan's large buffer is carved too, in the first region. `transmit` takes the TX ring's size.
    public func carveQueue(from memory: inout GuestMemory, transmit: Bool = false, largeBuffer: Bool = false) throws(VhostError) -> QueueMemory {
        let queueSize = transmit ? transmitQueueSize : queueSize
        let ringBlockSize = ringBlockSize(queueSize: queueSize)
        let ringBlock = try memory.allocate(ringBlockSize, alignment: 4096)
        let offsets = SplitRingLayout.offsets(queueSize: queueSize)
        let regionCount = memory.map.regions.count
        var buffers: [GuestBuffer] = [], headers: [GuestBuffer] = [], tables: [GuestBuffer] = []
        buffers.reserveCapacity(queueSize)
        for head in 0..<queueSize {
            let region = head % regionCount
            buffers.append(try memory.allocate(bufferSize, alignment: 64, region: region))
            if layout != .inline { headers.append(try memory.allocate(headerLength, alignment: 16, region: region)) }
            if layout == .indirect { tables.append(try memory.allocate(2 * SplitRingLayout.descriptorSize, alignment: 16, region: region)) }
        }
        let large = largeBuffer && largeTransmitBuffer > 0 ? try memory.allocate(largeTransmitBuffer, alignment: 64, region: 0) : nil
        return QueueMemory(ringBlock: ringBlock, descriptors: ringBlock.slice(offset: offsets.descriptors, length: SplitRingLayout.descriptorTableSize(queueSize: queueSize)),
                           avail: ringBlock.slice(offset: offsets.avail, length: SplitRingLayout.availRingSize(queueSize: queueSize)),
                           used: ringBlock.slice(offset: offsets.used, length: SplitRingLayout.usedRingSize(queueSize: queueSize)),
                           buffers: buffers, headers: headers, tables: tables, tableRegions: memory.map.regions, large: large)
    }
}

/// One queue's part of guest memory, as the plan carved it. Non-owning: it points into a
/// `GuestMemory` that the session keeps mapped for as long as the queue is used.
public struct QueueMemory: Sendable {
    public let ringBlock: GuestBuffer
    public let descriptors: GuestBuffer
    public let avail: GuestBuffer
    public let used: GuestBuffer
    /// Per head: the frame buffer (with the header inline for `.inline`).
    public let buffers: [GuestBuffer]
    /// Per head: the header buffer (`.separateHeader`, `.indirect`).
    public let headers: [GuestBuffer]
    /// Per head: the two-entry indirect table (`.indirect`).
    public let tables: [GuestBuffer]
    /// The regions of the memory table the queue's memory belongs to.
    public let tableRegions: [GuestMemoryRegion]
    /// The large buffer for frames bigger than a buffer (TX, when the plan has one): laid out
    /// as a head's buffer (the header inline first for `.inline`).
    public var large: GuestBuffer? = nil

    /// The same queue memory in a copy of guest memory: every buffer at the same guest-physical
    /// address, at the copy's host address.
    func moved(to map: GuestMemoryMap) throws(VhostError) -> QueueMemory {
        func move(_ buffer: GuestBuffer) throws(VhostError) -> GuestBuffer {
            guard let host = map.host(guest: buffer.guestAddress, length: buffer.length) else {
                throw .invalidConfiguration("the copy of guest memory has no \(buffer.guestAddress) (+\(buffer.length)): it must have the source's layout")
            }
            return GuestBuffer(guestAddress: buffer.guestAddress, host: host, length: buffer.length)
        }
        func moveAll(_ list: [GuestBuffer]) throws(VhostError) -> [GuestBuffer] {
            var result: [GuestBuffer] = []
            result.reserveCapacity(list.count)
            for buffer in list { result.append(try move(buffer)) }
            return result
        }
        return QueueMemory(ringBlock: try move(ringBlock), descriptors: try move(descriptors), avail: try move(avail), used: try move(used),
                           buffers: try moveAll(buffers), headers: try moveAll(headers), tables: try moveAll(tables), tableRegions: map.regions,
                           large: try large.map { buffer throws(VhostError) in try move(buffer) })
    }

    /// The split ring over the three parts (`package`, as `SplitRing` is).
    package var ring: SplitRing {
        SplitRing(queueSize: UInt16(buffers.count), descriptors: descriptors.host, avail: avail.host, used: used.host)
    }

    /// What VHOST_SET_VRING_ADDR takes: the host addresses of the three parts, and with
    /// `logged` the used ring's guest-physical address for the dirty log.
    public func vringAddresses(logged: Bool = false, iovaOffset: UInt64? = nil) -> VringAddresses {
        if let iovaOffset {
            // With VIRTIO_F_ACCESS_PLATFORM the ring addresses are IOVAs (vhost.c vq_access_ok
            // leaves them to the IOTLB), not host addresses.
            return VringAddresses(descriptors: HostAddress(unchecked: descriptors.guestAddress.rawValue + iovaOffset),
                                  avail: HostAddress(unchecked: avail.guestAddress.rawValue + iovaOffset),
                                  used: HostAddress(unchecked: used.guestAddress.rawValue + iovaOffset), log: logged ? used.guestAddress : nil)
        }
        return VringAddresses(descriptors: HostAddress(descriptors.host), avail: HostAddress(avail.host), used: HostAddress(used.host),
                              log: logged ? used.guestAddress : nil)
    }
}
