import Testing
@testable import NetFormats

@Suite("MAC addresses")
struct MACAddressTests {
    @Test("MAC addresses parse and print")
    func mac() {
        #expect(MACAddress(parsing: "52:54:00:12:34:5a")?.description == "52:54:00:12:34:5a")
        #expect(MACAddress(parsing: "52:54:00:12:34") == nil)
        #expect(MACAddress(parsing: "52:54:00:12:34:zz") == nil)
    }
}

@Suite("pcap and ARP against annotated bytes")
struct CaptureFormatTests {
    @Test("pcap global and record headers, little-endian, microseconds, LINKTYPE_ETHERNET")
    func pcapHeaders() throws {
        #expect(Pcap.globalHeader() == [
            0xd4, 0xc3, 0xb2, 0xa1, // magic 0xa1b2c3d4 (µs)
            0x02, 0x00, 0x04, 0x00, // version 2.4
            0x00, 0x00, 0x00, 0x00, // thiszone
            0x00, 0x00, 0x00, 0x00, // sigfigs
            0xff, 0xff, 0x00, 0x00, // snaplen 65535
            0x01, 0x00, 0x00, 0x00, // LINKTYPE_ETHERNET
        ])
        #expect(Pcap.recordHeader(seconds: 0x6000_0001, microseconds: 5, capturedLength: 60, originalLength: 60) == [
            0x01, 0x00, 0x00, 0x60, // ts_sec
            0x05, 0x00, 0x00, 0x00, // ts_usec
            0x3c, 0x00, 0x00, 0x00, // incl_len 60
            0x3c, 0x00, 0x00, 0x00, // orig_len 60
        ])
        let frames: [[UInt8]] = [[UInt8](repeating: 1, count: 60), [UInt8](repeating: 2, count: 1514)]
        var file = Pcap.globalHeader()
        for f in frames { file += Pcap.recordHeader(seconds: 1, microseconds: 2, capturedLength: f.count, originalLength: f.count) + f }
        #expect(try Pcap.parse(file) == frames)
    }

    @Test("pcap files written big-endian or with nanoseconds parse too; broken ones say why")
    func pcapVariantsAndErrors() throws {
        var bigEndian: [UInt8] = [0xa1, 0xb2, 0x3c, 0x4d, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 1]
        bigEndian += [0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3, 0xaa, 0xbb, 0xcc]
        #expect(try Pcap.parse(bigEndian) == [[0xaa, 0xbb, 0xcc]])
        #expect(throws: Pcap.ParseError.tooShort) { try Pcap.parse([0xd4, 0xc3]) }
        #expect(throws: Pcap.ParseError.badMagic(0x0a0d0d0a)) { try Pcap.parse([0x0a, 0x0d, 0x0d, 0x0a] + [UInt8](repeating: 0, count: 20)) }
        var linux = Pcap.globalHeader(); linux[20] = 113 // LINKTYPE_LINUX_SLL
        #expect(throws: Pcap.ParseError.unsupportedLinkType(113)) { try Pcap.parse(linux) }
        let truncated = Pcap.globalHeader() + Pcap.recordHeader(seconds: 0, microseconds: 0, capturedLength: 100, originalLength: 100) + [1, 2, 3]
        #expect(throws: Pcap.ParseError.truncatedRecord(index: 0, offset: 24)) { try Pcap.parse(truncated) }
    }

    @Test("ARP reply for IPv4 over Ethernet")
    func arpBytes() {
        let reply = ARPPacket(operation: .reply, senderMAC: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56), senderIP: IPv4Address(10, 0, 0, 2),
                              targetMAC: MACAddress(2, 0, 0, 0, 0, 1), targetIP: IPv4Address(10, 0, 0, 1))
        #expect(reply.frame() == [
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01,             // destination: the asker
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56,             // source: us
            0x08, 0x06,                                     // EtherType ARP
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04,             // Ethernet, IPv4, hlen 6, plen 4
            0x00, 0x02,                                     // operation: reply
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 0, 2, // sender MAC, IP
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1, // target MAC, IP
        ])
        #expect(ARPPacket(frame: reply.frame()) == reply)
    }

    @Test("IPv4 header checksum and UDP pseudo-header checksum verify")
    func checksums() throws {
        let segment = UDPDatagram.build(source: IPv4Address(10, 0, 0, 1), destination: IPv4Address(10, 0, 0, 2), sourcePort: 1, destinationPort: 2, payload: [0x41][...])
        let frame = IPv4Packet.frame(destinationMAC: .broadcast, sourceMAC: .broadcast, source: IPv4Address(10, 0, 0, 1),
                                     destination: IPv4Address(10, 0, 0, 2), protocolNumber: 17, payload: segment)
        #expect(internetChecksum(frame[14..<34]) == 0)
        let ip = try #require(IPv4Packet(frame: frame))
        #expect(UDPDatagram.parse(frame: frame, ip: ip)?.destinationPort == 2)
        var corrupt = frame; corrupt[frame.count - 1] ^= 1
        #expect(UDPDatagram.parse(frame: corrupt, ip: ip) == nil)
    }
}
