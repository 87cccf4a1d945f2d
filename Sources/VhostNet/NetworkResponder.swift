import NetFormats
import Virtio

/// What a NIC endpoint answers: ARP requests for its address, ICMP echo requests to it, and
/// UDP datagrams to its echo port. Pure logic: a received frame in, a reply frame out.
public struct NetworkResponder: Sendable {
    public struct Counters: Sendable, Equatable {
        public var arpReplies: UInt64 = 0
        public var icmpEchoReplies: UInt64 = 0
        public var udpEchoes: UInt64 = 0
        public var ignored: UInt64 = 0
    }

    public var mac: MACAddress
    public var ipv4: IPv4Interface?
    public var udpEchoPort: UInt16?
    public private(set) var counters = Counters()

    public init(mac: MACAddress, ipv4: IPv4Interface?, udpEchoPort: UInt16?) {
        self.mac = mac; self.ipv4 = ipv4; self.udpEchoPort = udpEchoPort
    }

    /// `header` is the frame's virtio-net header: with NEEDS_CSUM the L4 checksum field holds
    /// only the pseudo-header sum (the host offloaded it, CHECKSUM_PARTIAL), and with
    /// DATA_VALID the host already checked it, so neither is verified here.
    public mutating func respond(to frame: [UInt8], header: VirtioNetHeader = VirtioNetHeader()) -> [UInt8]? {
        let checksumTrusted = !header.flags.isDisjoint(with: [.needsChecksum, .dataValid])
        guard let me = ipv4?.address else { counters.ignored += 1; return nil }
        if let arp = ARPPacket(frame: frame) {
            guard arp.operation == .request, arp.targetIP == me else { counters.ignored += 1; return nil }
            counters.arpReplies += 1
            return ARPPacket(operation: .reply, senderMAC: mac, senderIP: me, targetMAC: arp.senderMAC, targetIP: arp.senderIP).frame()
        }
        guard let ip = IPv4Packet(frame: frame), ip.destination == me, let peerMAC = MACAddress(frame[6..<12]) else {
            counters.ignored += 1
            return nil
        }
        switch ip.protocolNumber {
        case IPv4Packet.protocolICMP:
            let icmp = ip.payload
            // Echo request (type 8, code 0) with a valid checksum.
            guard icmp.count >= 8, frame[icmp.lowerBound] == 8, frame[icmp.lowerBound + 1] == 0,
                  checksumTrusted || internetChecksum(frame[icmp]) == 0 else { break }
            var reply = Array(frame[icmp])
            reply[0] = 0
            reply[2] = 0; reply[3] = 0
            let sum = internetChecksum(reply[...])
            reply[2] = UInt8(sum >> 8); reply[3] = UInt8(sum & 0xff)
            counters.icmpEchoReplies += 1
            return IPv4Packet.frame(destinationMAC: peerMAC, sourceMAC: mac, source: me, destination: ip.source,
                                    protocolNumber: IPv4Packet.protocolICMP, payload: reply)
        case IPv4Packet.protocolUDP:
            guard let port = udpEchoPort, let udp = UDPDatagram.parse(frame: frame, ip: ip, verifyChecksum: !checksumTrusted),
                  udp.destinationPort == port else { break }
            let segment = UDPDatagram.build(source: me, destination: ip.source, sourcePort: port, destinationPort: udp.sourcePort, payload: frame[udp.payload])
            counters.udpEchoes += 1
            return IPv4Packet.frame(destinationMAC: peerMAC, sourceMAC: mac, source: me, destination: ip.source,
                                    protocolNumber: IPv4Packet.protocolUDP, payload: segment)
        default:
            break
        }
        counters.ignored += 1
        return nil
    }
}
