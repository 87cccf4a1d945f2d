import Testing
@testable import NetFormats

/// The checksums in these tests were computed apart from this code (Python's struct and
/// ipaddress over the RFC 8200 §8.1 pseudo-header), and are written down as the bytes.
@Suite("IPv6 addresses (RFC 4291, RFC 5952)")
struct IPv6AddressTests {
    @Test("text forms parse, and print in RFC 5952's canonical form")
    func text() {
        #expect(IPv6Address(parsing: "2001:db8::1")?.description == "2001:db8::1")
        #expect(IPv6Address(parsing: "2001:0DB8:0000:0000:0000:0000:0000:0001")?.description == "2001:db8::1")
        #expect(IPv6Address(parsing: "::")?.description == "::")
        #expect(IPv6Address(parsing: "::1")?.description == "::1")
        #expect(IPv6Address(parsing: "fe80::")?.description == "fe80::")
        // The longest run of zeros is compressed, the first of equal runs, and never a single group.
        #expect(IPv6Address(parsing: "2001:db8:0:0:1:0:0:1")?.description == "2001:db8::1:0:0:1")
        #expect(IPv6Address(parsing: "2001:0:0:1:0:0:0:1")?.description == "2001:0:0:1::1")
        #expect(IPv6Address(parsing: "2001:db8:0:1:1:1:1:1")?.description == "2001:db8:0:1:1:1:1:1")
        #expect(IPv6Address(parsing: "::ffff:10.0.0.1") == IPv6Address(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001))
        for bad in ["", ":", ":::", "1::2::3", "1:2:3:4:5:6:7:8:9", "12345::", "fe80::1%eth0", "g::1", "1:2:3:4:5:6:7", "::1.2.3", "1:2:3:4:5:6:7::8"] {
            #expect(IPv6Address(parsing: bad) == nil, "\(bad)")
        }
        #expect(IPv6Interface(parsing: "fd00::2/64") == IPv6Interface(address: IPv6Address(0xfd00, 0, 0, 0, 0, 0, 0, 2), prefixLength: 64))
        #expect(IPv6Interface(parsing: "fd00::2")?.prefixLength == 64)
        #expect(IPv6Interface(parsing: "fd00::2/129") == nil && IPv6Interface(parsing: "ff02::1/64") == nil && IPv6Interface(parsing: "::/64") == nil)
    }

    @Test("modified EUI-64 (RFC 4291 appendix A): the U/L bit inverted, ff:fe in the middle; the solicited-node group and its MAC")
    func eui64() {
        // RFC 4291's example: 34-56-78-9A-BC-DE gives the identifier 36-56-78-FF-FE-9A-BC-DE.
        #expect(IPv6Address.interfaceIdentifier(mac: MACAddress(0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde)) == 0x3656_78ff_fe9a_bcde)
        let ll = IPv6Address.linkLocal(mac: MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56))
        #expect(ll.bytes == [0xfe, 0x80, 0, 0, 0, 0, 0, 0,          // fe80::/64
                             0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56])   // 52 ^ 02, 54, 00, ff:fe, 12, 34, 56
        #expect(ll.description == "fe80::5054:ff:fe12:3456" && ll.isLinkLocal && !ll.isMulticast)
        // ff02::1:ff + the low 24 bits (RFC 4291 §2.7.1), and 33:33 + the low 32 bits (RFC 2464 §7).
        #expect(ll.solicitedNodeMulticast.description == "ff02::1:ff12:3456")
        #expect(ll.solicitedNodeMulticast.isSolicitedNodeMulticast && ll.solicitedNodeMulticast.isMulticast)
        #expect(ll.solicitedNodeMulticast.multicastMAC == MACAddress(0x33, 0x33, 0xff, 0x12, 0x34, 0x56))
        #expect(IPv6Address.allNodes.multicastMAC == MACAddress(0x33, 0x33, 0, 0, 0, 1))
        let global = IPv6Address(parsing: "fd00:6::2")!
        #expect(global.sharesPrefix(with: IPv6Address(parsing: "fd00:6::1")!, length: 64))
        #expect(!global.sharesPrefix(with: IPv6Address(parsing: "fd00:7::1")!, length: 64))
    }
}

@Suite("IPv6 packets, ICMPv6 and neighbour discovery against annotated bytes (RFC 8200, 4443, 4861)")
struct IPv6PacketTests {
    static let host = IPv6Address(parsing: "fe80::1")!
    static let me = IPv6Address(parsing: "fe80::5054:ff:fe12:3456")!

    /// An echo request from fe80::1 to fe80::5054:ff:fe12:3456: identifier 0x1234, sequence 1, "abcd".
    static let echoRequest: [UInt8] = [
        0x60, 0x00, 0x00, 0x00,                         // version 6, class 0, flow 0
        0x00, 0x0c, 0x3a, 0x40,                         // payload 12, next header 58 (ICMPv6), hop limit 64
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,                     // source fe80::1
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56, // destination
        0x80, 0x00, 0x27, 0xfe,                         // type 128 echo request, code 0, checksum 0x27fe
        0x12, 0x34, 0x00, 0x01,                         // identifier, sequence
        0x61, 0x62, 0x63, 0x64,                         // "abcd"
    ]

    @Test("an echo request parses, and its checksum over the pseudo-header verifies; one flipped bit does not")
    func echo() throws {
        try Self.echoRequest.withUnsafeBytes { bytes in
            let ip = try #require(IPv6Packet(bytes, at: 0))
            #expect(ip.source == Self.host && ip.destination == Self.me && ip.hopLimit == 64)
            #expect(ip.upperLayer == IPv6Packet.protocolICMPv6 && ip.payload == 40..<52 && ip.fragment == nil)
            #expect(ICMPv6.checksumIsValid(UnsafeRawBufferPointer(rebasing: bytes[ip.payload]), source: ip.source, destination: ip.destination))
        }
        var flipped = Self.echoRequest
        flipped[51] ^= 0x01
        flipped.withUnsafeBytes { bytes in
            let ip = IPv6Packet(bytes, at: 0)!
            #expect(!ICMPv6.checksumIsValid(UnsafeRawBufferPointer(rebasing: bytes[ip.payload]), source: ip.source, destination: ip.destination))
        }
    }

    @Test("malformed packets are refused: version, lengths, truncation, routing with segments left, no next header")
    func malformed() {
        func parses(_ b: [UInt8]) -> Bool { b.withUnsafeBytes { IPv6Packet($0, at: 0) != nil } }
        var v4 = Self.echoRequest; v4[0] = 0x40
        var long = Self.echoRequest; long[5] = 0x0d                     // payload length one past the end
        var zero = Self.echoRequest; zero[4] = 0; zero[5] = 0           // a jumbogram's 0: refused
        #expect(!parses(v4) && !parses(long) && !parses(zero))
        for cut in 0..<Self.echoRequest.count { #expect(!parses(Array(Self.echoRequest.prefix(cut))), "cut at \(cut)") }
        // A routing header (type 0, 8 bytes) with segments left 1: we are no router.
        var routed = Self.echoRequest
        routed[6] = 43; routed[5] = 0x14
        routed.insert(contentsOf: [58, 0, 0, 1, 0, 0, 0, 0], at: 40)
        #expect(!parses(routed))
        routed[43] = 0                                                  // segments left 0: fine
        #expect(parses(routed))
        var none = Self.echoRequest; none[6] = 59
        #expect(!parses(none))
    }

    @Test("extension headers are walked: hop-by-hop, destination options, then a fragment header")
    func extensionHeaders() throws {
        var packet = Array(Self.echoRequest[0..<40])
        packet[6] = 0                                                   // hop-by-hop first
        packet += [60, 0, 1, 4, 0, 0, 0, 0]                             // HBH → 60, a PadN option
        packet += [44, 0, 1, 4, 0, 0, 0, 0]                             // destination options → 44
        packet += [58, 0, 0x00, 0x19, 0xde, 0xad, 0xbe, 0xef]           // fragment → 58, offset 3 (24 bytes), M, id
        packet += Array(Self.echoRequest[40...])
        packet[4] = 0; packet[5] = UInt8(packet.count - 40)
        try packet.withUnsafeBytes { bytes in
            let ip = try #require(IPv6Packet(bytes, at: 0))
            #expect(ip.upperLayer == 58 && ip.payload == 64..<76)
            #expect(ip.fragment == IPv6Packet.Fragment(identification: 0xdead_beef, offset: 24, moreFragments: true))
        }
        // An extension header whose length runs past the packet.
        var bad = packet; bad[41] = 9
        #expect(bad.withUnsafeBytes { IPv6Packet($0, at: 0) } == nil)
    }

    /// A solicitation from fe80::1 (source link-layer 02:00:00:00:00:01) for our link-local address.
    static let solicitation: [UInt8] = [
        0x60, 0, 0, 0, 0x00, 0x20, 0x3a, 0xff,          // payload 32, ICMPv6, hop limit 255
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,                       // fe80::1
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, 0x12, 0x34, 0x56,           // ff02::1:ff12:3456
        0x87, 0x00, 0xc2, 0x76,                         // type 135, code 0, checksum 0xc276
        0x00, 0x00, 0x00, 0x00,                         // reserved
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56,   // target
        0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // source link-layer option, 8 bytes
    ]

    @Test("a neighbour solicitation parses with its source link-layer address; RFC 4861 §7.1.1's rules refuse the broken ones")
    func solicitationRules() {
        func parse(_ b: [UInt8]) -> NeighborSolicitation? {
            b.withUnsafeBytes { bytes in IPv6Packet(bytes, at: 0).flatMap { ip in NeighborSolicitation(UnsafeRawBufferPointer(rebasing: bytes[ip.payload]), ip: ip) } }
        }
        let good = parse(Self.solicitation)
        #expect(good == NeighborSolicitation(target: Self.me, sourceLinkLayer: MACAddress(2, 0, 0, 0, 0, 1)))
        #expect(Self.solicitation.withUnsafeBytes { ICMPv6.checksumIsValid(UnsafeRawBufferPointer(rebasing: $0[40...]), source: Self.host, destination: Self.me.solicitedNodeMulticast) })
        var hops = Self.solicitation; hops[7] = 254
        var code = Self.solicitation; code[41] = 1
        var multicastTarget = Self.solicitation; multicastTarget[48] = 0xff
        var zeroOption = Self.solicitation; zeroOption[65] = 0
        var longOption = Self.solicitation; longOption[65] = 2
        var dadWithOption = Self.solicitation                           // from :: with a link-layer option
        for i in 8..<24 { dadWithOption[i] = 0 }
        var dadToUnicast = Array(dadWithOption[0..<64]); dadToUnicast[5] = 24
        for i in 24..<40 { dadToUnicast[i] = Self.echoRequest[i] }      // to our unicast address
        for broken in [hops, code, multicastTarget, zeroOption, longOption, dadWithOption, dadToUnicast] { #expect(parse(broken) == nil) }
        var dad = Array(dadWithOption[0..<64]); dad[5] = 24             // from ::, to the group, no option: a DAD probe
        #expect(parse(dad) == NeighborSolicitation(target: Self.me, sourceLinkLayer: nil))
    }

    @Test("a solicited advertisement is written as RFC 4861 §4.4 lays it out, with the checksum")
    func advertisementBytes() throws {
        let advertisement = NeighborAdvertisement(solicited: true, override: true, target: Self.me, targetLinkLayer: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56))
        let bytes = [UInt8](writing: 40 + advertisement.length) { w in
            IPv6Packet.writeHeader(to: &w, payloadLength: advertisement.length, nextHeader: 58, hopLimit: 255, source: Self.me, destination: Self.host)
            advertisement.write(to: &w)
            ICMPv6.storeChecksum(in: w, messageStart: 40, source: Self.me, destination: Self.host)
        }
        #expect(Array(bytes[0..<8]) == [0x60, 0, 0, 0, 0x00, 0x20, 0x3a, 0xff])
        #expect(Array(bytes[40...]) == [
            0x88, 0x00, 0x8b, 0xea,                     // type 136, code 0, checksum 0x8bea
            0x60, 0x00, 0x00, 0x00,                     // S and O set, R clear
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56,   // target
            0x02, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // target link-layer option
        ])
        let parsed = bytes.withUnsafeBytes { b in NeighborAdvertisement(UnsafeRawBufferPointer(rebasing: b[40...]), ip: IPv6Packet(b, at: 0)!) }
        #expect(parsed == advertisement)
        // S set to a multicast destination is invalid (§7.1.2).
        var toGroup = bytes
        for (i, b) in IPv6Address.allNodes.bytes.enumerated() { toGroup[24 + i] = b }
        #expect(toGroup.withUnsafeBytes { b in NeighborAdvertisement(UnsafeRawBufferPointer(rebasing: b[40...]), ip: IPv6Packet(b, at: 0)!) } == nil)
    }

    @Test("a DAD probe (from ::, to the solicited-node group, no option) is written with its checksum")
    func dadProbeBytes() {
        let probe = NeighborSolicitation(target: Self.me, sourceLinkLayer: nil)
        let group = Self.me.solicitedNodeMulticast
        let bytes = [UInt8](writing: 40 + probe.length) { w in
            IPv6Packet.writeHeader(to: &w, payloadLength: probe.length, nextHeader: 58, hopLimit: 255, source: .unspecified, destination: group)
            probe.write(to: &w)
            ICMPv6.storeChecksum(in: w, messageStart: 40, source: .unspecified, destination: group)
        }
        #expect(Array(bytes[40..<48]) == [0x87, 0x00, 0xc4, 0x02, 0, 0, 0, 0])   // type 135, checksum 0xc402
        #expect(bytes.count == 64)
    }

    @Test("UDP over IPv6: the header parses and the pseudo-header checksum verifies (0x0125)")
    func udp() throws {
        let source = IPv6Address(parsing: "fd00::1")!, destination = IPv6Address(parsing: "fd00::2")!
        var packet = [UInt8](writing: 40) { w in IPv6Packet.writeHeader(to: &w, payloadLength: 10, nextHeader: 17, hopLimit: 64, source: source, destination: destination) }
        packet += [0x9c, 0x40, 0x00, 0x07, 0x00, 0x0a, 0x01, 0x25, 0x68, 0x69]   // 40000 → 7, length 10, checksum, "hi"
        try packet.withUnsafeBytes { bytes in
            let ip = try #require(IPv6Packet(bytes, at: 0))
            let udp = try #require(UDPDatagram.header(bytes, in: ip.payload))
            #expect(udp.sourcePort == 40000 && udp.destinationPort == 7 && udp.length == 10 && udp.payload == 48..<50)
            #expect(UDPDatagram.checksumIsValid(bytes, udp, pseudoHeader: IPv6Packet.pseudoHeaderSum(source: source, destination: destination, length: 10, nextHeader: 17)))
        }
        #expect(packet.withUnsafeBytes { UDPDatagram.header($0, in: 40..<47) } == nil, "shorter than a header")
    }
}

@Suite("IP fragments")
struct FragmentTests {
    static let key: FragmentReassembler.Key = {
        let header = [UInt8](writing: 20) { w in
            IPv4Packet.writeHeader(to: &w, totalLength: 20, identification: 7, protocolNumber: 17, source: IPv4Address(10, 0, 0, 1), destination: IPv4Address(10, 0, 0, 2))
        }
        return FragmentReassembler.Key(header.withUnsafeBytes { IPv4Packet($0, at: 0)! })
    }()

    func add(_ r: inout FragmentReassembler, _ data: [UInt8], at offset: Int, more: Bool) -> FragmentReassembler.Outcome {
        data.withUnsafeBytes { r.add(Self.key, offset: offset, more: more, data: $0) }
    }

    @Test("fragments in any order make the datagram whole; a retransmitted one changes nothing")
    func reassemble() {
        let whole = (0..<100).map { UInt8($0) }
        var r = FragmentReassembler()
        #expect(add(&r, Array(whole[48..<100]), at: 48, more: false) == .incomplete)
        #expect(add(&r, Array(whole[0..<24]), at: 0, more: true) == .incomplete)
        #expect(add(&r, Array(whole[0..<24]), at: 0, more: true) == .incomplete)
        #expect(add(&r, Array(whole[24..<48]), at: 24, more: true) == .complete(whole))
        #expect(r.pendingCount == 0)
    }

    @Test("overlaps, lengths that are not multiples of 8, two ends and datagrams past 64 KiB are discarded whole; memory is bounded")
    func refusals() {
        var r = FragmentReassembler()
        #expect(add(&r, [UInt8](repeating: 1, count: 16), at: 0, more: true) == .incomplete)
        if case .discarded = add(&r, [UInt8](repeating: 2, count: 16), at: 8, more: true) {} else { Issue.record("an overlap was kept") }
        #expect(r.pendingCount == 0)
        if case .discarded = add(&r, [UInt8](repeating: 1, count: 12), at: 0, more: true) {} else { Issue.record("12 bytes with more to come") }
        #expect(add(&r, [UInt8](repeating: 1, count: 8), at: 16, more: false) == .incomplete)
        if case .discarded = add(&r, [UInt8](repeating: 1, count: 8), at: 24, more: false) {} else { Issue.record("two last fragments with different ends") }
        if case .discarded = add(&r, [UInt8](repeating: 1, count: 16), at: 65528, more: false) {} else { Issue.record("a datagram past 65535 bytes") }
        var many = FragmentReassembler()
        for id in 0..<40 {
            var key = Self.key; key.identification = UInt32(id)
            _ = [UInt8](repeating: 0, count: 8).withUnsafeBytes { many.add(key, offset: 0, more: true, data: $0) }
        }
        #expect(many.pendingCount == many.maximumPending && many.evicted == 40 - UInt64(many.maximumPending))
    }

    @Test("a datagram is cut into fragments of multiples of 8 that cover it")
    func cut() {
        #expect(Fragmentation.ranges(length: 20008, maximum: 1480).count == 14)
        let ranges = Fragmentation.ranges(length: 3000, maximum: 1452)
        #expect(ranges == [0..<1448, 1448..<2896, 2896..<3000])
    }
}
