import Testing
@testable import Virtio

@Suite("Wire formats against annotated bytes")
struct WireFormatTests {
    @Test("virtio_net_hdr_mrg_rxbuf: 12 little-endian bytes")
    func netHeader12() {
        let header = VirtioNetHeader(flags: .needsChecksum, gsoType: VirtioNetHeader.GSOType.tcpV4.rawValue,
                                     headerLength: 0x0036, gsoSize: 0x05a8, checksumStart: 0x0022,
                                     checksumOffset: 0x0010, numBuffers: 0x0003)
        let expected: [UInt8] = [
            0x01,       // flags: NEEDS_CSUM
            0x01,       // gso_type: TCPV4
            0x36, 0x00, // hdr_len 54
            0xa8, 0x05, // gso_size 1448
            0x22, 0x00, // csum_start 34
            0x10, 0x00, // csum_offset 16
            0x03, 0x00, // num_buffers 3
        ]
        #expect(header.bytes(length: 12) == expected)
        #expect(VirtioNetHeader(bytes: expected) == header)
        #expect(header.bytes(length: 10) == Array(expected.prefix(10)))
    }

    @Test("header length follows the features (net.c vhost_net_set_features)")
    func headerLength() {
        #expect(VirtioFeatures([]).netHeaderLength == 10)
        #expect(VirtioFeatures.version1.netHeaderLength == 12)
        #expect(VirtioFeatures.netMergeableRxBuffers.netHeaderLength == 12)
        #expect(VirtioFeatures.eventIndex.netHeaderLength == 10)
    }

    @Test("descriptor: addr u64, len u32, flags u16, next u16")
    func descriptorBytes() {
        let memory = TestRingMemory(queueSize: 2)
        memory.ring.setDescriptor(1, Descriptor(address: 0x1122_3344_5566_7788, length: 0x0000_05ea, flags: [.next, .write], next: 1))
        let bytes = (16..<32).map { memory.block.load(fromByteOffset: $0, as: UInt8.self) }
        #expect(bytes == [
            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // addr
            0xea, 0x05, 0x00, 0x00,                         // len 1514
            0x03, 0x00,                                     // flags NEXT|WRITE
            0x01, 0x00,                                     // next 1
        ])
    }

    @Test("feature names decode the 6.1 kernel's offer")
    func featureNames() {
        let offered = VirtioFeatures(rawValue: 0x33d008000)
        #expect(offered.featureNames == ["NET_F_MRG_RXBUF", "F_NOTIFY_ON_EMPTY", "VHOST_F_LOG_ALL",
                                         "F_ANY_LAYOUT/VHOST_NET_F_VIRTIO_NET_HDR", "F_INDIRECT_DESC",
                                         "F_EVENT_IDX", "F_VERSION_1", "F_ACCESS_PLATFORM"])
        #expect(VirtioFeatures.parse("EVENT_IDX") == .eventIndex)
        #expect(VirtioFeatures.parse("mrg_rxbuf") == .netMergeableRxBuffers)
        #expect(VirtioFeatures.parse("VHOST_NET_F_VIRTIO_NET_HDR") == .vhostNetVirtioNetHeader)
        #expect(VirtioFeatures.parse("nonsense") == nil)
        // Every printed name, each alias of a shared bit, and the short and VIRTIO_ spellings.
        for (bit, name) in VirtioFeatures.names {
            for alias in name.split(separator: "/") {
                #expect(VirtioFeatures.parse(String(alias)) == VirtioFeatures(bit: bit), "\(alias)")
                #expect(VirtioFeatures.parse("virtio_" + alias.lowercased()) == VirtioFeatures(bit: bit), "virtio_\(alias)")
            }
        }
        #expect(VirtioFeatures.parse("F_ANY_LAYOUT") == VirtioFeatures(bit: 27))
        #expect(VirtioFeatures.parse("ANY_LAYOUT") == VirtioFeatures(bit: 27))
        #expect(VirtioFeatures.parse("F_LOG_ALL") == .logAll)
        #expect(VirtioFeatures.parse("LOG_ALL") == nil)
        #expect(VirtioFeatures.parse("29") == .eventIndex)
        #expect(HighFeatures.parse("virtio_net_f_guest_udp_tunnel_gso") == .netGuestUDPTunnelGSO)
    }

    @Test("vring_need_event across the 16-bit wrap")
    func needEvent() {
        #expect(vringNeedEvent(event: 5, new: 6, old: 5))
        #expect(!vringNeedEvent(event: 10, new: 6, old: 5))
        #expect(vringNeedEvent(event: 65535, new: 2, old: 65534))
        #expect(!vringNeedEvent(event: 3, new: 2, old: 65534))
    }
}
