import NetFormats
import Testing

/// TestFrame's fast path (one copy out of a pattern row, memcmp to check) must produce and accept
/// exactly the frames the byte-by-byte definition does: the soak and the datapath suite judge
/// every frame by it.
@Suite struct TestFrameTests {
    static let sequences: [Int] = Array(0..<600) + [1_000_003, 9_999_999, 65_535, 65_536, -1, -257, Int(UInt32.max), Int.max, Int.min]

    @Test("the fast write equals the byte-by-byte definition, for every offset into the pattern")
    func fastWriteEqualsDefinition() {
        for s in Self.sequences {
            let n = TestFrame.length(s)
            let slow = TestFrame.bytes(s, length: n)
            #expect(TestFrame.bytes(s) == slow, "frame \(s)")
        }
    }

    @Test("matches accepts the frame and refuses any changed byte, another sequence or another length")
    func matchesIsExact() {
        for s in Self.sequences.prefix(300) {
            var frame = TestFrame.bytes(s)
            #expect(TestFrame.matches(s, frame))
            #expect(!TestFrame.matches(s &+ 1, frame))
            #expect(!TestFrame.matches(s &+ 256, frame))
            #expect(!TestFrame.matches(s, Array(frame.dropLast())))
            for i in [0, 5, 6, 13, 14, 17, 18, frame.count / 2, frame.count - 1] {
                frame[i] ^= 0x01
                #expect(!TestFrame.matches(s, frame), "frame \(s) with byte \(i) changed")
                frame[i] ^= 0x01
            }
        }
    }

    @Test("sequence(of:) reads the same number from an array, raw bytes and any collection; nil for another EtherType or a short frame")
    func sequenceReadersAgree() {
        for s in Self.sequences {
            var frame = TestFrame.bytes(s)
            let expected = Int(UInt32(truncatingIfNeeded: s))
            #expect(TestFrame.sequence(of: frame) == expected)
            #expect(TestFrame.sequence(of: frame[...]) == expected)
            #expect(frame.withUnsafeBytes { TestFrame.sequence(of: $0) } == expected)
            #expect(TestFrame.sequence(of: Array(frame.prefix(17))) == nil)
            frame[13] ^= 0x01
            #expect(TestFrame.sequence(of: frame) == nil)
            #expect(TestFrame.sequence(of: frame[...]) == nil)
        }
    }
}
