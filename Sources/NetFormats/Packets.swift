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
    var sum = initial
    var i = bytes.startIndex
    while i + 1 < bytes.endIndex {
        sum &+= UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1])
        i += 2
    }
    if i < bytes.endIndex { sum &+= UInt32(bytes[i]) << 8 }
    while sum >> 16 != 0 { sum = (sum & 0xffff) &+ (sum >> 16) }
    return ~UInt16(sum)
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

/// An IPv4 packet inside an Ethernet frame: header fields and where the payload lies.
public struct IPv4Packet: Sendable {
    public static let protocolICMP: UInt8 = 1
    public static let protocolTCP: UInt8 = 6
    public static let protocolUDP: UInt8 = 17

    public var source: IPv4Address
    public var destination: IPv4Address
    public var protocolNumber: UInt8
    public var ttl: UInt8
    /// Range of the IP payload within the frame.
    public var payload: Range<Int>

    /// Parses and checks the header (version, length, checksum); nil for anything malformed.
    public init?(frame: [UInt8]) {
        let p = EthernetFrame.headerLength
        guard frame.count >= p + 20, EthernetFrame.etherType(of: frame) == EthernetFrame.ipv4Type,
              frame[p] >> 4 == 4 else { return nil }
        let headerLength = Int(frame[p] & 0x0f) * 4
        let totalLength = Int(frame.be16(p + 2))
        guard headerLength >= 20, totalLength >= headerLength, p + totalLength <= frame.count,
              internetChecksum(frame[p..<(p + headerLength)]) == 0 else { return nil }
        // Fragments are not reassembled: only whole datagrams are answered.
        let fragment = frame.be16(p + 6)
        guard fragment & 0x3fff == 0 else { return nil }
        source = IPv4Address(bytes: frame[(p + 12)..<(p + 16)])
        destination = IPv4Address(bytes: frame[(p + 16)..<(p + 20)])
        protocolNumber = frame[p + 9]
        ttl = frame[p + 8]
        payload = (p + headerLength)..<(p + totalLength)
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
