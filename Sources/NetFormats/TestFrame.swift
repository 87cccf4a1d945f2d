/// Test frames: broadcast, experimental EtherType, a 4-byte big-endian sequence number, then
/// bytes that depend on the sequence number; the length varies from 60 to 1514. A receiver can
/// tell a lost, duplicated, reordered or corrupted frame from its bytes alone.
public enum TestFrame {
    public static let source = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)

    public static func length(_ sequence: Int) -> Int { 60 + (sequence * 97) % (1514 - 60 + 1) }

    public static func write(_ sequence: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let length = length(sequence)
        precondition(buffer.count >= length, "test frame \(sequence) has \(length) bytes; the buffer holds \(buffer.count)")
        let header = EthernetFrame.build(destination: .broadcast, source: source, etherType: EthernetFrame.experimentalType, payload: [UInt8]())
        for (i, byte) in header.enumerated() { buffer[i] = byte }
        let seq = UInt32(truncatingIfNeeded: sequence)
        buffer[14] = UInt8(seq >> 24); buffer[15] = UInt8((seq >> 16) & 0xff)
        buffer[16] = UInt8((seq >> 8) & 0xff); buffer[17] = UInt8(seq & 0xff)
        for i in 18..<length { buffer[i] = UInt8(truncatingIfNeeded: i &* 31 &+ sequence) }
        return length
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
