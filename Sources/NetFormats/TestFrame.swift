import Glibc

/// Test frames: broadcast, experimental EtherType, a 4-byte big-endian sequence number, then
/// bytes that depend on the sequence number; the length varies from 60 to 1514. A receiver can
/// tell a lost, duplicated, reordered or corrupted frame from its bytes alone.
public enum TestFrame {
    public static let source = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)

    /// The length of test frame `sequence`: 60 to 1514, varying with the number (any `Int`, without overflow).
    public static func length(_ sequence: Int) -> Int {
        let span = 1514 - 60 + 1
        let r = (sequence % span + span) % span
        return 60 + (r * 97) % span
    }

    public static func write(_ sequence: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = length(sequence)
        precondition(buffer.count >= n, "test frame \(sequence) has \(n) bytes; the buffer holds \(buffer.count)")
        // SAFETY: n ≤ buffer.count was checked above; the copies stay inside it and inside
        // `header` (14 bytes) and `pattern` (offset ≤ 255 plus at most 1514 bytes, of 1,770).
        let base = buffer.baseAddress!
        header.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: 14) }
        storeSequence(sequence, at: base + 14)
        pattern.withUnsafeBytes { p in
            (base + minimumLength).copyMemory(from: p.baseAddress! + minimumLength + patternOffset(sequence), byteCount: n - minimumLength)
        }
        return n
    }

    /// Whether `frame` is test frame `sequence`, byte for byte, without building it.
    public static func matches(_ sequence: Int, _ frame: UnsafeRawBufferPointer) -> Bool {
        let n = length(sequence)
        guard frame.count == n else { return false }
        var expectedSequence = UInt32(truncatingIfNeeded: sequence).bigEndian
        // SAFETY: frame.count == n ≥ 60 ≥ 18; the compared ranges stay inside `frame`,
        // `header` (14 bytes), `expectedSequence` (4 bytes) and `pattern` (as in write).
        let f = frame.baseAddress!
        return header.withUnsafeBytes { memcmp(f, $0.baseAddress!, 14) } == 0
            && withUnsafeBytes(of: &expectedSequence) { memcmp(f + 14, $0.baseAddress!, 4) } == 0
            && pattern.withUnsafeBytes { memcmp(f + minimumLength, $0.baseAddress! + minimumLength + patternOffset(sequence), n - minimumLength) } == 0
    }

    /// Whether `frame` is test frame `sequence`, byte for byte.
    public static func matches(_ sequence: Int, _ frame: [UInt8]) -> Bool {
        frame.withUnsafeBytes { matches(sequence, $0) }
    }

    /// The Ethernet header every test frame starts with (from `source`).
    private static let header = EthernetFrame.build(destination: .broadcast, source: source, etherType: EthernetFrame.experimentalType, payload: [UInt8]())

    /// Byte j is 31·j mod 256. The byte at offset i of frame s is (31·i + s) mod 256, which is
    /// pattern[i + 223·s mod 256] because 31·223 ≡ 1 (mod 256): every frame's bytes are one
    /// copy out of this row, not a loop over the frame.
    private static let pattern: [UInt8] = (0..<(1514 + 256)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    private static func patternOffset(_ sequence: Int) -> Int { Int(UInt8(truncatingIfNeeded: sequence &* 223)) }

    private static func storeSequence(_ sequence: Int, at pointer: UnsafeMutableRawPointer) {
        pointer.storeBytes(of: UInt32(truncatingIfNeeded: sequence).bigEndian, toByteOffset: 0, as: UInt32.self)
    }

    /// The shortest test frame: the Ethernet header and the sequence number.
    public static let minimumLength = 18

    /// Writes test frame `sequence` of exactly `length` bytes (at least `minimumLength`) from
    /// `source`, whose bytes after the sequence number are all `pattern`, or by default the bytes
    /// that depend on the sequence number; returns the length.
    @discardableResult
    public static func write(_ sequence: Int, length: Int, source: MACAddress = source, pattern: UInt8? = nil,
                             into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(length >= minimumLength && buffer.count >= length, "test frame \(sequence) has \(length) bytes; the buffer holds \(buffer.count)")
        let header = EthernetFrame.build(destination: .broadcast, source: source, etherType: EthernetFrame.experimentalType, payload: [UInt8]())
        for (i, byte) in header.enumerated() { buffer[i] = byte }
        let seq = UInt32(truncatingIfNeeded: sequence)
        buffer[14] = UInt8(seq >> 24); buffer[15] = UInt8((seq >> 16) & 0xff)
        buffer[16] = UInt8((seq >> 8) & 0xff); buffer[17] = UInt8(seq & 0xff)
        for i in minimumLength..<length { buffer[i] = pattern ?? UInt8(truncatingIfNeeded: i &* 31 &+ sequence) }
        return length
    }

    /// Test frame `sequence` of `length` bytes (at least `minimumLength`) from `source`, as
    /// `write(_:length:source:pattern:into:)` writes it.
    public static func bytes(_ sequence: Int, length: Int, source: MACAddress = source, pattern: UInt8? = nil) -> [UInt8] {
        var frame = [UInt8](repeating: 0, count: max(length, minimumLength))
        frame.withUnsafeMutableBytes { _ = write(sequence, length: $0.count, source: source, pattern: pattern, into: $0) }
        return frame
    }

    public static func bytes(_ sequence: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: length(sequence)) { buffer, count in
            count = write(sequence, into: UnsafeMutableRawBufferPointer(buffer))
        }
    }
}

extension TestFrame {
    /// The sequence number of a test frame, or nil for any other frame.
    public static func sequence(of frame: UnsafeRawBufferPointer) -> Int? {
        guard frame.count >= minimumLength, frame[12] == UInt8(EthernetFrame.experimentalType >> 8),
              frame[13] == UInt8(EthernetFrame.experimentalType & 0xff) else { return nil }
        return Int(UInt32(bigEndian: frame.loadUnaligned(fromByteOffset: 14, as: UInt32.self)))
    }

    /// The sequence number of a test frame, or nil for any other frame.
    public static func sequence(of frame: [UInt8]) -> Int? {
        frame.withUnsafeBytes { sequence(of: $0) }
    }

    /// The sequence number of a test frame, or nil for any other frame.
    public static func sequence(of frame: some Collection<UInt8>) -> Int? {
        Array(frame.prefix(minimumLength)).withUnsafeBytes { sequence(of: $0) }
    }
}
