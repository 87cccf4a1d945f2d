import NetFormats
import Testing
import VhostNet
import Virtio

@Suite("OffloadFrame: TSO superframes as a driver hands them to vhost")
struct OffloadFrameTests {
    @Test("the header says what the frame is: TCPV4 or TCPV6, hdr_len, gso_size, csum_start/offset; the checksum field holds the pseudo-header sum the host completes",
          arguments: [false, true])
    func tcpSuperframe(ipv6: Bool) throws {
        let payload = 3000
        let (frame, header) = OffloadFrame.tcp(ipv6: ipv6, payload: payload, seed: 7)
        let l3 = ipv6 ? IPv6Packet.headerLength : IPv4Packet.minimumHeaderLength
        let gso = ipv6 ? VirtioNetHeader.GSOType.tcpV6 : .tcpV4
        #expect(header == VirtioNetHeader(flags: .needsChecksum, gsoType: gso.rawValue, headerLength: UInt16(14 + l3 + 20),
                                          gsoSize: OffloadFrame.tcpSegmentSize, checksumStart: UInt16(14 + l3), checksumOffset: 16))
        #expect(frame.count == 14 + l3 + 20 + payload)
        #expect(EthernetFrame.etherType(of: frame) == (ipv6 ? EthernetFrame.ipv6Type : EthernetFrame.ipv4Type))
        // The pseudo-header sum over the whole TCP length, computed here from the parsed IP header.
        let pseudo: UInt64 = try frame.withUnsafeBytes { bytes in
            if ipv6 {
                let ip = try #require(IPv6Packet(bytes, at: 14))
                #expect(ip.upperLayer == IPv6Packet.protocolTCP && ip.payload.count == 20 + payload)
                return IPv6Packet.pseudoHeaderSum(source: ip.source, destination: ip.destination, length: 20 + payload, nextHeader: IPv6Packet.protocolTCP)
            }
            let ip = try #require(IPv4Packet(bytes, at: 14))
            #expect(ip.protocolNumber == IPv4Packet.protocolTCP && ip.payload.count == 20 + payload && !ip.isFragment)
            return IPv4Packet.pseudoHeaderSum(source: ip.source, destination: ip.destination, protocolNumber: IPv4Packet.protocolTCP, length: 20 + payload)
        }
        let field = Int(header.checksumStart) + Int(header.checksumOffset)
        #expect(UInt16(frame[field]) << 8 | UInt16(frame[field + 1]) == foldChecksum(pseudo), "CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum")
        // Completed as the host does it (skb_checksum_help: the sum from csum_start on, complemented,
        // stored at csum_offset), the TCP checksum verifies against the pseudo-header.
        var completed = frame
        let sum = completed.withUnsafeBytes { onesComplementSum(UnsafeRawBufferPointer(rebasing: $0[Int(header.checksumStart)...])) }
        let checksum = ~foldChecksum(sum)
        completed[field] = UInt8(checksum >> 8); completed[field + 1] = UInt8(checksum & 0xff)
        let verified = completed.withUnsafeBytes { internetChecksum(UnsafeRawBufferPointer(rebasing: $0[Int(header.checksumStart)...]), initial: pseudo) }
        #expect(verified == 0)
    }
}
