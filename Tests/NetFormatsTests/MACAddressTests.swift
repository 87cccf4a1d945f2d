import NetFormats
import Testing

@Suite("MACAddress: parsing from bytes, equality and hashing without arrays")
struct MACAddressBytesTests {
    static let base: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]

    @Test("two addresses are equal only when all six bytes are, and equal ones hash alike")
    func equality() {
        let a = MACAddress(Self.base)!
        #expect(a == MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56))
        #expect(a.hashValue == MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56).hashValue)
        #expect(Set([a, MACAddress(Self.base)!]).count == 1)
        for i in 0..<6 {
            var other = Self.base
            other[i] ^= 0x80
            #expect(MACAddress(other)! != a, "byte \(i) differs")
        }
        #expect(a.value == 0x5254_0012_3456)
    }

    @Test("the raw-buffer parse at an offset reads the same six bytes as the generic one, and refuses what does not fit")
    func parsing() {
        let frame: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + Self.base + [0x08, 0x00]
        frame.withUnsafeBytes { raw in
            #expect(MACAddress(raw, at: 0) == .broadcast)
            #expect(MACAddress(raw, at: 6) == MACAddress(Self.base))
            #expect(MACAddress(raw[6..<12]) == MACAddress(Self.base))
            #expect(MACAddress(raw, at: 8) != nil)
            #expect(MACAddress(raw, at: 9) == nil)
            #expect(MACAddress(raw, at: -1) == nil)
            #expect(MACAddress(raw[0..<5]) == nil)
        }
        #expect(MACAddress(Self.base + [0]) == nil)
        #expect(MACAddress(parsing: "52:54:00:12:34:56") == MACAddress(Self.base))
    }
}
