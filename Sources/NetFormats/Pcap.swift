/// The classic pcap file format (what tcpdump writes and tshark/Wireshark read): a 24-byte
/// global header, then per frame a 16-byte record header and the frame bytes. Written
/// little-endian with microsecond timestamps and LINKTYPE_ETHERNET.
public enum Pcap {
    public static let magicMicroseconds: UInt32 = 0xa1b2_c3d4
    public static let magicNanoseconds: UInt32 = 0xa1b2_3c4d
    public static let linkTypeEthernet: UInt32 = 1
    public static let globalHeaderLength = 24
    public static let recordHeaderLength = 16

    public static func globalHeader(snapLength: UInt32 = 65535) -> [UInt8] {
        var bytes: [UInt8] = []
        put(magicMicroseconds, &bytes)
        put(UInt16(2), &bytes)         // version 2.4
        put(UInt16(4), &bytes)
        put(UInt32(0), &bytes)         // thiszone
        put(UInt32(0), &bytes)         // sigfigs
        put(snapLength, &bytes)
        put(linkTypeEthernet, &bytes)
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

        public var description: String {
            switch self {
            case .tooShort: return "shorter than a pcap header (24 bytes)"
            case .badMagic(let magic): return "not a pcap file (magic 0x\(String(magic, radix: 16)); pcapng is not supported: convert with `editcap -F pcap`)"
            case .unsupportedLinkType(let type): return "link type \(type) is not Ethernet (1)"
            case .truncatedRecord(let index, let offset): return "record \(index) at byte \(offset) is truncated"
            case .recordTooLarge(let index, let length): return "record \(index) claims \(length) bytes, more than 262144"
            }
        }
    }

    /// Parses a whole pcap file (either byte order, µs or ns timestamps) into its frames.
    public static func parse(_ data: [UInt8]) throws(ParseError) -> [[UInt8]] {
        guard data.count >= globalHeaderLength else { throw .tooShort }
        let rawMagic = UInt32(data[0]) | UInt32(data[1]) << 8 | UInt32(data[2]) << 16 | UInt32(data[3]) << 24
        let swapped: Bool
        switch rawMagic {
        case magicMicroseconds, magicNanoseconds: swapped = false
        case magicMicroseconds.byteSwapped, magicNanoseconds.byteSwapped: swapped = true
        default: throw .badMagic(rawMagic)
        }
        func u32(_ o: Int) -> UInt32 {
            let v = UInt32(data[o]) | UInt32(data[o + 1]) << 8 | UInt32(data[o + 2]) << 16 | UInt32(data[o + 3]) << 24
            return swapped ? v.byteSwapped : v
        }
        let linkType = u32(20) & 0x0fff_ffff
        guard linkType == linkTypeEthernet else { throw .unsupportedLinkType(linkType) }
        var frames: [[UInt8]] = []
        var offset = globalHeaderLength
        while offset < data.count {
            guard offset + recordHeaderLength <= data.count else { throw .truncatedRecord(index: frames.count, offset: offset) }
            let length = Int(u32(offset + 8))
            guard length <= 262_144 else { throw .recordTooLarge(index: frames.count, length: length) }
            let start = offset + recordHeaderLength
            guard start + length <= data.count else { throw .truncatedRecord(index: frames.count, offset: offset) }
            frames.append(Array(data[start..<(start + length)]))
            offset = start + length
        }
        return frames
    }
}
