import Benchmark
import NetFormats
import VhostNet
import Virtio

/// A split ring and buffers in one heap block at a fake guest-physical base.
final class RingBlock: @unchecked Sendable {
    /// The three parts of the ring, laid out by SplitRingLayout.offsets at the block's start.
    let queueSize: UInt16
    let descriptors: UnsafeMutableRawPointer
    let avail: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer
    let block: UnsafeMutableRawPointer
    let size: Int
    let buffers: Int
    static let guestBase: UInt64 = 0x4000_0000

    init(queueSize: UInt16) {
        let layout = SplitRingLayout.offsets(queueSize: Int(queueSize))
        buffers = (layout.total + 4095) & ~4095
        size = buffers + 2 * 1 << 20
        block = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        block.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        self.queueSize = queueSize
        descriptors = block + layout.descriptors
        avail = block + layout.avail
        used = block + layout.used
    }

    func address(_ offset: Int) -> UInt64 { RingBlock.guestBase + UInt64(buffers + offset) }

    var translate: @Sendable (UInt64, UInt32) -> UnsafeMutableRawPointer? {
        let size = size
        nonisolated(unsafe) let block = block
        return { address, length in
            guard address >= RingBlock.guestBase, address - RingBlock.guestBase + UInt64(length) <= UInt64(size) else { return nil }
            return block + Int(address - RingBlock.guestBase)
        }
    }
}

/// One full ring's worth of chains through driver → device model → driver.
func roundTrip(_ memory: RingBlock, eventIndex: Bool, indirect: Bool, batch: Int) {
    var driver = SplitVirtqueueDriver(queueSize: memory.queueSize, descriptors: memory.descriptors, avail: memory.avail, used: memory.used,
                                      eventIndex: eventIndex)
    var device = SplitVirtqueueDevice(queueSize: memory.queueSize, descriptors: memory.descriptors, avail: memory.avail, used: memory.used,
                                      direction: .transmit, eventIndex: eventIndex, translate: memory.translate)
    let header = BufferSegment(address: memory.address(0), length: 12, deviceWritable: false)
    let frame = BufferSegment(address: memory.address(64), length: 64, deviceWritable: false)
    for round in 0..<batch {
        if indirect {
            let table = memory.block + memory.buffers + 4096 + (round % 256) * 32
            _ = driver.addIndirect([header, frame], table: table, tableAddress: memory.address(4096 + (round % 256) * 32))
        } else {
            _ = driver.add(frame)
        }
        if driver.freeCount == 0 || round == batch - 1 {
            blackHole(driver.publish())
            while let chain = try? device.pop() { device.push(head: chain.head, length: 0) }
            blackHole(device.shouldSignal())
            while let used = try? driver.nextUsed() { blackHole(used) }
        }
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal], maxDuration: .seconds(1))

    for eventIndex in [true, false] {
        Benchmark("ring round trip, 4096 one-descriptor chains, \(eventIndex ? "EVENT_IDX" : "flags")") { benchmark in
            let memory = RingBlock(queueSize: 256)
            for _ in benchmark.scaledIterations { roundTrip(memory, eventIndex: eventIndex, indirect: false, batch: 4096) }
        }
    }
    Benchmark("ring round trip, 4096 indirect chains (header + frame)") { benchmark in
        let memory = RingBlock(queueSize: 256)
        for _ in benchmark.scaledIterations { roundTrip(memory, eventIndex: true, indirect: true, batch: 4096) }
    }
    Benchmark("virtio_net_hdr: write and read 12 bytes") { benchmark in
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)
        let header = VirtioNetHeader(flags: .needsChecksum, gsoType: 1, headerLength: 54, gsoSize: 1448, checksumStart: 34, checksumOffset: 16, numBuffers: 1)
        for _ in benchmark.scaledIterations {
            header.write(to: buffer, length: 12)
            blackHole(VirtioNetHeader(reading: buffer, length: 12))
        }
        buffer.deallocate()
    }
    Benchmark("responder: answer an ICMP echo request") { benchmark in
        let me = IPv4Address(10, 0, 0, 2), peer = IPv4Address(10, 0, 0, 1)
        var responder = NetworkResponder(mac: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56), ipv4: IPv4Interface(address: me, prefixLength: 24), udpEchoPort: 7)
        var icmp: [UInt8] = [8, 0, 0, 0, 0x12, 0x34, 0, 1] + [UInt8](repeating: 0x42, count: 56)
        let sum = internetChecksum(icmp[...]); icmp[2] = UInt8(sum >> 8); icmp[3] = UInt8(sum & 0xff)
        let request = IPv4Packet.frame(destinationMAC: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56), sourceMAC: MACAddress(2, 0, 0, 0, 0, 1),
                                       source: peer, destination: me, protocolNumber: 1, payload: icmp)
        for _ in benchmark.scaledIterations { blackHole(responder.respond(to: request)) }
    }
}
