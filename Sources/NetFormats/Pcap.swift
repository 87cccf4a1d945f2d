/// The classic pcap file format (what tcpdump writes and tshark/Wireshark read): a 24-byte
/// global header, then per frame a 16-byte record header and the frame bytes. Written
/// little-endian with microsecond timestamps and LINKTYPE_ETHERNET (or LINKTYPE_RAW for an L3 tun).
public enum Pcap {
    public static let magicMicroseconds: UInt32 = 0xa1b2_c3d4
    public static let magicNanoseconds: UInt32 = 0xa1b2_3c4d
    public static let linkTypeEthernet: UInt32 = 1
    /// `LINKTYPE_RAW`: IP packets without a link-layer header (an L3 tun).
    public static let linkTypeRaw: UInt32 = 101
    public static let globalHeaderLength = 24
    public static let recordHeaderLength = 16

    /// The 24-byte global header (Ethernet unless `linkType` says otherwise).
    public static func globalHeader(snapLength: UInt32 = 65535, linkType: UInt32 = linkTypeEthernet) -> [UInt8] {
        var bytes: [UInt8] = []
        put(magicMicroseconds, &bytes)
        put(UInt16(2), &bytes)         // version 2.4
        put(UInt16(4), &bytes)
        put(UInt32(0), &bytes)         // thiszone
        put(UInt32(0), &bytes)         // sigfigs
        put(snapLength, &bytes)
        put(linkType, &bytes)
        return bytes
    }

    public static func recordHeader(seconds: UInt32, microseconds: UInt32, capturedLength: Int, originalLength: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        put(seconds, &bytes)
        put(microseconds, &bytes)
        put(UInt32(capturedLength), &bytes)
        put(UInt32(originalLength), &bytes)
        return bytes
    }

    private static func put<T: FixedWidthInteger>(_ value: T, _ bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case tooShort
        case badMagic(UInt32)
        case unsupportedLinkType(UInt32)
        case truncatedRecord(index: Int, offset: Int)
        case recordTooLarge(index: Int, length: Int)
        /// A pcapng block that breaks the format (a length, an option, an interface id).
        case malformedBlock(offset: Int, reason: String)

        public var description: String {
            switch self {
            case .tooShort: return "shorter than a pcap header (24 bytes)"
            case .badMagic(let magic): return "neither a pcap nor a pcapng file (magic 0x\(String(magic, radix: 16)))"
            case .unsupportedLinkType(let type): return "link type \(type) is neither Ethernet (1) nor raw IP (101)"
            case .truncatedRecord(let index, let offset): return "record \(index) at byte \(offset) is truncated"
            case .recordTooLarge(let index, let length): return "record \(index) claims \(length) bytes, more than 262144"
            case .malformedBlock(let offset, let reason): return "the pcapng block at byte \(offset) is malformed: \(reason)"
            }
        }
    }

    /// Parses a whole pcap file (either byte order, µs or ns timestamps) of Ethernet frames.
    public static func parse(_ data: [UInt8]) throws(ParseError) -> [[UInt8]] {
        try parsePackets(data, linkTypes: [linkTypeEthernet]).map(\.bytes)
    }

    /// Parses a whole pcap file whose link type is one of `linkTypes` into its packets, with
    /// their timestamps in nanoseconds.
    public static func parsePackets(_ data: [UInt8], linkTypes: Set<UInt32>) throws(ParseError) -> [CapturedPacket] {
        guard data.count >= globalHeaderLength else { throw .tooShort }
        let rawMagic = UInt32(data[0]) | UInt32(data[1]) << 8 | UInt32(data[2]) << 16 | UInt32(data[3]) << 24
        let swapped: Bool, nanosecondUnits: Bool
        switch rawMagic {
        case magicMicroseconds: swapped = false; nanosecondUnits = false
        case magicNanoseconds: swapped = false; nanosecondUnits = true
        case magicMicroseconds.byteSwapped: swapped = true; nanosecondUnits = false
        case magicNanoseconds.byteSwapped: swapped = true; nanosecondUnits = true
        default: throw .badMagic(rawMagic)
        }
        func u32(_ o: Int) -> UInt32 {
            let v = UInt32(data[o]) | UInt32(data[o + 1]) << 8 | UInt32(data[o + 2]) << 16 | UInt32(data[o + 3]) << 24
            return swapped ? v.byteSwapped : v
        }
        let linkType = u32(20) & 0x0fff_ffff
        guard linkTypes.contains(linkType) else { throw .unsupportedLinkType(linkType) }
        var packets: [CapturedPacket] = []
        var offset = globalHeaderLength
        while offset < data.count {
            guard data.count - offset >= recordHeaderLength else { throw .truncatedRecord(index: packets.count, offset: offset) }
            let length = Int(u32(offset + 8))
            guard length <= 262_144 else { throw .recordTooLarge(index: packets.count, length: length) }
            let start = offset + recordHeaderLength
            guard length <= data.count - start else { throw .truncatedRecord(index: packets.count, offset: offset) }
            let seconds = UInt64(u32(offset)), fraction = UInt64(u32(offset + 4))
            packets.append(CapturedPacket(bytes: Array(data[start..<(start + length)]), linkType: linkType,
                                          timestampNanoseconds: seconds * 1_000_000_000 + fraction * (nanosecondUnits ? 1 : 1000)))
            offset = start + length
        }
        return packets
    }
}
