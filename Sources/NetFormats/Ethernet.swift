/// A 48-bit Ethernet address.
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    public var bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        bytes = (b0, b1, b2, b3, b4, b5)
    }

    /// The six bytes of `array`, or nil when it holds another count. Inlinable, and without an
    /// array of its own: a receive path calls it per frame (unspecialized across modules it was
    /// most of `vhostctl attach`'s time as a sink, in Swift's generic metadata lookups).
    @inlinable
    public init?(_ array: some Collection<UInt8>) {
        guard array.count == 6 else { return nil }
        var i = array.startIndex
        var b: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0)
        b.0 = array[i]; i = array.index(after: i)
        b.1 = array[i]; i = array.index(after: i)
        b.2 = array[i]; i = array.index(after: i)
        b.3 = array[i]; i = array.index(after: i)
        b.4 = array[i]; i = array.index(after: i)
        b.5 = array[i]
        bytes = b
    }

    /// The six bytes at `offset` in `buffer`, or nil when they do not fit.
    @inlinable
    public init?(_ buffer: UnsafeRawBufferPointer, at offset: Int) {
        guard offset >= 0, offset <= buffer.count &- 6 else { return nil }
        bytes = (buffer[offset], buffer[offset &+ 1], buffer[offset &+ 2], buffer[offset &+ 3], buffer[offset &+ 4], buffer[offset &+ 5])
    }

    /// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
    public init?(parsing text: String) {
        let parts = text.split(separator: text.contains("-") ? "-" : ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var values: [UInt8] = []
        for part in parts {
            guard part.count == 2, let value = UInt8(part, radix: 16) else { return nil }
            values.append(value)
        }
        self.init(values)
    }

    public static let broadcast = MACAddress(0xff, 0xff, 0xff, 0xff, 0xff, 0xff)

    public var array: [UInt8] { [bytes.0, bytes.1, bytes.2, bytes.3, bytes.4, bytes.5] }
    public var isMulticast: Bool { bytes.0 & 1 != 0 }

    public var description: String {
        array.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }

    /// The six bytes as the low 48 bits of one integer (for comparing and hashing without an array).
    @inlinable
    public var value: UInt64 {
        UInt64(bytes.0) << 40 | UInt64(bytes.1) << 32 | UInt64(bytes.2) << 24 | UInt64(bytes.3) << 16 | UInt64(bytes.4) << 8 | UInt64(bytes.5)
    }

    @inlinable
    public static func == (a: MACAddress, b: MACAddress) -> Bool { a.value == b.value }
    public func hash(into hasher: inout Hasher) { hasher.combine(value) }
}

/// Ethernet II framing: destination, source, EtherType, payload.
public enum EthernetFrame {
    public static let headerLength = 14
    /// Local experimental EtherType (IEEE 802), used for test traffic nothing else claims.
    public static let experimentalType: UInt16 = 0x88B5
    public static let ipv4Type: UInt16 = 0x0800
    public static let arpType: UInt16 = 0x0806
    public static let ipv6Type: UInt16 = 0x86DD

    public static func build(destination: MACAddress, source: MACAddress, etherType: UInt16, payload: some Collection<UInt8>) -> [UInt8] {
        var frame = destination.array + source.array
        frame.append(UInt8(etherType >> 8))
        frame.append(UInt8(etherType & 0xff))
        frame.append(contentsOf: payload)
        return frame
    }

    public static func etherType(of frame: some Collection<UInt8>) -> UInt16? {
        guard frame.count >= headerLength else { return nil }
        let start = frame.startIndex
        let hi = frame[frame.index(start, offsetBy: 12)], lo = frame[frame.index(start, offsetBy: 13)]
        return UInt16(hi) << 8 | UInt16(lo)
    }
}
