/// IPv4, ARP, ICMP echo and UDP: the formats an endpoint needs to answer ARP, ping and a UDP
/// echo service. Pure parsing and building over byte arrays, big-endian on the wire.

public struct IPv4Address: Hashable, Sendable, CustomStringConvertible {
    public var value: UInt32
    public init(_ value: UInt32) { self.value = value }
    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad notation; nil for anything else.
    public init?(parsing text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), let byte = UInt8(part) else { return nil }
            value = value << 8 | UInt32(byte)
        }
        self.value = value
    }

    public var bytes: [UInt8] { [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff)] }
    public var description: String { bytes.map(String.init).joined(separator: ".") }

    init(bytes b: ArraySlice<UInt8>) {
        let s = b.startIndex
        self.init(b[s], b[s + 1], b[s + 2], b[s + 3])
    }
}

/// An address with its prefix length, as `10.0.0.2/24`.
public struct IPv4Interface: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    public var prefixLength: Int

    public init(address: IPv4Address, prefixLength: Int) {
        self.address = address; self.prefixLength = prefixLength
    }

    public init?(parsing text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPv4Address(parsing: String(parts[0])) else { return nil }
        var prefix = 24
        if parts.count == 2 {
            guard let p = Int(parts[1]), (1...32).contains(p) else { return nil }
            prefix = p
        }
        self.init(address: address, prefixLength: prefix)
    }

    public var netmask: IPv4Address { IPv4Address(prefixLength == 0 ? 0 : UInt32.max << (32 - UInt32(prefixLength))) }
    public var description: String { "\(address)/\(prefixLength)" }
}

/// RFC 1071 one's-complement checksum.
public func internetChecksum(_ bytes: ArraySlice<UInt8>, initial: UInt32 = 0) -> UInt16 {
    bytes.withUnsafeBytes { internetChecksum($0, initial: UInt64(initial)) }
}

extension Array where Element == UInt8 {
    @inline(__always) func be16(_ offset: Int) -> UInt16 { UInt16(self[offset]) << 8 | UInt16(self[offset + 1]) }
    @inline(__always) mutating func putBE16(_ value: UInt16, at offset: Int) {
        self[offset] = UInt8(value >> 8); self[offset + 1] = UInt8(value & 0xff)
    }
}

/// An ARP packet for IPv4 over Ethernet (RFC 826), inside an Ethernet frame.
public struct ARPPacket: Equatable, Sendable {
    public enum Operation: UInt16, Sendable { case request = 1, reply = 2 }
    public var operation: Operation
    public var senderMAC: MACAddress
    public var senderIP: IPv4Address
    public var targetMAC: MACAddress
    public var targetIP: IPv4Address

    public init(operation: Operation, senderMAC: MACAddress, senderIP: IPv4Address, targetMAC: MACAddress, targetIP: IPv4Address) {
        self.operation = operation; self.senderMAC = senderMAC; self.senderIP = senderIP
        self.targetMAC = targetMAC; self.targetIP = targetIP
    }

    /// Parses an Ethernet frame carrying ARP for IPv4; nil for anything else.
    public init?(frame: [UInt8]) {
        let p = EthernetFrame.headerLength
        guard frame.count >= p + 28, EthernetFrame.etherType(of: frame) == EthernetFrame.arpType,
              frame.be16(p) == 1, frame.be16(p + 2) == 0x0800, frame[p + 4] == 6, frame[p + 5] == 4,
              let op = Operation(rawValue: frame.be16(p + 6)),
              let sha = MACAddress(frame[(p + 8)..<(p + 14)]), let tha = MACAddress(frame[(p + 18)..<(p + 24)])
        else { return nil }
        self.init(operation: op, senderMAC: sha, senderIP: IPv4Address(bytes: frame[(p + 14)..<(p + 18)]),
                  targetMAC: tha, targetIP: IPv4Address(bytes: frame[(p + 24)..<(p + 28)]))
    }

    /// The Ethernet frame: to the target (or broadcast for a request), from the sender.
    public func frame() -> [UInt8] {
        var payload: [UInt8] = [0x00, 0x01, 0x08, 0x00, 6, 4, 0, UInt8(operation.rawValue)]
        payload += senderMAC.array + senderIP.bytes + targetMAC.array + targetIP.bytes
        let destination = operation == .request ? MACAddress.broadcast : targetMAC
        return EthernetFrame.build(destination: destination, source: senderMAC, etherType: EthernetFrame.arpType, payload: payload)
    }
}

/// An IPv4 packet: header fields and where the payload lies, as offsets into the bytes parsed.
public struct IPv4Packet: Sendable {
    public static let protocolICMP: UInt8 = 1
    public static let protocolTCP: UInt8 = 6
    public static let protocolUDP: UInt8 = 17
    /// Bytes of a header without options.
    public static let minimumHeaderLength = 20

    public var source: IPv4Address
    public var destination: IPv4Address
    public var protocolNumber: UInt8
    public var ttl: UInt8
    /// Range of the IP payload (for a fragment: this fragment's part of it).
    public var payload: Range<Int>
    /// Where the header starts.
    public var start: Int = 0
    /// The identification field (which fragments belong together).
    public var identification: UInt16 = 0
    /// The fragment offset, in bytes.
    public var fragmentOffset: Int = 0
    /// The MF flag.
    public var moreFragments: Bool = false
    /// Whether this is a fragment of a larger datagram (an offset or MF).
    public var isFragment: Bool { fragmentOffset != 0 || moreFragments }

    /// Parses and checks the header at `offset` (version, lengths, header checksum); nil for
    /// anything malformed. Fragments are parsed (see `isFragment`), not refused.
    public init?(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
        guard offset >= 0, let first = bytes.byte(at: offset), first >> 4 == 4,
              let total = bytes.be16(at: offset &+ 2), let fragment = bytes.be16(at: offset &+ 6),
              let ttl = bytes.byte(at: offset &+ 8), let proto = bytes.byte(at: offset &+ 9),
              let src = bytes.be32(at: offset &+ 12), let dst = bytes.be32(at: offset &+ 16),
              let identification = bytes.be16(at: offset &+ 4) else { return nil }
        let headerLength = Int(first & 0x0f) &* 4
        let totalLength = Int(total)
        guard headerLength >= IPv4Packet.minimumHeaderLength, totalLength >= headerLength, totalLength <= bytes.count &- offset,
              let header = bytes.bytes(offset..<(offset &+ headerLength)), internetChecksum(header) == 0 else { return nil }
        // The reserved flag must be clear.
        guard fragment & 0x8000 == 0 else { return nil }
        source = IPv4Address(src)
        destination = IPv4Address(dst)
        protocolNumber = proto
        self.ttl = ttl
        payload = (offset &+ headerLength)..<(offset &+ totalLength)
        start = offset
        self.identification = identification
        fragmentOffset = Int(fragment & 0x1fff) &* 8
        moreFragments = fragment & 0x2000 != 0
    }

    /// Parses and checks the header of an Ethernet frame carrying IPv4; nil for anything
    /// malformed, and for a fragment: only whole datagrams are parsed here.
    public init?(frame: [UInt8]) {
        guard EthernetFrame.etherType(of: frame) == EthernetFrame.ipv4Type,
              let packet = frame.withUnsafeBytes({ IPv4Packet($0, at: EthernetFrame.headerLength) }), !packet.isFragment else { return nil }
        self = packet
    }

    /// Writes a 20-byte header with its checksum: DF unless `fragmentOffset` or `moreFragments`
    /// say it is a fragment (then DF is clear).
    public static func writeHeader(to writer: inout ByteWriter, totalLength: Int, identification: UInt16, protocolNumber: UInt8,
                                   source: IPv4Address, destination: IPv4Address, ttl: UInt8 = 64,
                                   fragmentOffset: Int = 0, moreFragments: Bool = false) {
        let start = writer.offset
        writer.u8(0x45); writer.u8(0)
        writer.be16(UInt16(truncatingIfNeeded: totalLength))
        writer.be16(identification)
        let fragment = fragmentOffset == 0 && !moreFragments ? 0x4000 : UInt16(truncatingIfNeeded: fragmentOffset / 8) & 0x1fff | (moreFragments ? 0x2000 : 0)
        writer.be16(fragment)
        writer.u8(ttl); writer.u8(protocolNumber)
        writer.be16(0)
        writer.be32(source.value); writer.be32(destination.value)
        writer.put16(internetChecksum(writer.written(from: start)), at: start &+ 10)
    }

    /// The sum of the upper-layer pseudo-header (RFC 768): both addresses, the protocol and the length.
    public static func pseudoHeaderSum(source: IPv4Address, destination: IPv4Address, protocolNumber: UInt8, length: Int) -> UInt64 {
        UInt64(source.value) &+ UInt64(destination.value) &+ UInt64(protocolNumber) &+ UInt64(UInt32(truncatingIfNeeded: length))
    }

    /// Builds an Ethernet frame with a 20-byte IPv4 header around `payload`.
    public static func frame(destinationMAC: MACAddress, sourceMAC: MACAddress, source: IPv4Address, destination: IPv4Address,
                             protocolNumber: UInt8, identification: UInt16 = 0, payload: [UInt8]) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: 20)
        header[0] = 0x45
        header.putBE16(UInt16(20 + payload.count), at: 2)
        header.putBE16(identification, at: 4)
        header.putBE16(0x4000, at: 6) // don't fragment
        header[8] = 64
        header[9] = protocolNumber
        header.replaceSubrange(12..<16, with: source.bytes)
        header.replaceSubrange(16..<20, with: destination.bytes)
        header.putBE16(internetChecksum(header[...]), at: 10)
        return EthernetFrame.build(destination: destinationMAC, source: sourceMAC, etherType: EthernetFrame.ipv4Type, payload: header + payload)
    }
}

/// ICMP echo (RFC 792): the request ping sends, and what identifies a reply.
public enum ICMPEcho {
    /// An echo request message (type 8, code 0) with its checksum.
    public static func request(identifier: UInt16, sequence: UInt16, payload: [UInt8]) -> [UInt8] {
        var message: [UInt8] = [8, 0, 0, 0, UInt8(identifier >> 8), UInt8(identifier & 0xff), UInt8(sequence >> 8), UInt8(sequence & 0xff)] + payload
        message.putBE16(internetChecksum(message[...]), at: 2)
        return message
    }

    /// The identifier and sequence of an echo reply (type 0), or nil for any other message.
    public static func reply(in message: ArraySlice<UInt8>) -> (identifier: UInt16, sequence: UInt16)? {
        let s = message.startIndex
        guard message.count >= 8, message[s] == 0 else { return nil }
        return (UInt16(message[s + 4]) << 8 | UInt16(message[s + 5]), UInt16(message[s + 6]) << 8 | UInt16(message[s + 7]))
    }
}

/// UDP (RFC 768) with the IPv4 pseudo-header checksum.
public enum UDPDatagram {
    /// Parses the datagram; with `verifyChecksum` a non-zero checksum must be right.
    public static func parse(frame: [UInt8], ip: IPv4Packet, verifyChecksum: Bool = true) -> (sourcePort: UInt16, destinationPort: UInt16, payload: Range<Int>)? {
        let u = ip.payload.lowerBound
        guard ip.protocolNumber == IPv4Packet.protocolUDP, ip.payload.count >= 8 else { return nil }
        let length = Int(frame.be16(u + 4))
        guard length >= 8, length <= ip.payload.count else { return nil }
        let checksum = frame.be16(u + 6)
        if verifyChecksum && checksum != 0 {
            let sum = pseudoHeaderSum(source: ip.source, destination: ip.destination, length: length)
            guard internetChecksum(frame[u..<(u + length)], initial: sum) == 0 else { return nil }
        }
        return (frame.be16(u), frame.be16(u + 2), (u + 8)..<(u + length))
    }

    public static func build(source: IPv4Address, destination: IPv4Address, sourcePort: UInt16, destinationPort: UInt16, payload: ArraySlice<UInt8>) -> [UInt8] {
        var segment = [UInt8](repeating: 0, count: 8)
        segment.putBE16(sourcePort, at: 0)
        segment.putBE16(destinationPort, at: 2)
        segment.putBE16(UInt16(8 + payload.count), at: 4)
        segment += payload
        var checksum = internetChecksum(segment[...], initial: pseudoHeaderSum(source: source, destination: destination, length: segment.count))
        if checksum == 0 { checksum = 0xffff }
        segment.putBE16(checksum, at: 6)
        return segment
    }

    static func pseudoHeaderSum(source: IPv4Address, destination: IPv4Address, length: Int) -> UInt32 {
        (source.value >> 16) + (source.value & 0xffff) + (destination.value >> 16) + (destination.value & 0xffff)
            + UInt32(IPv4Packet.protocolUDP) + UInt32(length)
    }
}

extension UDPDatagram {
    /// A UDP header and where its payload lies.
    public struct Header: Sendable, Equatable {
        public var sourcePort: UInt16
        public var destinationPort: UInt16
        /// The length field: header and payload.
        public var length: Int
        /// The checksum field (0: none, allowed over IPv4 only).
        public var checksum: UInt16
        /// The payload, as offsets into the bytes parsed.
        public var payload: Range<Int>
        /// Where the header starts.
        public var start: Int { payload.lowerBound &- 8 }
    }

    /// Parses the UDP header at the start of `segment` (an IP payload): its length field must
    /// be at least 8 and fit the segment. The checksum is not looked at (see `checksumIsValid`).
    public static func header(_ bytes: UnsafeRawBufferPointer, in segment: Range<Int>) -> Header? {
        let u = segment.lowerBound
        guard segment.count >= 8, segment.upperBound <= bytes.count, let source = bytes.be16(at: u), let destination = bytes.be16(at: u &+ 2),
              let length = bytes.be16(at: u &+ 4), let checksum = bytes.be16(at: u &+ 6),
              Int(length) >= 8, Int(length) <= segment.count else { return nil }
        return Header(sourcePort: source, destinationPort: destination, length: Int(length), checksum: checksum, payload: (u &+ 8)..<(u &+ Int(length)))
    }

    /// Whether the datagram's checksum is right, given its pseudo-header sum.
    public static func checksumIsValid(_ bytes: UnsafeRawBufferPointer, _ header: Header, pseudoHeader: UInt64) -> Bool {
        guard let datagram = bytes.bytes(header.start..<header.payload.upperBound) else { return false }
        return internetChecksum(datagram, initial: pseudoHeader) == 0
    }
}
