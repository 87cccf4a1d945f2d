import CVhost
import SystemPackage
import Testing
@testable import Vhost
@testable import VhostNet
@testable import VhostScript
import NetFormats
import Virtio

@Suite("Vhost layer without a kernel")
struct VhostUnitTests {
    @Test("the Swift side mirrors the C layouts the shim asserts")
    func layoutsMatchC() {
        #expect(CVHOST_SIZEOF_VRING_DESC == SplitRingLayout.descriptorSize)
        #expect(CVHOST_SIZEOF_VRING_USED_ELEM == SplitRingLayout.usedElementSize)
        #expect(CVHOST_SIZEOF_VHOST_MEMORY == 8 && CVHOST_SIZEOF_VHOST_MEMORY_REGION == 32)
        #expect(CVHOST_SIZEOF_VIRTIO_NET_HDR == VirtioNetHeader.baseLength)
        #expect(CVHOST_SIZEOF_VIRTIO_NET_HDR_MRG_RXBUF == VirtioNetHeader.mergeableLength)
        #expect(CVHOST_VHOST_SET_OWNER == 0xAF01)
        #expect(CVHOST_VHOST_SET_VRING_NUM == 0x4008_AF10)
        #expect(CVHOST_VHOST_NET_SET_BACKEND == 0x4008_AF30)
        #expect(CVHOST_TUNSETIFF == 0x4004_54CA)
    }

    @Test("VHOST_SET_MEM_TABLE payload: annotated bytes")
    func memoryTableBytes() {
        let table = MemoryTable(regions: [MemoryTable.Region(guestAddress: 0x4000_0000, size: 0x20_0000, userspaceAddress: 0x7f00_1234_5000)])
        #expect(table.encoded() == [
            0x01, 0x00, 0x00, 0x00,                         // nregions 1
            0x00, 0x00, 0x00, 0x00,                         // padding (must be 0: EOPNOTSUPP otherwise)
            0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, // guest_phys_addr 0x40000000
            0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, // memory_size 2 MiB
            0x00, 0x50, 0x34, 0x12, 0x00, 0x7f, 0x00, 0x00, // userspace_addr 0x7f0012345000
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flags_padding
        ])
    }

    @Test("guest memory: GPA differs from HVA, translation both ways, holes are not mapped")
    func guestMemory() throws {
        var memory = try GuestMemory(layout: [
            .init(guestAddress: 0, size: 1 << 20),
            .init(guestAddress: 0x1_0000_0000, size: 1 << 20),
        ])
        let low = try memory.allocate(4096, region: 0)
        let high = try memory.allocate(4096, region: 1)
        #expect(high.guestAddress == 0x1_0000_0000)
        #expect(UInt64(UInt(bitPattern: high.host)) != high.guestAddress.rawValue)
        #expect(memory.map.host(guest: high.guestAddress + 10, length: 100) == high.host + 10)
        #expect(memory.map.guest(host: low.host + 5) == low.guestAddress + 5)
        #expect(memory.map.host(guest: 0x8000_0000, length: 1) == nil, "the hole is not mapped")
        #expect(memory.map.host(guest: GuestAddress((1 << 20) - 10), length: 20) == nil, "a range may not run off a region")
        #expect(memory.map.memoryTable.regions.count == 2)
        #expect(throws: VhostError.self) { _ = try memory.allocate(2 << 20, region: 0) }
        #expect(throws: VhostError.self) {
            _ = try GuestMemory(layout: [.init(guestAddress: 0, size: 8192), .init(guestAddress: 4096, size: 8192)])
        }
    }

    @Test("configuration is validated before any ioctl, naming the rule")
    func configurationValidation() {
        var config = VhostNetQueuePair.Configuration(tapName: "vh0")
        config.queueSize = 3
        #expect(throws: VhostError.self) { try config.validate() }
        do { try config.validate() } catch { #expect("\(error)".contains("power of 2")) }
        config.queueSize = 256
        config.tapName = "a-name-that-is-too-long"
        do { try config.validate(); Issue.record("accepted a long tap name") } catch { #expect("\(error)".contains("15 characters")) }
        config.tapName = "ok0"
        config.features = [.version1, .logAll]
        do { try config.validate(); Issue.record("accepted LOG_ALL") } catch { #expect("\(error)".contains("LOG")) }
    }

    @Test("errors name the ioctl, arguments, errno and the kernel rule")
    func ioctlErrorText() {
        let failure = IoctlFailure(request: .setMemoryTable, arguments: "nregions: 65", errno: .argListTooLong)
        #expect("\(failure)" == "VHOST_SET_MEM_TABLE(nregions: 65) failed: E2BIG (Argument list too long); more regions than the vhost module parameter max_mem_regions allows (/sys/module/vhost/parameters/max_mem_regions)")
        #expect(VhostError.deviceMissing(path: "/dev/vhost-net").description.contains("modprobe vhost_net"))
    }
}

@Suite("NetworkResponder")
struct NetworkResponderTests {
    let me = IPv4Address(10, 0, 0, 2), peer = IPv4Address(10, 0, 0, 1)
    let myMAC = MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56), peerMAC = MACAddress(0x02, 0, 0, 0, 0, 1)

    func responder() -> NetworkResponder { NetworkResponder(mac: myMAC, ipv4: IPv4Interface(address: me, prefixLength: 24), udpEchoPort: 7) }

    @Test("ARP request for our address → reply to the asker")
    func arp() throws {
        var r = responder()
        let request = ARPPacket(operation: .request, senderMAC: peerMAC, senderIP: peer, targetMAC: MACAddress(0, 0, 0, 0, 0, 0), targetIP: me).frame()
        let replyValue = r.respond(to: request)
        let reply = try #require(replyValue)
        let arp = try #require(ARPPacket(frame: reply))
        #expect(arp.operation == .reply && arp.senderMAC == myMAC && arp.senderIP == me && arp.targetIP == peer)
        #expect(Array(reply[0..<6]) == peerMAC.array)
        let other = ARPPacket(operation: .request, senderMAC: peerMAC, senderIP: peer, targetMAC: MACAddress(0, 0, 0, 0, 0, 0), targetIP: IPv4Address(10, 0, 0, 9)).frame()
        let otherTarget = r.respond(to: other)
        #expect(otherTarget == nil)
    }

    @Test("ICMP echo → reply with a valid checksum; a corrupt request is ignored")
    func ping() throws {
        var r = responder()
        var icmp: [UInt8] = [8, 0, 0, 0, 0x12, 0x34, 0, 1] + Array("payload".utf8)
        let sum = internetChecksum(icmp[...]); icmp[2] = UInt8(sum >> 8); icmp[3] = UInt8(sum & 0xff)
        let request = IPv4Packet.frame(destinationMAC: myMAC, sourceMAC: peerMAC, source: peer, destination: me, protocolNumber: 1, payload: icmp)
        let replyValue = r.respond(to: request)
        let reply = try #require(replyValue)
        let ip = try #require(IPv4Packet(frame: reply))
        #expect(ip.source == me && ip.destination == peer && reply[ip.payload.lowerBound] == 0)
        #expect(internetChecksum(reply[ip.payload]) == 0)
        var corrupt = request; corrupt[corrupt.count - 1] ^= 0xff
        let corruptAnswer = r.respond(to: corrupt)
        #expect(corruptAnswer == nil)
    }

    @Test("UDP echo: a full checksum is verified; NEEDS_CSUM (partial) and DATA_VALID are trusted")
    func udp() throws {
        var r = responder()
        let segment = UDPDatagram.build(source: peer, destination: me, sourcePort: 40000, destinationPort: 7, payload: Array("hi".utf8)[...])
        let request = IPv4Packet.frame(destinationMAC: myMAC, sourceMAC: peerMAC, source: peer, destination: me, protocolNumber: 17, payload: segment)
        let replyValue = r.respond(to: request)
        let reply = try #require(replyValue)
        let ip = try #require(IPv4Packet(frame: reply))
        let parsed = try #require(UDPDatagram.parse(frame: reply, ip: ip))
        #expect(parsed.sourcePort == 7 && parsed.destinationPort == 40000 && Array(reply[parsed.payload]) == Array("hi".utf8))
        var partial = request
        partial[14 + 20 + 6] = 0x12; partial[14 + 20 + 7] = 0x34   // only a pseudo-header sum, as with CHECKSUM_PARTIAL
        let wrongChecksumAnswer = r.respond(to: partial)
        #expect(wrongChecksumAnswer == nil, "a wrong full checksum is refused")
        let partialAnswer = r.respond(to: partial, header: VirtioNetHeader(flags: .needsChecksum, checksumStart: 34, checksumOffset: 6))
        #expect(partialAnswer != nil)
        let validatedAnswer = r.respond(to: partial, header: VirtioNetHeader(flags: .dataValid))
        #expect(validatedAnswer != nil)
    }
}

@Suite("IoctlScript parsing")
struct IoctlScriptTests {
    @Test("the example script parses, with expectations attached to the next command")
    func example() throws {
        let text = """
        open   # comment
        set-features VERSION_1 EVENT_IDX
        expect EINVAL
        set-vring-num 0 3

        set-backend 1 -1
        """
        let script = try IoctlScript(parsing: text)
        #expect(script.commands.map(\.name) == ["open", "set-features", "set-vring-num", "set-backend"])
        #expect(script.commands[2].expected == .invalidArgument && script.commands[2].line == 4)
        #expect(script.commands[1].expected == nil && script.commands[3].arguments == ["1", "-1"])
    }

    @Test("a malformed script lists every problem with its line, and suggests the command meant")
    func malformed() {
        let text = """
        set-vring-nmu 0 256
        set-vring-num 0
        set-features VERSION_9
        expect EWHAT
        memory lots
        set-backend 0 socket
        expect EBUSY
        """
        do {
            _ = try IoctlScript(parsing: text, name: "bad.vhost")
            Issue.record("a malformed script parsed")
        } catch {
            let problems = error.problems
            #expect(problems.count == 7)
            #expect(problems[0] == "bad.vhost:1: unknown command 'set-vring-nmu'; did you mean set-vring-num?")
            #expect(problems[1].hasPrefix("bad.vhost:2: set-vring-num takes 2 argument(s)"))
            #expect(problems[2].contains("unknown feature VERSION_9"))
            #expect(problems[3].contains("unknown errno 'EWHAT'"))
            #expect(problems[4].contains("bad size lots"))
            #expect(problems[5].contains("tap or -1"))
            #expect(problems[6] == "bad.vhost:7: expect is not followed by a command")
        }
    }

    @Test("errno names round-trip")
    func errnoNames() {
        #expect(Errno(named: "EINVAL") == .invalidArgument)
        #expect(Errno(named: "e2big") == .argListTooLong)
        #expect(Errno(named: "ENOSUCH") == nil)
    }
}
