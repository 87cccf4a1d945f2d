import Glibc
import NetFormats

/// A failed check, with the place it was made.
public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String, file: StaticString = #fileID, line: UInt = #line) {
        description = "\(message) (\(file):\(line))"
    }
}

/// Throws a `TestFailure` with `message` unless `condition` holds.
public func expect(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                   file: StaticString = #fileID, line: UInt = #line) throws {
    if !condition() { throw TestFailure(message(), file: file, line: line) }
}

/// Prints a line and flushes, so that a crash or a VM timeout loses no output.
public func say(_ line: String) {
    print(line)
    fflush(nil)
}

/// Test frames: broadcast, experimental EtherType, a 4-byte big-endian sequence number, then
/// bytes that depend on the sequence number; the length varies from 60 to 1514.
public enum TestFrame {
    public static let source = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)

    public static func length(_ sequence: Int) -> Int { 60 + (sequence * 97) % (1514 - 60 + 1) }

    public static func write(_ sequence: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let length = length(sequence)
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

/// Seconds on CLOCK_MONOTONIC.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
