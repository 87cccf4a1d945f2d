/// IPv6 (RFC 8200) addresses and packets: parsing with every length checked, the addresses a
/// node derives (RFC 4291: the EUI-64 link-local address, the solicited-node group, the
/// multicast MAC of RFC 2464), and the pseudo-header that upper-layer checksums cover.

/// A 128-bit IPv6 address.
public struct IPv6Address: Hashable, Sendable, CustomStringConvertible {
    /// The first 64 bits (the prefix half), big-endian order as a number.
    public var high: UInt64
    /// The last 64 bits (the interface identifier half).
    public var low: UInt64

    /// An address from its two halves.
    public init(high: UInt64, low: UInt64) { self.high = high; self.low = low }

    /// An address from eight 16-bit groups.
    public init(_ g0: UInt16, _ g1: UInt16, _ g2: UInt16, _ g3: UInt16, _ g4: UInt16, _ g5: UInt16, _ g6: UInt16, _ g7: UInt16) {
        high = UInt64(g0) << 48 | UInt64(g1) << 32 | UInt64(g2) << 16 | UInt64(g3)
        low = UInt64(g4) << 48 | UInt64(g5) << 32 | UInt64(g6) << 16 | UInt64(g7)
    }

    /// An address from 16 bytes; nil for any other count.
    public init?(_ bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        var h: UInt64 = 0, l: UInt64 = 0
        for (i, b) in bytes.enumerated() {
            if i < 8 { h = h << 8 | UInt64(b) } else { l = l << 8 | UInt64(b) }
        }
        high = h; low = l
    }

    /// The 16 bytes at `offset` of `bytes`, or nil when they do not fit.
    public init?(reading bytes: UnsafeRawBufferPointer, at offset: Int) {
        guard offset >= 0, offset <= bytes.count &- 16 else { return nil }
        high = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
        low = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset &+ 8, as: UInt64.self))
    }

    /// `::`, the unspecified address (the source of a duplicate-address-detection probe).
    public static let unspecified = IPv6Address(high: 0, low: 0)
    /// `ff02::1`, the link-local all-nodes group.
    public static let allNodes = IPv6Address(0xff02, 0, 0, 0, 0, 0, 0, 1)
    /// `ff02::2`, the link-local all-routers group.
    public static let allRouters = IPv6Address(0xff02, 0, 0, 0, 0, 0, 0, 2)

    /// The 16 bytes, network order.
    public var bytes: [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(16)
        for half in [high, low] {
            for shift in stride(from: 56, through: 0, by: -8) { result.append(UInt8(truncatingIfNeeded: half >> UInt64(shift))) }
        }
        return result
    }

    /// The eight 16-bit groups.
    public var groups: [UInt16] {
        var result: [UInt16] = []
        result.reserveCapacity(8)
        for half in [high, low] {
            for shift in stride(from: 48, through: 0, by: -16) { result.append(UInt16(truncatingIfNeeded: half >> UInt64(shift))) }
        }
        return result
    }

    /// Writes the 16 bytes.
    public func write(to writer: inout ByteWriter) {
        for i in 0..<8 { writer.u8(UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64(i)))) }
        for i in 0..<8 { writer.u8(UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64(i)))) }
    }

    /// The link-local address whose interface identifier is the modified EUI-64 of `mac`
    /// (RFC 4291 §2.5.1 and appendix A): `fe80::`, the MAC's first three bytes with the
    /// universal/local bit inverted, `ff:fe`, then its last three bytes.
    public static func linkLocal(mac: MACAddress) -> IPv6Address {
        IPv6Address(high: 0xfe80 << 48, low: interfaceIdentifier(mac: mac))
    }

    /// The modified EUI-64 interface identifier of a 48-bit MAC (RFC 4291 appendix A).
    public static func interfaceIdentifier(mac: MACAddress) -> UInt64 {
        let m = mac.array
        return UInt64(m[0] ^ 0x02) << 56 | UInt64(m[1]) << 48 | UInt64(m[2]) << 40 | 0xff << 32 | 0xfe << 24
            | UInt64(m[3]) << 16 | UInt64(m[4]) << 8 | UInt64(m[5])
    }

    /// `ff02::1:ffXX:XXXX`: the solicited-node group of this address (RFC 4291 §2.7.1), where
    /// neighbour solicitations for it are sent.
    public var solicitedNodeMulticast: IPv6Address {
        IPv6Address(high: 0xff02 << 48, low: 0x1_ff00_0000 | (low & 0xff_ffff))
    }

    /// `33:33` and the last four bytes: the Ethernet address of an IPv6 multicast group (RFC 2464 §7).
    public var multicastMAC: MACAddress {
        MACAddress(0x33, 0x33, UInt8(truncatingIfNeeded: low >> 24), UInt8(truncatingIfNeeded: low >> 16),
                   UInt8(truncatingIfNeeded: low >> 8), UInt8(truncatingIfNeeded: low))
    }

    /// `ff00::/8`.
    public var isMulticast: Bool { high >> 56 == 0xff }
    /// `fe80::/10`.
    public var isLinkLocal: Bool { high >> 54 == 0xfe80 >> 6 }
    /// `::`.
    public var isUnspecified: Bool { high == 0 && low == 0 }
    /// `ff02::1:ff00:0/104`.
    public var isSolicitedNodeMulticast: Bool { high == 0xff02 << 48 && low >> 24 == 0x1ff }

    /// Whether the first `length` bits equal those of `other`.
    public func sharesPrefix(with other: IPv6Address, length: Int) -> Bool {
        let n = max(0, min(128, length))
        if n <= 64 {
            let mask: UInt64 = n == 0 ? 0 : ~0 << (64 - UInt64(n))
            return high & mask == other.high & mask
        }
        let mask: UInt64 = ~0 << (128 - UInt64(n))
        return high == other.high && low & mask == other.low & mask
    }

    /// Parses the text forms of RFC 4291 §2.2: eight groups, `::` for a run of zero groups, and
    /// a dotted IPv4 address in the last 32 bits. A zone (`%eth0`) is not part of an address: nil.
    public init?(parsing text: String) {
        guard !text.isEmpty, text.utf8.count <= 45, text.allSatisfy({ $0.isASCII }) else { return nil }
        let halves = text.components(separatedByString: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: String, allowIPv4: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            var result: [UInt16] = []
            for (i, piece) in pieces.enumerated() {
                if i == pieces.count - 1, allowIPv4, piece.contains(".") {
                    guard let v4 = IPv4Address(parsing: String(piece)) else { return nil }
                    result.append(UInt16(v4.value >> 16)); result.append(UInt16(v4.value & 0xffff))
                    continue
                }
                guard (1...4).contains(piece.count), let value = UInt16(piece, radix: 16) else { return nil }
                result.append(value)
            }
            return result
        }
        var all: [UInt16]
        if halves.count == 2 {
            guard let head = groups(halves[0], allowIPv4: false), let tail = groups(halves[1], allowIPv4: true),
                  head.count + tail.count <= 7 else { return nil }
            all = head + [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        } else {
            guard let only = groups(halves[0], allowIPv4: true), only.count == 8 else { return nil }
            all = only
        }
        self.init(all[0], all[1], all[2], all[3], all[4], all[5], all[6], all[7])
    }

    /// RFC 5952's canonical text: lower case, no leading zeros, the longest run of two or more
    /// zero groups (the first of equal runs) as `::`.
    public var description: String {
        let g = groups
        var bestStart = -1, bestLength = 0, i = 0
        while i < 8 {
            guard g[i] == 0 else { i += 1; continue }
            var j = i
            while j < 8 && g[j] == 0 { j += 1 }
            if j - i > bestLength && j - i >= 2 { bestStart = i; bestLength = j - i }
            i = j
        }
        func hex(_ range: Range<Int>) -> String { range.map { String(g[$0], radix: 16) }.joined(separator: ":") }
        guard bestStart >= 0 else { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }
}

extension String {
    /// Splits on a two-character separator such as `::` (no Foundation, no string processing
    /// library): the pieces between its occurrences, left to right.
    func components(separatedByString separator: String) -> [String] {
        let text = Array(utf8), sep = Array(separator.utf8)
        var result: [String] = []
        var start = 0, i = 0
        while i + sep.count <= text.count {
            if Array(text[i..<(i + sep.count)]) == sep {
                result.append(String(decoding: text[start..<i], as: UTF8.self))
                i += sep.count
                start = i
            } else {
                i += 1
            }
        }
        result.append(String(decoding: text[start...], as: UTF8.self))
        return result
    }
}

/// An IPv6 address with its prefix length, as `fd00::2/64`.
public struct IPv6Interface: Hashable, Sendable, CustomStringConvertible {
    /// The address.
    public var address: IPv6Address
    /// The prefix length, 1 to 128.
    public var prefixLength: Int

    /// An address with its prefix length.
    public init(address: IPv6Address, prefixLength: Int) {
        self.address = address; self.prefixLength = prefixLength
    }

    /// Parses `ADDRESS/PREFIX` (the prefix defaults to 64); nil for anything malformed, for a
    /// multicast or unspecified address, or a prefix outside 1...128.
    public init?(parsing text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let address = IPv6Address(parsing: String(parts[0])),
              !address.isMulticast, !address.isUnspecified else { return nil }
        var prefix = 64
        if parts.count == 2 {
            guard parts[1].count <= 3, parts[1].allSatisfy(\.isASCII), let p = Int(parts[1]), (1...128).contains(p) else { return nil }
            prefix = p
        }
        self.init(address: address, prefixLength: prefix)
    }

    /// `address/prefix`.
    public var description: String { "\(address)/\(prefixLength)" }
}

/// An IPv6 packet: its header, the extension headers walked to the upper layer, and where that
/// layer's bytes lie. Positions are offsets into the bytes given to `init`.
public struct IPv6Packet: Sendable, Equatable {
    /// Next-header values this parser knows: hop-by-hop options (0).
    public static let hopByHop: UInt8 = 0
    /// TCP (6).
    public static let protocolTCP: UInt8 = 6
    /// UDP (17).
    public static let protocolUDP: UInt8 = 17
    /// The routing header (43).
    public static let routing: UInt8 = 43
    /// The fragment header (44).
    public static let fragmentHeader: UInt8 = 44
    /// ICMPv6 (58).
    public static let protocolICMPv6: UInt8 = 58
    /// No next header (59): nothing follows.
    public static let noNextHeader: UInt8 = 59
    /// Destination options (60).
    public static let destinationOptions: UInt8 = 60
    /// Bytes of the fixed header.
    public static let headerLength = 40

    /// A fragment header (RFC 8200 §4.5).
    public struct Fragment: Sendable, Equatable {
        /// The datagram's identification.
        public var identification: UInt32
        /// Where this fragment's data goes in the datagram's upper-layer bytes.
        public var offset: Int
        /// The M flag: more fragments follow.
        public var moreFragments: Bool
    }

    /// The source address.
    public var source: IPv6Address
    /// The destination address.
    public var destination: IPv6Address
    /// The hop limit (255 on every neighbour-discovery message, RFC 4861 §7.1).
    public var hopLimit: UInt8
    /// The upper-layer protocol after the extension headers (or, for a fragment, of the datagram).
    public var upperLayer: UInt8
    /// The upper-layer bytes (for a fragment: this fragment's part of them).
    public var payload: Range<Int>
    /// Where the IPv6 header starts.
    public var start: Int
    /// The fragment header, when the packet is a fragment.
    public var fragment: Fragment?

    /// Parses the packet whose IPv6 header starts at `offset`; nil for anything malformed: a
    /// version other than 6, a payload length past the bytes (or 0, a jumbogram), an extension
    /// header that runs off the end, a routing header with segments left (this node is no
    /// router), more than 8 extension headers, or no upper layer.
    public init?(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
        guard offset >= 0, let first = bytes.byte(at: offset), first >> 4 == 6,
              let payloadLength = bytes.be16(at: offset &+ 4), payloadLength > 0,
              let next = bytes.byte(at: offset &+ 6), let hops = bytes.byte(at: offset &+ 7),
              let source = IPv6Address(reading: bytes, at: offset &+ 8), let destination = IPv6Address(reading: bytes, at: offset &+ 24)
        else { return nil }
        let (end, overflow) = (offset &+ IPv6Packet.headerLength).addingReportingOverflow(Int(payloadLength))
        guard !overflow, end <= bytes.count else { return nil }
        var header = next
        var position = offset &+ IPv6Packet.headerLength
        var fragment: Fragment? = nil
        var walked = 0
        while true {
            switch header {
            case IPv6Packet.hopByHop, IPv6Packet.destinationOptions, IPv6Packet.routing:
                guard walked < 8, let following = bytes.byte(at: position), let units = bytes.byte(at: position &+ 1) else { return nil }
                let length = (Int(units) &+ 1) &* 8
                guard position &+ length <= end else { return nil }
                if header == IPv6Packet.routing {
                    guard let segmentsLeft = bytes.byte(at: position &+ 3), segmentsLeft == 0 else { return nil }
                }
                header = following
                position &+= length
                walked &+= 1
                continue
            case IPv6Packet.fragmentHeader:
                guard walked < 8, fragment == nil, position &+ 8 <= end, let following = bytes.byte(at: position),
                      let field = bytes.be16(at: position &+ 2), let identification = bytes.be32(at: position &+ 4) else { return nil }
                fragment = Fragment(identification: identification, offset: Int(field >> 3) &* 8, moreFragments: field & 1 != 0)
                header = following
                position &+= 8
                walked &+= 1
                continue
            case IPv6Packet.noNextHeader:
                return nil
            default:
                break
            }
            break
        }
        self.source = source
        self.destination = destination
        self.hopLimit = hops
        self.upperLayer = header
        self.payload = position..<end
        self.start = offset
        self.fragment = fragment
    }

    /// The sum of the upper-layer pseudo-header (RFC 8200 §8.1): both addresses, the
    /// upper-layer length and the next-header value.
    public static func pseudoHeaderSum(source: IPv6Address, destination: IPv6Address, length: Int, nextHeader: UInt8) -> UInt64 {
        func words(_ a: IPv6Address) -> UInt64 {
            (a.high >> 32) &+ (a.high & 0xffff_ffff) &+ (a.low >> 32) &+ (a.low & 0xffff_ffff)
        }
        return words(source) &+ words(destination) &+ UInt64(UInt32(truncatingIfNeeded: length)) &+ UInt64(nextHeader)
    }

    /// Writes a 40-byte IPv6 header: version 6, traffic class and flow label 0.
    public static func writeHeader(to writer: inout ByteWriter, payloadLength: Int, nextHeader: UInt8, hopLimit: UInt8,
                                   source: IPv6Address, destination: IPv6Address) {
        writer.be32(0x6000_0000)
        writer.be16(UInt16(truncatingIfNeeded: payloadLength))
        writer.u8(nextHeader)
        writer.u8(hopLimit)
        source.write(to: &writer)
        destination.write(to: &writer)
    }
}
