import NetFormats
import Testing
@testable import VhostNet
import Virtio

/// Frames a host sends, built here for the responder tests.
enum HostFrames {
    static let myMAC = MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56)
    static let hostMAC = MACAddress(0x02, 0, 0, 0, 0, 0x01)
    static let linkLocal = IPv6Address(parsing: "fe80::5054:ff:fe12:3456")!
    static let global = IPv6Address(parsing: "fd00:6::2")!
    static let host = IPv6Address(parsing: "fe80::1")!
    static let hostGlobal = IPv6Address(parsing: "fd00:6::1")!
    static let me4 = IPv4Address(10, 0, 0, 2), host4 = IPv4Address(10, 0, 0, 1)

    static func responder(linkLayer: LinkLayer = .ethernet, offloads: TransmitOffloads = TransmitOffloads()) -> NetworkResponder {
        NetworkResponder(mac: myMAC, ipv4: IPv4Interface(address: me4, prefixLength: 24), ipv6: [IPv6Interface(address: global, prefixLength: 64)],
                         udpEchoPort: 7, linkLayer: linkLayer, offloads: offloads)
    }

    static func ethernet(_ destination: MACAddress, _ type: UInt16, _ payload: [UInt8], source: MACAddress = hostMAC) -> [UInt8] {
        EthernetFrame.build(destination: destination, source: source, etherType: type, payload: payload)
    }

    /// An IPv6 packet; for ICMPv6 (58) and UDP (17) the checksum at `checksumAt` of the payload is filled in.
    static func ipv6(_ source: IPv6Address, _ destination: IPv6Address, next: UInt8, hops: UInt8 = 64, _ payload: [UInt8], checksumAt: Int? = nil) -> [UInt8] {
        var payload = payload
        if let at = checksumAt ?? (next == 58 ? 2 : next == 17 ? 6 : nil) {
            payload[at] = 0; payload[at + 1] = 0
            var sum = payload.withUnsafeBytes { internetChecksum($0, initial: IPv6Packet.pseudoHeaderSum(source: source, destination: destination, length: payload.count, nextHeader: next)) }
            if next == 17 && sum == 0 { sum = 0xffff }
            payload[at] = UInt8(sum >> 8); payload[at + 1] = UInt8(sum & 0xff)
        }
        return [UInt8](writing: 40) { w in IPv6Packet.writeHeader(to: &w, payloadLength: payload.count, nextHeader: next, hopLimit: hops, source: source, destination: destination) } + payload
    }

    static func echo6(from source: IPv6Address, to destination: IPv6Address, payload: [UInt8] = Array("ping6".utf8), sequence: UInt16 = 1) -> [UInt8] {
        ipv6(source, destination, next: 58, [128, 0, 0, 0, 0x12, 0x34, UInt8(sequence >> 8), UInt8(sequence & 0xff)] + payload)
    }

    static func solicitation(from source: IPv6Address, target: IPv6Address, link: MACAddress?, to destination: IPv6Address? = nil) -> [UInt8] {
        let ns = NeighborSolicitation(target: target, sourceLinkLayer: link)
        let body = [UInt8](writing: ns.length) { ns.write(to: &$0) }
        return ipv6(source, destination ?? target.solicitedNodeMulticast, next: 58, hops: 255, body)
    }

    static func advertisement(target: IPv6Address, link: MACAddress, solicited: Bool, to destination: IPv6Address = linkLocal) -> [UInt8] {
        let na = NeighborAdvertisement(solicited: solicited, override: true, target: target, targetLinkLayer: link)
        return ipv6(target, destination, next: 58, hops: 255, [UInt8](writing: na.length) { na.write(to: &$0) })
    }

    static func udp6(from source: IPv6Address, to destination: IPv6Address, payload: [UInt8], port: UInt16 = 7) -> [UInt8] {
        let length = 8 + payload.count
        return ipv6(source, destination, next: 17, [0x9c, 0x40, UInt8(port >> 8), UInt8(port & 0xff), UInt8(length >> 8), UInt8(length & 0xff), 0, 0] + payload)
    }

    /// A parsed IPv6 reply frame (Ethernet or bare), with its upper-layer bytes.
    struct Parsed { var ip: IPv6Packet; var upper: [UInt8]; var destinationMAC: MACAddress? }

    static func parse6(_ frame: [UInt8], linkLayer: LinkLayer = .ethernet) -> Parsed? {
        let offset = linkLayer.headerLength
        if linkLayer == .ethernet { guard EthernetFrame.etherType(of: frame) == EthernetFrame.ipv6Type else { return nil } }
        return frame.withUnsafeBytes { bytes in
            IPv6Packet(bytes, at: offset).map { Parsed(ip: $0, upper: Array(bytes[$0.payload]), destinationMAC: linkLayer == .ethernet ? MACAddress(frame[0..<6]) : nil) }
        }
    }

    static func checksumValid(_ p: Parsed) -> Bool {
        p.upper.withUnsafeBytes { internetChecksum($0, initial: IPv6Packet.pseudoHeaderSum(source: p.ip.source, destination: p.ip.destination, length: p.upper.count, nextHeader: p.ip.upperLayer)) == 0 }
    }

    /// IPv4 fragments of a datagram's upper-layer bytes, cut here by hand (1480 bytes each).
    static func fragments4(_ upper: [UInt8], protocolNumber: UInt8, identification: UInt16 = 0x4242) -> [[UInt8]] {
        stride(from: 0, to: upper.count, by: 1480).map { offset in
            let end = min(upper.count, offset + 1480)
            let part = Array(upper[offset..<end])
            let header = [UInt8](writing: 20) { w in
                IPv4Packet.writeHeader(to: &w, totalLength: 20 + part.count, identification: identification, protocolNumber: protocolNumber,
                                       source: host4, destination: me4, fragmentOffset: offset, moreFragments: end < upper.count)
            }
            return ethernet(myMAC, EthernetFrame.ipv4Type, header + part)
        }
    }

    /// A UDP datagram (header and payload, checksum filled in) from the host's port 40000 to 7 over IPv4.
    static func udp4Upper(_ payload: [UInt8]) -> [UInt8] {
        UDPDatagram.build(source: host4, destination: me4, sourcePort: 40000, destinationPort: 7, payload: payload[...])
    }
}

@Suite("NetworkResponder over IPv6: neighbour discovery, echo, UDP, groups (RFC 4861, 4862, 4443)")
struct IPv6ResponderTests {
    typealias H = HostFrames

    @Test("a solicitation for our link-local or global address: a solicited advertisement to the asker, with our MAC, hop limit 255, a valid checksum")
    func solicitation() throws {
        for target in [H.linkLocal, H.global] {
            var r = H.responder()
            let from = target == H.global ? H.hostGlobal : H.host
            let replies = r.replies(to: H.ethernet(target.solicitedNodeMulticast.multicastMAC, EthernetFrame.ipv6Type, H.solicitation(from: from, target: target, link: H.hostMAC)))
            try #require(replies.count == 1)
            let reply = try #require(H.parse6(replies[0].frame))
            #expect(reply.destinationMAC == H.hostMAC && Array(replies[0].frame[6..<12]) == H.myMAC.array)
            #expect(reply.ip.source == target && reply.ip.destination == from && reply.ip.hopLimit == 255)
            #expect(H.checksumValid(reply))
            let na = try #require(reply.upper.withUnsafeBytes { NeighborAdvertisement($0, ip: reply.ip) })
            #expect(na == NeighborAdvertisement(solicited: true, override: true, target: target, targetLinkLayer: H.myMAC))
            #expect(r.counters.neighborAdvertisements == 1)
        }
        // For an address that is not ours: nothing.
        var r = H.responder()
        let other = IPv6Address(parsing: "fd00:6::99")!
        #expect(r.replies(to: H.ethernet(other.solicitedNodeMulticast.multicastMAC, EthernetFrame.ipv6Type, H.solicitation(from: H.host, target: other, link: H.hostMAC))).isEmpty)
    }

    @Test("a duplicate-address-detection probe (from ::) for an address of ours is answered to all nodes, S clear; one for another address is not")
    func duplicateAddressDetection() throws {
        var r = H.responder()
        let probe = H.ethernet(H.global.solicitedNodeMulticast.multicastMAC, EthernetFrame.ipv6Type, H.solicitation(from: .unspecified, target: H.global, link: nil))
        let replies = r.replies(to: probe)
        try #require(replies.count == 1)
        let reply = try #require(H.parse6(replies[0].frame))
        #expect(reply.destinationMAC == MACAddress(0x33, 0x33, 0, 0, 0, 1) && reply.ip.destination == .allNodes && reply.ip.source == H.global)
        let na = try #require(reply.upper.withUnsafeBytes { NeighborAdvertisement($0, ip: reply.ip) })
        #expect(!na.solicited && na.override && na.target == H.global && na.targetLinkLayer == H.myMAC)
        #expect(H.checksumValid(reply) && r.counters.duplicateAddressProbesAnswered == 1)
        // The host's own DAD probe for its link-local address is none of ours.
        let hostProbe = H.ethernet(H.host.solicitedNodeMulticast.multicastMAC, EthernetFrame.ipv6Type, H.solicitation(from: .unspecified, target: H.host, link: nil))
        #expect(r.replies(to: hostProbe).isEmpty)
    }

    @Test("the receive filter: our MAC, all-nodes and our solicited-node groups pass; other groups and other MACs do not")
    func groups() {
        var r = H.responder()
        let ns = H.solicitation(from: H.host, target: H.linkLocal, link: H.hostMAC)
        #expect(r.replies(to: H.ethernet(MACAddress(0x33, 0x33, 0xff, 0x12, 0x34, 0x56), EthernetFrame.ipv6Type, ns)).count == 1)
        #expect(r.replies(to: H.ethernet(MACAddress(0x33, 0x33, 0xff, 0x99, 0x99, 0x99), EthernetFrame.ipv6Type, ns)).isEmpty)
        #expect(r.replies(to: H.ethernet(MACAddress(0x02, 0, 0, 0, 0, 0x77), EthernetFrame.ipv6Type, ns)).isEmpty)
        // An echo to ff02::1 is answered from our link-local address toward a link-local host...
        let all = H.ethernet(IPv6Address.allNodes.multicastMAC, EthernetFrame.ipv6Type, H.echo6(from: H.host, to: .allNodes))
        _ = r.replies(to: H.ethernet(H.linkLocal.solicitedNodeMulticast.multicastMAC, EthernetFrame.ipv6Type, ns))   // learn the host
        let reply = r.replies(to: all).compactMap { H.parse6($0.frame) }.first { $0.upper.first == 129 }
        #expect(reply?.ip.source == H.linkLocal)
        // ...and from the global one toward a host on its prefix.
        _ = r.replies(to: H.ethernet(H.global.solicitedNodeMulticast.multicastMAC, EthernetFrame.ipv6Type, H.solicitation(from: H.hostGlobal, target: H.global, link: H.hostMAC)))
        let fromGlobal = r.replies(to: H.ethernet(IPv6Address.allNodes.multicastMAC, EthernetFrame.ipv6Type, H.echo6(from: H.hostGlobal, to: .allNodes)))
        #expect(fromGlobal.compactMap { H.parse6($0.frame) }.first { $0.upper.first == 129 }?.ip.source == H.global)
        // With IPv6 off nothing IPv6 is answered.
        var off = NetworkResponder(mac: H.myMAC, ipv4: nil, udpEchoPort: 7)
        #expect(off.replies(to: H.ethernet(MACAddress(0x33, 0x33, 0xff, 0x12, 0x34, 0x56), EthernetFrame.ipv6Type, ns)).isEmpty)
    }

    @Test("echo from a neighbour not yet known: a solicitation goes out and the reply waits; the advertisement releases it")
    func resolveThenReply() throws {
        var r = H.responder()
        let request = H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.echo6(from: H.host, to: H.linkLocal, payload: Array("resolve me".utf8)))
        let first = r.replies(to: request)
        try #require(first.count == 1)
        let ns = try #require(H.parse6(first[0].frame))
        #expect(ns.destinationMAC == H.host.solicitedNodeMulticast.multicastMAC && ns.ip.destination == H.host.solicitedNodeMulticast)
        #expect(ns.ip.source == H.linkLocal && ns.ip.hopLimit == 255 && H.checksumValid(ns))
        #expect(ns.upper.withUnsafeBytes { NeighborSolicitation($0, ip: ns.ip) } == NeighborSolicitation(target: H.host, sourceLinkLayer: H.myMAC))
        let released = r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.advertisement(target: H.host, link: H.hostMAC, solicited: true)))
        try #require(released.count == 1)
        let reply = try #require(H.parse6(released[0].frame))
        #expect(reply.destinationMAC == H.hostMAC && reply.ip.source == H.linkLocal && reply.ip.destination == H.host)
        #expect(reply.upper[0] == 129 && reply.upper[1] == 0 && Array(reply.upper[4...]) == [0x12, 0x34, 0, 1] + Array("resolve me".utf8))
        #expect(H.checksumValid(reply))
        // Now reachable: the next reply goes at once, with no solicitation.
        let next = r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.echo6(from: H.host, to: H.linkLocal, sequence: 2)))
        #expect(next.count == 1 && H.parse6(next[0].frame)?.upper.first == 129)
        #expect(r.counters.icmp6EchoReplies == 2 && r.counters.neighborSolicitations == 1)
    }

    @Test("a neighbour learned from its solicitation (STALE) is answered at once and confirmed with a unicast solicitation")
    func staleThenProbe() throws {
        var r = H.responder()
        _ = r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.solicitation(from: H.host, target: H.linkLocal, link: H.hostMAC, to: H.linkLocal)))
        let replies = r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.echo6(from: H.host, to: H.linkLocal)))
        try #require(replies.count == 2)
        #expect(H.parse6(replies[0].frame)?.upper.first == 129)
        let probe = try #require(H.parse6(replies[1].frame))
        #expect(probe.upper.first == 135 && probe.ip.destination == H.host && probe.destinationMAC == H.hostMAC && H.checksumValid(probe))
        #expect(r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.echo6(from: H.host, to: H.linkLocal))).count == 1, "probed once")
    }

    @Test("ICMPv6 echo: a wrong checksum is dropped and counted; NEEDS_CSUM and DATA_VALID are trusted")
    func echoChecksums() {
        var r = H.responder()
        _ = r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.advertisement(target: H.host, link: H.hostMAC, solicited: false)))
        _ = r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.solicitation(from: H.host, target: H.linkLocal, link: H.hostMAC, to: H.linkLocal)))
        var corrupt = H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.echo6(from: H.host, to: H.linkLocal))
        corrupt[corrupt.count - 1] ^= 0x20
        #expect(r.replies(to: corrupt).isEmpty && r.counters.checksumErrors == 1)
        #expect(!r.replies(to: corrupt, header: VirtioNetHeader(flags: .dataValid)).isEmpty)
    }

    @Test("UDP echo over IPv6: ports swapped, payload kept, checksum valid; a zero or wrong checksum is refused")
    func udpEcho() throws {
        var r = H.responder()
        _ = r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.solicitation(from: H.hostGlobal, target: H.global, link: H.hostMAC, to: H.global)))
        let request = H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.udp6(from: H.hostGlobal, to: H.global, payload: Array("hello-vhost-udp6".utf8)))
        let replies = r.replies(to: request)
        let reply = try #require(replies.first.flatMap { H.parse6($0.frame) })
        #expect(reply.ip.source == H.global && reply.ip.destination == H.hostGlobal && reply.ip.upperLayer == 17)
        #expect(Array(reply.upper[0..<4]) == [0, 7, 0x9c, 0x40] && Array(reply.upper[8...]) == Array("hello-vhost-udp6".utf8))
        #expect(H.checksumValid(reply) && r.counters.udp6Echoes == 1)
        var zero = request; zero[14 + 40 + 6] = 0; zero[14 + 40 + 7] = 0
        #expect(r.replies(to: zero).isEmpty, "a zero UDP checksum is invalid over IPv6 (RFC 8200 §8.1)")
        var wrong = request; wrong[wrong.count - 1] ^= 1
        #expect(r.replies(to: wrong).isEmpty && r.counters.checksumErrors == 2)
        // To another port: nothing.
        #expect(r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.udp6(from: H.hostGlobal, to: H.global, payload: [1], port: 9))).isEmpty)
    }

    @Test("start sends a DAD probe for each address: from ::, to its solicited-node group, no link-layer option, hop limit 255")
    func startProbes() throws {
        var r = H.responder()
        let frames = r.startFrames()
        try #require(frames.count == 2)
        for (frame, target) in zip(frames, [H.linkLocal, H.global]) {
            let p = try #require(H.parse6(frame))
            #expect(p.ip.source == .unspecified && p.ip.destination == target.solicitedNodeMulticast && p.ip.hopLimit == 255)
            #expect(p.destinationMAC == target.solicitedNodeMulticast.multicastMAC && H.checksumValid(p))
            #expect(p.upper.withUnsafeBytes { NeighborSolicitation($0, ip: p.ip) } == NeighborSolicitation(target: target, sourceLinkLayer: nil))
        }
        // Another node advertising one of our addresses is a duplicate.
        _ = r.replies(to: H.ethernet(IPv6Address.allNodes.multicastMAC, EthernetFrame.ipv6Type,
                                     H.advertisement(target: H.global, link: H.hostMAC, solicited: false, to: .allNodes)))
        #expect(r.duplicates[H.global] == H.hostMAC && r.counters.duplicateAddressesDetected == 1)
    }

    @Test("on an L3 tun: IPv4 and IPv6 echo without a link layer, no ND; UDP with checksum offload starts its csum at the IP header")
    func layer3() throws {
        var r = H.responder(linkLayer: .none, offloads: TransmitOffloads(checksum: true))
        let icmp = ICMPEcho.request(identifier: 9, sequence: 1, payload: Array("tun".utf8))
        let v4 = Array(IPv4Packet.frame(destinationMAC: .broadcast, sourceMAC: .broadcast, source: H.host4, destination: H.me4, protocolNumber: 1, payload: icmp)[14...])
        let reply4 = try #require(r.replies(to: v4).first)
        #expect(reply4.frame[0] == 0x45 && reply4.frame.withUnsafeBytes { IPv4Packet($0, at: 0)?.destination } == H.host4)
        #expect(reply4.frame.withUnsafeBytes { p in internetChecksum(UnsafeRawBufferPointer(rebasing: p[20...])) } == 0)
        let reply6 = try #require(r.replies(to: H.echo6(from: H.hostGlobal, to: H.global)).first)
        let parsed = try #require(H.parse6(reply6.frame, linkLayer: .none))
        #expect(parsed.upper.first == 129 && parsed.ip.destination == H.hostGlobal && H.checksumValid(parsed))
        #expect(r.replies(to: H.solicitation(from: H.host, target: H.linkLocal, link: H.hostMAC)).isEmpty, "no neighbour discovery on a tun")
        let udp = r.replies(to: H.udp6(from: H.hostGlobal, to: H.global, payload: [1, 2, 3]))
        #expect(udp.first?.header == VirtioNetHeader(flags: .needsChecksum, checksumStart: 40, checksumOffset: 6))
    }
}

@Suite("NetworkResponder: fragments, USO superframes and checksum offload")
struct ResponderOffloadTests {
    typealias H = HostFrames

    /// Reassembles IPv4 reply fragments into the UDP/ICMP datagram they carry.
    func reassemble4(_ frames: [[UInt8]]) -> [UInt8]? {
        var r = FragmentReassembler()
        for frame in frames {
            guard let outcome = frame.withUnsafeBytes({ b -> FragmentReassembler.Outcome? in
                guard let ip = IPv4Packet(b, at: 14) else { return nil }
                return r.add(FragmentReassembler.Key(ip), offset: ip.fragmentOffset, more: ip.moreFragments, data: UnsafeRawBufferPointer(rebasing: b[ip.payload]))
            }) else { return nil }
            if case .complete(let whole) = outcome { return whole }
        }
        return nil
    }

    @Test("a 20,000-byte UDP datagram in fragments comes back as one USO superframe when HOST_USO and CSUM are negotiated")
    func superframe() throws {
        let payload = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        var r = H.responder(offloads: TransmitOffloads(checksum: true, udpSegmentation: true, largestFrame: 65_549))
        var replies: [(header: VirtioNetHeader, frame: [UInt8])] = []
        for fragment in H.fragments4(H.udp4Upper(payload), protocolNumber: 17) { replies += r.replies(to: fragment) }
        try #require(replies.count == 1)
        let (header, frame) = replies[0]
        #expect(header == VirtioNetHeader(flags: .needsChecksum, gsoType: VirtioNetHeader.GSOType.udpL4.rawValue, headerLength: 42, gsoSize: 1472,
                                         checksumStart: 34, checksumOffset: 6))
        #expect(frame.count == 14 + 20 + 8 + 20_000 && r.counters.segmentationOffloads == 1 && r.counters.reassembled == 1)
        let ip = try #require(frame.withUnsafeBytes { IPv4Packet($0, at: 14) })
        #expect(ip.destination == H.host4 && ip.payload.count == 20_008 && !ip.isFragment)
        #expect(Array(frame[42...]) == payload)
        // The checksum field holds the pseudo-header sum for the host to finish (CHECKSUM_PARTIAL).
        let pseudo = foldChecksum(IPv4Packet.pseudoHeaderSum(source: H.me4, destination: H.host4, protocolNumber: 17, length: 20_008))
        #expect(UInt16(frame[40]) << 8 | UInt16(frame[41]) == pseudo)
        // Over IPv6 the segments carry 1452 bytes (1500 - 40 - 8).
        var r6 = H.responder(offloads: TransmitOffloads(checksum: true, udpSegmentation: true, largestFrame: 65_549))
        _ = r6.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.solicitation(from: H.hostGlobal, target: H.global, link: H.hostMAC, to: H.global)))
        let big6 = H.udp6(from: H.hostGlobal, to: H.global, payload: Array(payload[0..<3000]))
        var frames6: [(header: VirtioNetHeader, frame: [UInt8])] = []
        for (i, part) in stride(from: 0, to: big6.count - 40, by: 1448).enumerated() {
            let end = min(big6.count - 40, part + 1448)
            let fragment = [UInt8(17), 0, UInt8((part >> 8) & 0xff), UInt8(part & 0xf8) | (end < big6.count - 40 ? 1 : 0), 0, 0, 0x12, 0x34]
            let packet = H.ipv6(H.hostGlobal, H.global, next: 44, fragment + Array(big6[(40 + part)..<(40 + end)]), checksumAt: nil)
            _ = i
            frames6 += r6.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv6Type, packet))
        }
        // The superframe, then the unicast solicitation that confirms the neighbour learned from its solicitation.
        try #require(frames6.count == 2)
        #expect(frames6[0].header.gsoType == 5 && frames6[0].header.gsoSize == 1452 && frames6[0].header.checksumStart == 54)
        #expect(frames6[0].frame.count == 14 + 40 + 8 + 3000 && H.parse6(frames6[1].frame)?.upper.first == 135)
    }

    @Test("without USO the reply is fragmented to the MTU with the checksum computed; with CSUM alone a small reply leaves it to the host")
    func fragmentsAndChecksumOffload() throws {
        let payload = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        var r = H.responder(offloads: TransmitOffloads(checksum: true))
        var replies: [(header: VirtioNetHeader, frame: [UInt8])] = []
        for fragment in H.fragments4(H.udp4Upper(payload), protocolNumber: 17) { replies += r.replies(to: fragment) }
        #expect(replies.count == 14 && replies.allSatisfy { $0.frame.count <= 1514 && $0.header == VirtioNetHeader() })
        let whole = try #require(reassemble4(replies.map(\.frame)))
        #expect(Array(whole[8...]) == payload)
        #expect(whole.withUnsafeBytes { internetChecksum($0, initial: IPv4Packet.pseudoHeaderSum(source: H.me4, destination: H.host4, protocolNumber: 17, length: whole.count)) } == 0)
        // A small reply with CSUM: NEEDS_CSUM from the UDP header, the pseudo-header sum in the field.
        let small = r.replies(to: H.ethernet(H.myMAC, EthernetFrame.ipv4Type, Array(IPv4Packet.frame(destinationMAC: H.myMAC, sourceMAC: H.hostMAC, source: H.host4,
                                                                                                      destination: H.me4, protocolNumber: 17, payload: H.udp4Upper([1, 2, 3]))[14...])))
        let reply = try #require(small.first)
        #expect(reply.header == VirtioNetHeader(flags: .needsChecksum, checksumStart: 34, checksumOffset: 6))
        #expect(UInt16(reply.frame[40]) << 8 | UInt16(reply.frame[41]) == foldChecksum(IPv4Packet.pseudoHeaderSum(source: H.me4, destination: H.host4, protocolNumber: 17, length: 11)))
    }

    @Test("a large ping: fragments in, the reply in fragments out, whole and with a valid checksum")
    func bigPing() throws {
        let icmp = ICMPEcho.request(identifier: 5, sequence: 9, payload: (0..<4000).map { UInt8(truncatingIfNeeded: $0) })
        var r = H.responder()
        var replies: [[UInt8]] = []
        for fragment in H.fragments4(icmp, protocolNumber: 1) { replies += r.replies(to: fragment).map(\.frame) }
        #expect(replies.count == 3)
        let whole = try #require(reassemble4(replies))
        #expect(whole[0] == 0 && Array(whole[4...]) == Array(icmp[4...]) && whole.withUnsafeBytes { internetChecksum($0) } == 0)
    }
}
