/// Reading and writing big-endian fields in raw bytes, and the one's-complement sums the IP
/// checksums are made of. Every read from bytes that came off the network is bounds-checked
/// (a nil answer, never a trap); the writers are for buffers whose size the caller computed.

// The readers are `@inline(__always)`: `@inlinable` alone left `be16(at:)` a call from VhostNet's
// responder, three per received frame at 18 instructions each (Benchmarks/endpoint-sink).
extension UnsafeRawBufferPointer {
    /// The byte at `offset`, or nil past the end.
    @inlinable @inline(__always)
    public func byte(at offset: Int) -> UInt8? {
        guard offset >= 0, offset < count else { return nil }
        return self[offset]
    }

    /// The big-endian 16-bit field at `offset`, or nil when it does not fit.
    @inlinable @inline(__always)
    public func be16(at offset: Int) -> UInt16? {
        guard offset >= 0, offset <= count &- 2 else { return nil }
        return UInt16(self[offset]) << 8 | UInt16(self[offset &+ 1])
    }

    /// The big-endian 32-bit field at `offset`, or nil when it does not fit.
    @inlinable @inline(__always)
    public func be32(at offset: Int) -> UInt32? {
        guard offset >= 0, offset <= count &- 4 else { return nil }
        return UInt32(self[offset]) << 24 | UInt32(self[offset &+ 1]) << 16 | UInt32(self[offset &+ 2]) << 8 | UInt32(self[offset &+ 3])
    }

    /// The bytes `range`, or nil when it does not lie inside.
    @inlinable
    public func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer? {
        guard range.lowerBound >= 0, range.upperBound <= count else { return nil }
        return UnsafeRawBufferPointer(rebasing: self[range])
    }
}

/// The 32-bit one's-complement sum of `bytes` as big-endian 16-bit words (an odd last byte is
/// the high byte of a word), added to `initial`: the part of RFC 1071's checksum before folding.
/// Several sums (a pseudo-header, then the data) add up before `foldChecksum`.
@inlinable
public func onesComplementSum(_ bytes: UnsafeRawBufferPointer, initial: UInt64 = 0) -> UInt64 {
    var sum = initial
    var i = 0
    let n = bytes.count
    // Four bytes at a time: 32-bit big-endian words add up in a 64-bit accumulator that cannot
    // overflow below 2^32 words; the fold takes the carries.
    while i &+ 4 <= n {
        sum &+= UInt64(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt32.self)))
        i &+= 4
    }
    while i &+ 2 <= n {
        sum &+= UInt64(bytes[i]) << 8 | UInt64(bytes[i &+ 1])
        i &+= 2
    }
    if i < n { sum &+= UInt64(bytes[i]) << 8 }
    return sum
}

/// Folds a one's-complement sum to 16 bits (without the final complement).
@inlinable
public func foldChecksum(_ sum: UInt64) -> UInt16 {
    var s = sum
    while s >> 16 != 0 { s = (s & 0xffff) &+ (s >> 16) }
    return UInt16(s)
}

/// RFC 1071's checksum of `bytes`, with `initial` (a pseudo-header sum) added first: 0 when the
/// bytes hold a correct checksum.
@inlinable
public func internetChecksum(_ bytes: UnsafeRawBufferPointer, initial: UInt64 = 0) -> UInt16 {
    ~foldChecksum(onesComplementSum(bytes, initial: initial))
}

/// Writes big-endian fields into a buffer the caller sized: a write past `count` is the
/// caller's bug (a precondition), since every length it writes was computed beforehand.
public struct ByteWriter {
    /// The buffer written into.
    public let buffer: UnsafeMutableRawBufferPointer
    /// Where the next write goes.
    public var offset: Int

    /// A writer at `offset` of `buffer`.
    public init(_ buffer: UnsafeMutableRawBufferPointer, at offset: Int = 0) {
        self.buffer = buffer
        self.offset = offset
    }

    /// Appends one byte.
    @inlinable
    public mutating func u8(_ value: UInt8) {
        precondition(offset < buffer.count, "write past the \(buffer.count)-byte buffer")
        buffer[offset] = value
        offset &+= 1
    }

    /// Appends a big-endian 16-bit field.
    @inlinable
    public mutating func be16(_ value: UInt16) {
        u8(UInt8(value >> 8)); u8(UInt8(value & 0xff))
    }

    /// Appends a big-endian 32-bit field.
    @inlinable
    public mutating func be32(_ value: UInt32) {
        be16(UInt16(value >> 16)); be16(UInt16(value & 0xffff))
    }

    /// Appends bytes.
    @inlinable
    public mutating func bytes(_ source: UnsafeRawBufferPointer) {
        precondition(source.count <= buffer.count &- offset, "write past the \(buffer.count)-byte buffer")
        guard let base = buffer.baseAddress, let from = source.baseAddress, !source.isEmpty else { return }
        (base + offset).copyMemory(from: from, byteCount: source.count)
        offset &+= source.count
    }

    /// Appends bytes from an array.
    public mutating func bytes(_ source: [UInt8]) {
        source.withUnsafeBytes { bytes($0) }
    }

    /// Appends `count` zero bytes.
    @inlinable
    public mutating func zeros(_ count: Int) {
        precondition(count >= 0 && count <= buffer.count &- offset, "write past the \(buffer.count)-byte buffer")
        guard let base = buffer.baseAddress, count > 0 else { return }
        (base + offset).initializeMemory(as: UInt8.self, repeating: 0, count: count)
        offset &+= count
    }

    /// Stores a big-endian 16-bit field at `position` (for a checksum written after the bytes it covers).
    @inlinable
    public func put16(_ value: UInt16, at position: Int) {
        precondition(position >= 0 && position <= buffer.count &- 2, "write past the \(buffer.count)-byte buffer")
        buffer[position] = UInt8(value >> 8)
        buffer[position &+ 1] = UInt8(value & 0xff)
    }

    /// The bytes written from `start` up to the current offset.
    @inlinable
    public func written(from start: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: buffer[start..<offset])
    }
}

extension Array where Element == UInt8 {
    /// Builds an array of `count` bytes by writing them with a `ByteWriter`.
    public init(writing count: Int, _ body: (inout ByteWriter) -> Void) {
        self = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            var writer = ByteWriter(raw)
            body(&writer)
            initialized = count
        }
    }
}
