import NetFormats
import Virtio

/// Frames as a driver hands them to the device for segmentation offload.
public enum OffloadFrame {
    /// The MSS the TCP superframes are cut at (gso_size): a 1500-byte MTU less the IPv4 and TCP headers.
    public static let tcpSegmentSize: UInt16 = 1448

    /// A TCP segment (IPv4 or IPv6) of `payload` bytes as the driver hands it to vhost for TSO:
    /// the checksum field holds the pseudo-header sum (NEEDS_CSUM), and the header says where.
    public static func tcp(ipv6: Bool, payload: Int, seed: Int) -> (frame: [UInt8], header: VirtioNetHeader) {
        let src = MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56), dst = MACAddress(0x52, 0x54, 0, 0, 0, 1)
        var tcp = [UInt8](repeating: 0, count: 20)
        tcp[0] = 0x30; tcp[1] = 0x39; tcp[2] = 0x1f; tcp[3] = 0x90   // ports 12345 → 8080
        tcp[4] = 0; tcp[5] = 0; tcp[6] = 0x10; tcp[7] = 0             // seq
        tcp[12] = 5 << 4; tcp[13] = 0x18                               // data offset 5, PSH|ACK
        tcp[14] = 0xff; tcp[15] = 0xff                                 // window
        let data = (0..<payload).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ seed) }
        let tcpLength = 20 + payload
        var ip: [UInt8]
        var pseudo: UInt32 = 6 + UInt32(tcpLength)
        if ipv6 {
            ip = [0x60, 0, 0, 0, UInt8(tcpLength >> 8), UInt8(tcpLength & 0xff), 6, 64]
            let s: [UInt8] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], d: [UInt8] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
            ip += s + d
            for i in stride(from: 0, to: 16, by: 2) { pseudo += UInt32(s[i]) << 8 | UInt32(s[i + 1]); pseudo += UInt32(d[i]) << 8 | UInt32(d[i + 1]) }
        } else {
            let source = IPv4Address(10, 0, 9, 2), destination = IPv4Address(10, 0, 9, 1)
            let whole = IPv4Packet.frame(destinationMAC: dst, sourceMAC: src, source: source, destination: destination,
                                         protocolNumber: IPv4Packet.protocolTCP, payload: [UInt8](repeating: 0, count: tcpLength))
            ip = Array(whole[14..<34])
            pseudo += (source.value >> 16) + (source.value & 0xffff) + (destination.value >> 16) + (destination.value & 0xffff)
        }
        while pseudo >> 16 != 0 { pseudo = (pseudo & 0xffff) + (pseudo >> 16) }
        tcp[16] = UInt8(pseudo >> 8); tcp[17] = UInt8(pseudo & 0xff)  // partial: the kernel completes it
        let frame = EthernetFrame.build(destination: dst, source: src, etherType: ipv6 ? EthernetFrame.ipv6Type : EthernetFrame.ipv4Type,
                                        payload: ip + tcp + data)
        let l3 = ipv6 ? 40 : 20
        let header = VirtioNetHeader(flags: .needsChecksum,
                                     gsoType: (ipv6 ? VirtioNetHeader.GSOType.tcpV6 : .tcpV4).rawValue,
                                     headerLength: UInt16(14 + l3 + 20), gsoSize: tcpSegmentSize,
                                     checksumStart: UInt16(14 + l3), checksumOffset: 16)
        return (frame, header)
    }
}
