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
        write(sequence, length: length(sequence), into: buffer)
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
        var frame = [UInt8](repeating: 0, count: 1514)
        let n = frame.withUnsafeMutableBytes { write(sequence, into: $0) }
        return Array(frame.prefix(n))
    }
}

extension TestFrame {
    /// The sequence number of a test frame, or nil for any other frame.
    public static func sequence(of frame: some Collection<UInt8>) -> Int? {
        let bytes = Array(frame.prefix(18))
        guard bytes.count == 18, EthernetFrame.etherType(of: bytes) == EthernetFrame.experimentalType else { return nil }
        return Int(bytes[14]) << 24 | Int(bytes[15]) << 16 | Int(bytes[16]) << 8 | Int(bytes[17])
    }
}
