import Testing
@testable import NetFormats

@Suite("pcapng blocks against annotated bytes, and the reader")
struct PcapngTests {
    @Test("section header: type, length, byte-order magic, version 1.0, section length -1, shb_userappl")
    func sectionHeader() {
        #expect(Pcapng.sectionHeader(application: "vhostctl") == [
            0x0a, 0x0d, 0x0d, 0x0a,                         // block type
            0x2c, 0x00, 0x00, 0x00,                         // total length 44
            0x4d, 0x3c, 0x2b, 0x1a,                         // byte-order magic 0x1a2b3c4d, little-endian
            0x01, 0x00, 0x00, 0x00,                         // version 1.0
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // section length unknown
            0x04, 0x00, 0x08, 0x00,                         // shb_userappl, 8 bytes
            0x76, 0x68, 0x6f, 0x73, 0x74, 0x63, 0x74, 0x6c, // "vhostctl"
            0x00, 0x00, 0x00, 0x00,                         // opt_endofopt
            0x2c, 0x00, 0x00, 0x00,                         // total length again
        ])
    }

    @Test("interface description per queue: link type, snap length, if_name, if_tsresol = 9 (nanoseconds)")
    func interfaceDescription() {
        #expect(Pcapng.interfaceDescription(linkType: 1, name: "vht0 queue 0") == [
            0x01, 0x00, 0x00, 0x00,                         // block type 1
            0x30, 0x00, 0x00, 0x00,                         // total length 48
            0x01, 0x00, 0x00, 0x00,                         // LINKTYPE_ETHERNET, reserved
            0x00, 0x00, 0x00, 0x00,                         // snap length 0: no limit
            0x02, 0x00, 0x0c, 0x00,                         // if_name, 12 bytes
            0x76, 0x68, 0x74, 0x30, 0x20, 0x71, 0x75, 0x65, 0x75, 0x65, 0x20, 0x30, // "vht0 queue 0"
            0x09, 0x00, 0x01, 0x00,                         // if_tsresol, 1 byte
            0x09, 0x00, 0x00, 0x00,                         // 9: 10^-9 s, then padding
            0x00, 0x00, 0x00, 0x00,                         // opt_endofopt
            0x30, 0x00, 0x00, 0x00,
        ])
    }

    @Test("enhanced packet: interface, 64-bit timestamp, lengths, padded data, epb_flags with the direction, opt_comment")
    func enhancedPacket() {
        #expect(Pcapng.enhancedPacket(interface: 1, timestamp: 0x1_0000_0002, packet: [1, 2, 3, 4, 5], direction: .outbound, comment: "hi") == [
            0x06, 0x00, 0x00, 0x00,                         // block type 6
            0x3c, 0x00, 0x00, 0x00,                         // total length 60
            0x01, 0x00, 0x00, 0x00,                         // interface 1 (queue pair 1)
            0x01, 0x00, 0x00, 0x00,                         // timestamp, high 32 bits
            0x02, 0x00, 0x00, 0x00,                         // timestamp, low 32 bits
            0x05, 0x00, 0x00, 0x00,                         // captured length
            0x05, 0x00, 0x00, 0x00,                         // original length
            0x01, 0x02, 0x03, 0x04, 0x05, 0x00, 0x00, 0x00, // data, padded to 32 bits
            0x02, 0x00, 0x04, 0x00,                         // epb_flags, 4 bytes
            0x02, 0x00, 0x00, 0x00,                         // bits 0-1 = 2: outbound
            0x01, 0x00, 0x02, 0x00, 0x68, 0x69, 0x00, 0x00, // opt_comment "hi", padded
            0x00, 0x00, 0x00, 0x00,                         // opt_endofopt
            0x3c, 0x00, 0x00, 0x00,
        ])
    }

    @Test("the virtio-net header as a comment: its fields by name and its bytes, which read back")
    func headerComment() {
        let bytes: [UInt8] = [0x01, 0x05, 42, 0, 0xc0, 0x05, 34, 0, 6, 0, 1, 0]
        let comment = Pcapng.virtioNetHeaderComment(bytes)
        #expect(comment == "virtio-net header: flags 0x01 gso_type 0x05 hdr_len 42 gso_size 1472 csum_start 34 csum_offset 6 num_buffers 1 [01 05 2a 00 c0 05 22 00 06 00 01 00]")
        #expect(Pcapng.virtioNetHeaderBytes(inComment: comment) == bytes)
        #expect(Pcapng.virtioNetHeaderBytes(inComment: "virtio-net header: [01 02]") == nil)
        #expect(Pcapng.virtioNetHeaderBytes(inComment: "a comment [01 05 2a 00 c0 05 22 00 06 00 01 00]") == nil)
    }

    @Test("a file of a section, two queues' interfaces and packets reads back: interface, direction, nanoseconds, comment, header")
    func roundTrip() throws {
        let header: [UInt8] = [0x01, 0, 0, 0, 0, 0, 34, 0, 6, 0, 1, 0]
        var file = Pcapng.sectionHeader(application: "test")
        file += Pcapng.interfaceDescription(linkType: 1, name: "vht0 queue 0")
        file += Pcapng.interfaceDescription(linkType: 1, name: "vht0 queue 1")
        file += Pcapng.enhancedPacket(interface: 0, timestamp: 1_700_000_000_123_456_789, packet: [UInt8](repeating: 0xaa, count: 60), direction: .inbound)
        file += Pcapng.enhancedPacket(interface: 1, timestamp: 1_700_000_000_223_456_789, packet: [UInt8](repeating: 0xbb, count: 61), direction: .outbound,
                                      comment: Pcapng.virtioNetHeaderComment(header))
        file += [5, 0, 0, 0, 12, 0, 0, 0, 12, 0, 0, 0]                  // an interface statistics block: skipped
        let capture = try CaptureFile(parsing: file)
        #expect(capture.format == .pcapng && capture.packets.count == 2)
        #expect(capture.packets[0] == CapturedPacket(bytes: [UInt8](repeating: 0xaa, count: 60), linkType: 1, interface: 0, direction: .inbound,
                                                     timestampNanoseconds: 1_700_000_000_123_456_789))
        #expect(capture.packets[1].interface == 1 && capture.packets[1].direction == .outbound && capture.packets[1].bytes.count == 61)
        #expect(capture.packets[1].virtioNetHeaderBytes == header)
        // pcap reads through the same door.
        let pcap = Pcap.globalHeader(linkType: Pcap.linkTypeRaw) + Pcap.recordHeader(seconds: 2, microseconds: 3, capturedLength: 4, originalLength: 4) + [0x45, 0, 0, 4]
        let classic = try CaptureFile(parsing: pcap)
        #expect(classic.format == .pcap && classic.packets == [CapturedPacket(bytes: [0x45, 0, 0, 4], linkType: 101, timestampNanoseconds: 2_000_003_000)])
    }

    @Test("a big-endian section with microsecond timestamps and a simple packet block reads too")
    func bigEndian() throws {
        var file: [UInt8] = [
            0x0a, 0x0d, 0x0d, 0x0a, 0x00, 0x00, 0x00, 0x1c, // SHB, length 28
            0x1a, 0x2b, 0x3c, 0x4d, 0x00, 0x01, 0x00, 0x00, // magic big-endian, version 1.0
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x1c,
            0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x14, // IDB, length 20, no options (microseconds)
            0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14,
        ]
        file += [0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x2c,   // EPB, length 44
                 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // interface 0, timestamp 7 µs
                 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x03, 0x01, 0x02, 0x03, 0x00,
                 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01, // epb_flags: inbound
                 0x00, 0x00, 0x00, 0x2c]
        file += [0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x02, 0x09, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14]   // SPB, 2 bytes
        let capture = try CaptureFile(parsing: file)
        #expect(capture.packets.map(\.bytes) == [[1, 2, 3], [9, 8]])
        #expect(capture.packets[0].direction == .inbound && capture.packets[0].timestampNanoseconds == 7000)
    }

    @Test("broken files say why: before a section, lengths, options past their block, interfaces never described, link types, sizes")
    func errors() {
        func error(_ bytes: [UInt8]) -> Pcap.ParseError? {
            do { _ = try CaptureFile(parsing: bytes); return nil } catch { return error }
        }
        let shb = Pcapng.sectionHeader(application: "t"), idb = Pcapng.interfaceDescription(linkType: 1, name: "q")
        let epb = Pcapng.enhancedPacket(interface: 0, timestamp: 1, packet: [1, 2, 3, 4], direction: .inbound, comment: "c")
        #expect(error(shb + idb + epb) == nil)
        #expect(error([1, 0, 0, 0] + [UInt8](repeating: 0, count: 20)) == .badMagic(1))
        var badLength = shb + idb + epb; badLength[shb.count + idb.count + 4] = 13
        if case .malformedBlock = error(badLength) {} else { Issue.record("a block length of 13 was read") }
        var trailing = shb + idb + epb; trailing[trailing.count - 4] = 0x10
        if case .malformedBlock = error(trailing) {} else { Issue.record("a trailing length that differs was read") }
        var interface = shb + idb + epb; interface[shb.count + idb.count + 8] = 1
        if case .malformedBlock = error(interface) {} else { Issue.record("a packet on an undescribed interface was read") }
        var option = shb + idb + epb; option[shb.count + idb.count + 32 + 2] = 0xff   // epb_flags claims 255 bytes
        if case .malformedBlock = error(option) {} else { Issue.record("an option past its block was read") }
        var captured = shb + idb + epb; captured[shb.count + idb.count + 20] = 0xff    // captured length past the block
        if case .malformedBlock = error(captured) {} else { Issue.record("a packet past its block was read") }
        #expect(error(shb + Pcapng.interfaceDescription(linkType: 113, name: "q") + epb) == .unsupportedLinkType(113))
        // Cut anywhere inside a block (a cut between blocks leaves a shorter, valid file).
        for cut in 1..<(shb.count + idb.count + epb.count) where cut != shb.count && cut != shb.count + idb.count {
            #expect(error(Array((shb + idb + epb).prefix(cut))) != nil, "cut at \(cut)")
        }
        var huge = shb + idb + epb
        let size = shb.count + idb.count + 20
        huge[size] = 0x01; huge[size + 1] = 0x00; huge[size + 2] = 0x10   // 1 MiB captured
        #expect(error(huge) == .recordTooLarge(index: 0, length: 0x10_0001))
    }
}
