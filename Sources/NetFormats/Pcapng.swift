/// pcapng (draft-ietf-opsawg-pcapng): blocks with options, so a capture keeps what classic
/// pcap cannot, each frame's interface (one per queue), its direction (`epb_flags`), a
/// nanosecond timestamp (`if_tsresol` 9) and a comment (`opt_comment`). Written little-endian;
/// read in either byte order, with every length checked against the block it lies in.
public enum Pcapng {
    /// Block types: the section header block (0x0A0D0D0A).
    public static let sectionHeaderBlock: UInt32 = 0x0A0D_0D0A
    /// Interface description block (1).
    public static let interfaceDescriptionBlock: UInt32 = 1
    /// The obsolete packet block (2), read only.
    public static let obsoletePacketBlock: UInt32 = 2
    /// Simple packet block (3), read only.
    public static let simplePacketBlock: UInt32 = 3
    /// Enhanced packet block (6).
    public static let enhancedPacketBlock: UInt32 = 6
    /// The byte-order magic of a section header.
    public static let byteOrderMagic: UInt32 = 0x1A2B_3C4D

    /// Option codes: `opt_endofopt` (0) ends a block's options.
    public static let endOfOptions: UInt16 = 0
    /// `opt_comment` (1).
    public static let commentOption: UInt16 = 1
    /// `shb_userappl` (4).
    public static let userApplicationOption: UInt16 = 4
    /// `if_name` (2).
    public static let interfaceNameOption: UInt16 = 2
    /// `if_description` (3).
    public static let interfaceDescriptionOption: UInt16 = 3
    /// `if_tsresol` (9).
    public static let timestampResolutionOption: UInt16 = 9
    /// `epb_flags` (2).
    public static let flagsOption: UInt16 = 2

    /// The largest packet a reader accepts (as pcap: 256 KiB).
    public static let maximumPacket = 262_144

    /// `epb_flags` bits 0-1: which way the frame went, seen from the capturing interface.
    public enum Direction: UInt32, Sendable, Equatable {
        case unknown = 0
        /// Received by the interface (for swift-vhost: from the device, on an RX ring).
        case inbound = 1
        /// Sent by the interface (for swift-vhost: to the device, on a TX ring).
        case outbound = 2
    }

    private static func put<T: FixedWidthInteger>(_ value: T, _ bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// An option: code, length, value, padding to 32 bits.
    private static func option(_ code: UInt16, _ value: [UInt8], _ bytes: inout [UInt8]) {
        put(code, &bytes)
        put(UInt16(truncatingIfNeeded: value.count), &bytes)
        bytes += value
        bytes += [UInt8](repeating: 0, count: (4 - value.count % 4) % 4)
    }

    /// Appends a block: type, total length, `body`, total length again.
    private static func block(_ type: UInt32, _ body: [UInt8], _ bytes: inout [UInt8]) {
        let total = UInt32(truncatingIfNeeded: 12 + body.count)
        put(type, &bytes)
        put(total, &bytes)
        bytes += body
        put(total, &bytes)
    }

    /// Option values longer than an option can say (65535 bytes) are cut.
    private static func utf8(_ text: String) -> [UInt8] { Array(text.utf8.prefix(65_532)) }

    /// A section header block: version 1.0, section length unknown (-1), and `shb_userappl`.
    public static func sectionHeader(application: String) -> [UInt8] {
        var body: [UInt8] = []
        put(byteOrderMagic, &body)
        put(UInt16(1), &body)
        put(UInt16(0), &body)
        put(UInt64.max, &body)
        option(userApplicationOption, utf8(application), &body)
        option(endOfOptions, [], &body)
        var bytes: [UInt8] = []
        block(sectionHeaderBlock, body, &bytes)
        return bytes
    }

    /// An interface description block with nanosecond timestamps (`if_tsresol` 9), a name and
    /// a description. `snapLength` 0 means no limit.
    public static func interfaceDescription(linkType: UInt16, snapLength: UInt32 = 0, name: String, description: String? = nil) -> [UInt8] {
        var body: [UInt8] = []
        put(linkType, &body)
        put(UInt16(0), &body)
        put(snapLength, &body)
        option(interfaceNameOption, utf8(name), &body)
        if let description { option(interfaceDescriptionOption, utf8(description), &body) }
        option(timestampResolutionOption, [9], &body)
        option(endOfOptions, [], &body)
        var bytes: [UInt8] = []
        block(interfaceDescriptionBlock, body, &bytes)
        return bytes
    }

    /// Appends an enhanced packet block to `bytes`: the interface, a timestamp in the
    /// interface's units (nanoseconds here), the packet, `epb_flags` with the direction, and a comment.
    public static func appendEnhancedPacket(to bytes: inout [UInt8], interface: UInt32, timestamp: UInt64, packet: UnsafeRawBufferPointer,
                                            originalLength: Int? = nil, direction: Direction? = nil, comment: String? = nil) {
        var options: [UInt8] = []
        if let direction { option(flagsOption, withUnsafeBytes(of: direction.rawValue.littleEndian) { Array($0) }, &options) }
        if let comment { option(commentOption, utf8(comment), &options) }
        if !options.isEmpty { option(endOfOptions, [], &options) }
        let padding = (4 - packet.count % 4) % 4
        let total = UInt32(truncatingIfNeeded: 32 + packet.count + padding + options.count)
        put(enhancedPacketBlock, &bytes)
        put(total, &bytes)
        put(interface, &bytes)
        put(UInt32(truncatingIfNeeded: timestamp >> 32), &bytes)
        put(UInt32(truncatingIfNeeded: timestamp), &bytes)
        put(UInt32(truncatingIfNeeded: packet.count), &bytes)
        put(UInt32(truncatingIfNeeded: originalLength ?? packet.count), &bytes)
        bytes.append(contentsOf: packet)
        bytes.append(contentsOf: repeatElement(0, count: padding))
        bytes += options
        put(total, &bytes)
    }

    /// An enhanced packet block (see `appendEnhancedPacket`).
    public static func enhancedPacket(interface: UInt32, timestamp: UInt64, packet: [UInt8], direction: Direction? = nil, comment: String? = nil) -> [UInt8] {
        var bytes: [UInt8] = []
        packet.withUnsafeBytes { appendEnhancedPacket(to: &bytes, interface: interface, timestamp: timestamp, packet: $0, direction: direction, comment: comment) }
        return bytes
    }

    // MARK: the virtio-net header as a comment

    /// The comment that carries a frame's virtio-net header: its fields by name (as
    /// linux/virtio_net.h calls them), then the raw little-endian bytes in brackets, which
    /// `virtioNetHeaderBytes(inComment:)` reads back.
    public static func virtioNetHeaderComment(_ header: [UInt8]) -> String {
        func u16(_ i: Int) -> Int { i + 1 < header.count ? Int(header[i]) | Int(header[i + 1]) << 8 : 0 }
        func hex2(_ b: UInt8) -> String { (b < 16 ? "0" : "") + String(b, radix: 16) }
        var fields = "flags 0x\(hex2(header.first ?? 0)) gso_type 0x\(hex2(header.count > 1 ? header[1] : 0)) hdr_len \(u16(2)) gso_size \(u16(4)) csum_start \(u16(6)) csum_offset \(u16(8))"
        if header.count >= 12 { fields += " num_buffers \(u16(10))" }
        return "virtio-net header: \(fields) [\(header.map(hex2).joined(separator: " "))]"
    }

    /// The raw header bytes of a `virtioNetHeaderComment`, or nil when the comment is not one
    /// (or its bytes are not 10, 12 or 24 two-digit hex values).
    public static func virtioNetHeaderBytes(inComment comment: String) -> [UInt8]? {
        guard comment.hasPrefix("virtio-net header:"), let open = comment.lastIndex(of: "["), let close = comment.lastIndex(of: "]"), open < close else { return nil }
        let words = comment[comment.index(after: open)..<close].split(separator: " ")
        guard [10, 12, 24].contains(words.count) else { return nil }
        var bytes: [UInt8] = []
        for word in words {
            guard word.count == 2, let b = UInt8(word, radix: 16) else { return nil }
            bytes.append(b)
        }
        return bytes
    }
}

/// One packet of a capture file, pcap or pcapng.
public struct CapturedPacket: Sendable, Equatable {
    /// The bytes captured.
    public var bytes: [UInt8]
    /// The link type of its interface (1 Ethernet, 101 raw IP).
    public var linkType: UInt32
    /// The interface it was captured on (pcapng; 0 for pcap).
    public var interface: Int
    /// Its direction (pcapng `epb_flags`), when the file says.
    public var direction: Pcapng.Direction?
    /// Its timestamp in nanoseconds since the epoch, when it can be told.
    public var timestampNanoseconds: UInt64?
    /// Its comments (pcapng `opt_comment`).
    public var comments: [String]

    /// A packet with the given fields.
    public init(bytes: [UInt8], linkType: UInt32, interface: Int = 0, direction: Pcapng.Direction? = nil,
                timestampNanoseconds: UInt64? = nil, comments: [String] = []) {
        self.bytes = bytes; self.linkType = linkType; self.interface = interface; self.direction = direction
        self.timestampNanoseconds = timestampNanoseconds; self.comments = comments
    }

    /// The virtio-net header a comment carries (see `Pcapng.virtioNetHeaderComment`), as raw bytes.
    public var virtioNetHeaderBytes: [UInt8]? { comments.lazy.compactMap(Pcapng.virtioNetHeaderBytes(inComment:)).first }
}

/// A capture file read whole: pcap or pcapng, told apart by the first four bytes.
public struct CaptureFile: Sendable {
    /// Which format the file was in.
    public enum Format: String, Sendable { case pcap, pcapng }
    /// The format.
    public var format: Format
    /// Every packet, in file order.
    public var packets: [CapturedPacket]
    /// The link types this reader takes: Ethernet and raw IP (`LINKTYPE_RAW`).
    public static let supportedLinkTypes: Set<UInt32> = [Pcap.linkTypeEthernet, Pcap.linkTypeRaw]

    /// Parses a pcap or pcapng file. Throws with the reason for anything it cannot read: bad
    /// magic, a link type other than Ethernet or raw IP, a block or record that does not fit
    /// the file or claims more than 256 KiB of packet, options that run off their block.
    public init(parsing data: [UInt8]) throws(Pcap.ParseError) {
        guard data.count >= 4 else { throw .tooShort }
        let first = UInt32(data[0]) | UInt32(data[1]) << 8 | UInt32(data[2]) << 16 | UInt32(data[3]) << 24
        if first == Pcapng.sectionHeaderBlock {
            format = .pcapng
            let parsed = data.withUnsafeBytes { bytes in Result { () throws(Pcap.ParseError) in try CaptureFile.parsePcapng(bytes) } }
            packets = try parsed.get()
        } else {
            format = .pcap
            packets = try Pcap.parsePackets(data, linkTypes: CaptureFile.supportedLinkTypes)
        }
    }

    private struct Interface { var linkType: UInt32; var snapLength: UInt32; var resolution: UInt8 }

    private static func parsePcapng(_ bytes: UnsafeRawBufferPointer) throws(Pcap.ParseError) -> [CapturedPacket] {
        var packets: [CapturedPacket] = []
        var interfaces: [Interface] = []
        // The section's byte order: nil before the first section header.
        var bigEndian: Bool? = nil
        var offset = 0
        func u16(_ o: Int) -> UInt16? {
            guard o >= 0, o <= bytes.count &- 2 else { return nil }
            let v = bytes.loadUnaligned(fromByteOffset: o, as: UInt16.self)
            return bigEndian == true ? UInt16(bigEndian: v) : UInt16(littleEndian: v)
        }
        func u32(_ o: Int) -> UInt32? {
            guard o >= 0, o <= bytes.count &- 4 else { return nil }
            let v = bytes.loadUnaligned(fromByteOffset: o, as: UInt32.self)
            return bigEndian == true ? UInt32(bigEndian: v) : UInt32(littleEndian: v)
        }
        func malformed(_ reason: String) -> Pcap.ParseError { .malformedBlock(offset: offset, reason: reason) }
        while offset < bytes.count {
            guard bytes.count &- offset >= 12 else { throw .truncatedRecord(index: packets.count, offset: offset) }
            // The section header's type reads the same in both byte orders.
            let rawType = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            if rawType == Pcapng.sectionHeaderBlock {
                // The byte order is the section's own: read the magic before the length.
                guard let magic = bytes.bytes(offset &+ 8..<offset &+ 12).map({ UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }) else {
                    throw .truncatedRecord(index: packets.count, offset: offset)
                }
                switch magic {
                case Pcapng.byteOrderMagic: bigEndian = false
                case Pcapng.byteOrderMagic.byteSwapped: bigEndian = true
                default: throw malformed("a section header with byte-order magic 0x\(String(magic, radix: 16))")
                }
                interfaces.removeAll()
            }
            guard bigEndian != nil else { throw .badMagic(rawType) }
            guard let type = u32(offset), let total32 = u32(offset &+ 4) else { throw .truncatedRecord(index: packets.count, offset: offset) }
            let total = Int(total32)
            guard total >= 12, total % 4 == 0 else { throw malformed("a block length of \(total) (at least 12, a multiple of 4)") }
            guard total <= bytes.count &- offset else { throw .truncatedRecord(index: packets.count, offset: offset) }
            guard u32(offset &+ total &- 4) == total32 else { throw malformed("the trailing block length differs from the leading one") }
            let bodyEnd = offset &+ total &- 4
            switch type {
            case Pcapng.sectionHeaderBlock:
                guard total >= 28, u16(offset &+ 12) == 1 else { throw malformed("a section header of version \(u16(offset &+ 12) ?? 0) (only 1.x is read)") }
            case Pcapng.interfaceDescriptionBlock:
                guard total >= 20, let linkType = u16(offset &+ 8), let snap = u32(offset &+ 12) else { throw malformed("an interface description shorter than 20 bytes") }
                var resolution: UInt8 = 6
                try options(bytes, from: offset &+ 16, to: bodyEnd, u16: u16, malformed: malformed) { code, value in
                    if code == Pcapng.timestampResolutionOption, let r = value.first { resolution = r }
                }
                interfaces.append(Interface(linkType: UInt32(linkType), snapLength: snap, resolution: resolution))
            case Pcapng.enhancedPacketBlock, Pcapng.obsoletePacketBlock:
                guard total >= 32, let interfaceID = type == Pcapng.enhancedPacketBlock ? u32(offset &+ 8) : u16(offset &+ 8).map(UInt32.init),
                      let high = u32(offset &+ 12), let low = u32(offset &+ 16), let captured = u32(offset &+ 20) else {
                    throw malformed("a packet block shorter than 32 bytes")
                }
                guard Int(interfaceID) < interfaces.count else { throw malformed("a packet on interface \(interfaceID), which no interface block described") }
                let interface = interfaces[Int(interfaceID)]
                guard Int(captured) <= Pcapng.maximumPacket else { throw .recordTooLarge(index: packets.count, length: Int(captured)) }
                let dataStart = offset &+ 28
                let padded = (Int(captured) &+ 3) & ~3
                guard padded <= bodyEnd &- dataStart, let data = bytes.bytes(dataStart..<(dataStart &+ Int(captured))) else {
                    throw malformed("a packet of \(captured) bytes in a block of \(total)")
                }
                guard CaptureFile.supportedLinkTypes.contains(interface.linkType) else { throw .unsupportedLinkType(interface.linkType) }
                var packet = CapturedPacket(bytes: Array(data), linkType: interface.linkType, interface: Int(interfaceID),
                                            timestampNanoseconds: nanoseconds(UInt64(high) << 32 | UInt64(low), resolution: interface.resolution))
                try options(bytes, from: dataStart &+ padded, to: bodyEnd, u16: u16, malformed: malformed) { code, value in
                    if code == Pcapng.flagsOption && type == Pcapng.enhancedPacketBlock && value.count == 4 {
                        let raw = value.loadUnaligned(as: UInt32.self)
                        packet.direction = Pcapng.Direction(rawValue: (bigEndian == true ? UInt32(bigEndian: raw) : UInt32(littleEndian: raw)) & 3)
                    } else if code == Pcapng.commentOption {
                        packet.comments.append(String(decoding: value, as: UTF8.self))
                    }
                }
                packets.append(packet)
            case Pcapng.simplePacketBlock:
                guard total >= 16, let original = u32(offset &+ 8) else { throw malformed("a simple packet block shorter than 16 bytes") }
                guard let interface = interfaces.first else { throw malformed("a simple packet before any interface block") }
                var length = min(Int(original), bodyEnd &- (offset &+ 12))
                if interface.snapLength > 0 { length = min(length, Int(interface.snapLength)) }
                guard length <= Pcapng.maximumPacket else { throw .recordTooLarge(index: packets.count, length: length) }
                guard CaptureFile.supportedLinkTypes.contains(interface.linkType) else { throw .unsupportedLinkType(interface.linkType) }
                guard let data = bytes.bytes((offset &+ 12)..<(offset &+ 12 &+ length)) else { throw malformed("a simple packet past its block") }
                packets.append(CapturedPacket(bytes: Array(data), linkType: interface.linkType))
            default:
                break   // name resolution, statistics, custom and other blocks carry no packet
            }
            offset &+= total
        }
        return packets
    }

    /// Calls `body` with each option between `start` and `end` until `opt_endofopt`; throws when
    /// one runs past `end`.
    private static func options(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int, u16: (Int) -> UInt16?,
                                malformed: (String) -> Pcap.ParseError, _ body: (UInt16, UnsafeRawBufferPointer) -> Void) throws(Pcap.ParseError) {
        var position = start
        while position &+ 4 <= end {
            guard let code = u16(position), let length = u16(position &+ 2) else { throw malformed("an option past its block") }
            if code == Pcapng.endOfOptions { return }
            let valueEnd = position &+ 4 &+ Int(length)
            guard valueEnd <= end, let value = bytes.bytes((position &+ 4)..<valueEnd) else { throw malformed("option \(code) of \(length) bytes runs past its block") }
            body(code, value)
            position = position &+ 4 &+ ((Int(length) &+ 3) & ~3)
        }
    }

    /// A timestamp in units of `if_tsresol` as nanoseconds; nil when it overflows.
    static func nanoseconds(_ value: UInt64, resolution: UInt8) -> UInt64? {
        let exponent = UInt64(resolution & 0x7f)
        if resolution & 0x80 != 0 {
            // Units of 2^-exponent seconds.
            guard exponent < 64 else { return nil }
            let whole = value >> exponent, fraction = value & ((1 << exponent) &- 1)
            let (seconds, o1) = whole.multipliedReportingOverflow(by: 1_000_000_000)
            let (part, o2) = fraction.multipliedReportingOverflow(by: 1_000_000_000)
            guard !o1, !o2 else { return nil }
            let (sum, o3) = seconds.addingReportingOverflow(part >> exponent)
            return o3 ? nil : sum
        }
        if exponent <= 9 {
            var scale: UInt64 = 1
            for _ in 0..<(9 - exponent) { scale &*= 10 }
            let (ns, overflow) = value.multipliedReportingOverflow(by: scale)
            return overflow ? nil : ns
        }
        guard exponent <= 19 else { return nil }
        var scale: UInt64 = 1
        for _ in 0..<(exponent - 9) { scale &*= 10 }
        return value / scale
    }
}
