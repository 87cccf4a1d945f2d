import Glibc
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

    @Test("offload features: vhost is not asked for them, TUNSETOFFLOAD follows the GUEST_ ones (as QEMU derives it) unless given, and the virtio spec's dependencies hold")
    func offloadFeatures() throws {
        var config = VhostNetQueuePair.Configuration(tapName: "vh0")
        config.features = [.version1, .eventIndex, .netMergeableRxBuffers, .netCsum, .netHostUSO, .netGuestCsum, .netGuestTSO4, .netGuestUSO6]
        try config.validate()
        #expect(config.vhostFeatures == [.version1, .eventIndex, .netMergeableRxBuffers])
        #expect(config.offloadFeatures == [.netCsum, .netHostUSO, .netGuestCsum, .netGuestTSO4, .netGuestUSO6])
        #expect(config.effectiveReceiveOffloads == [.checksum, .tso4, .uso6])
        config.receiveOffloads = [.checksum]
        #expect(config.effectiveReceiveOffloads == [.checksum], "--offloads overrides")
        config.receiveOffloads = nil
        config.features = [.version1, .netGuestTSO4, .netMergeableRxBuffers]
        #expect(throws: VhostError.self, "GUEST_TSO4 without GUEST_CSUM") { try config.validate() }
        config.features = [.version1, .netHostUSO]
        #expect(throws: VhostError.self, "HOST_USO without CSUM") { try config.validate() }
        config.features = [.version1, .netCsum, .vhostNetVirtioNetHeader]
        #expect(throws: VhostError.self, "offloads with the header stripped by vhost") { try config.validate() }
        config.features = [.version1]
        #expect(config.effectiveReceiveOffloads == [], "nothing negotiated, nothing told")
    }

    @Test("each refusal says what kind of failure it is: configuration, guest memory, state, unreadable, unwritable or corrupt file")
    func errorKinds() throws {
        func kind(_ body: () throws -> Void) -> VhostError? {
            do { try body(); return nil } catch { return error as? VhostError }
        }
        var memory = try GuestMemory(size: 1 << 20)
        guard case .outOfGuestMemory(let full)? = kind({ _ = try memory.allocate(2 << 20) }) else { Issue.record("a full region"); return }
        #expect(full.contains("give it more memory"))
        guard case .invalidConfiguration? = kind({ _ = try GuestMemory(layout: [.init(guestAddress: 0, size: 8192), .init(guestAddress: 4096, size: 8192)]) }) else {
            Issue.record("overlapping regions"); return
        }
        var config = VhostNetQueuePair.Configuration(tapName: "vh0")
        config.queueSize = 3
        guard case .invalidConfiguration? = kind({ try config.validate() }) else { Issue.record("a queue size of 3"); return }
        let missing = "/tmp/swift-vhost-no-such-dir-\(getpid())/x.pcap"
        guard case .unreadableFile(let path, _, let errno)? = kind({ _ = try readPcapFrames(path: missing) }) else { Issue.record("a missing pcap"); return }
        #expect(path == missing && errno == .noSuchFileOrDirectory)
        #expect(VhostError.unreadableFile(path: path, problem: "the pcap file does not exist", errno: errno).description.contains("does not exist"))
        guard case .unwritableFile(_, _, let writeErrno)? = kind({ _ = try PcapWriter(path: missing) }) else { Issue.record("a pcap in a missing folder"); return }
        #expect(writeErrno == .noSuchFileOrDirectory)
        let corrupt = "/tmp/swift-vhost-corrupt-\(getpid()).pcap"
        let fd = try FileDescriptor.open(FilePath(corrupt), .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite])
        _ = try fd.writeAll(Array("this is not a pcap file at all".utf8))
        try fd.close()
        defer { unlink(corrupt) }
        guard case .corruptInput(_, let problem)? = kind({ _ = try readPcapFrames(path: corrupt) }) else { Issue.record("a corrupt pcap"); return }
        #expect(problem.contains("corrupt"))
    }

    @Test("errors name the ioctl, arguments, errno and the kernel rule")
    func ioctlErrorText() {
        let failure = IoctlFailure(request: .vhost(.setVringNum(0, 3)), errno: .invalidArgument)
        #expect("\(failure)" == "VHOST_SET_VRING_NUM(index: 0, num: 3) failed: EINVAL (Invalid argument); vhost.c vhost_vring_set_num: num must be a power of 2 in 1...32768")
        let table = IoctlFailure(request: .vhost(.setMemoryTable(MemoryTable(regions: []))), errno: .argListTooLong)
        #expect("\(table)".hasPrefix("VHOST_SET_MEM_TABLE(") && "\(table)".hasSuffix("failed: E2BIG (Argument list too long); more regions than the vhost module parameter max_mem_regions allows (/sys/module/vhost/parameters/max_mem_regions)"))
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

    @Test("every reply goes to the asker's MAC from ours: ARP, ICMP echo and UDP echo")
    func repliesGoToTheAsker() throws {
        var r = responder()
        let arp = ARPPacket(operation: .request, senderMAC: peerMAC, senderIP: peer, targetMAC: MACAddress(0, 0, 0, 0, 0, 0), targetIP: me).frame()
        var icmp: [UInt8] = [8, 0, 0, 0, 0x12, 0x34, 0, 1] + Array("payload".utf8)
        let sum = internetChecksum(icmp[...]); icmp[2] = UInt8(sum >> 8); icmp[3] = UInt8(sum & 0xff)
        let ping = IPv4Packet.frame(destinationMAC: myMAC, sourceMAC: peerMAC, source: peer, destination: me, protocolNumber: 1, payload: icmp)
        let segment = UDPDatagram.build(source: peer, destination: me, sourcePort: 40000, destinationPort: 7, payload: Array("hi".utf8)[...])
        let udp = IPv4Packet.frame(destinationMAC: myMAC, sourceMAC: peerMAC, source: peer, destination: me, protocolNumber: 17, payload: segment)
        for (name, request) in [("ARP", arp), ("ICMP echo", ping), ("UDP echo", udp)] {
            let replyValue = r.respond(to: request)
            let reply = try #require(replyValue, "no reply to the \(name) request")
            #expect(Array(reply[0..<6]) == peerMAC.array, "the \(name) reply goes to \(MACAddress(reply[0..<6]).map { "\($0)" } ?? "?"), not the asker")
            #expect(Array(reply[6..<12]) == myMAC.array, "the \(name) reply is not from our MAC")
        }
    }
}

@Suite("Script parsing")
struct ScriptParsingTests {
    func invocations(_ statements: [Statement]) -> [Invocation] {
        statements.flatMap { statement -> [Invocation] in
            switch statement {
            case .invoke(let invocation): return [invocation]
            case .loop(_, _, let body, _): return invocations(body)
            default: return []
            }
        }
    }

    @Test("commands, named and positional arguments, expectations, variables, loops and includes parse into statements")
    func language() throws {
        let text = """
        open   # comment
        set-features VERSION_1 EVENT_IDX
        expect EINVAL
        set-vring-num 0 3
        let f = get-features
        expect features contains EVENT_IDX
        expect $f lacks 0x1
        repeat 3 as i {
            send 1 count=2 size=64
        }
        include "common.vhost"
        set-backend 1 -1
        expect ring-error 1 within=500
        """
        let script = try Script(parsing: text, name: "main.vhost") { path in
            path == "common.vhost" ? "get-vring-base 1\nexpect base == 0\n" : nil
        }
        let commands = invocations(script.statements)
        #expect(commands.map(\.command) == ["open", "set-features", "set-vring-num", "get-features", "send", "get-vring-base", "set-backend"])
        #expect(commands[2].expected == .errno(.invalidArgument) && commands[2].location == SourceLocation(file: "main.vhost", line: 4, column: 1))
        #expect(commands[1].expected == .success && commands[3].binding == "f")
        guard case .send(let queue, let count, let size, let pattern, let timeout) = commands[4].action else { Issue.record("send is no send action"); return }
        #expect(queue.literal == 1 && count.literal == 2 && size?.literal == 64 && pattern == nil && timeout.literal == 2000)
        guard case .vhost(let request) = commands[2].action, case .number(let num)? = request.operands["num"] else { Issue.record("set-vring-num is no request"); return }
        #expect(request.syntax.kind == .setVringNum && num.literal == 3 && num.range == .bits(32))
        #expect(commands[5].location.file == "common.vhost")
        #expect(script.commandCount == 13)
    }

    @Test("a malformed script lists every problem at file:line:column, says what was expected and found, and suggests only close matches")
    func malformed() {
        let text = """
        set-vring-nmu 0 256
        set-vring-num 0
        set-features VERSION_9
        expect EWHAT
        memory lots
        set-backend 0 socket
        send 1 cuont=3
        set-vring-base 0 $undefined
        repeat 2 {
        frobnicate
        expect EBUSY
        """
        do {
            _ = try Script(parsing: text, name: "bad.vhost")
            Issue.record("a malformed script parsed")
        } catch {
            let problems = error.problems
            #expect(problems.count == 11, "\(problems)")
            #expect(problems[0] == "bad.vhost:1:1: expected a command, found 'set-vring-nmu'; did you mean set-vring-num?")
            #expect(problems[1] == "bad.vhost:2:16: expected NUM (set-vring-num INDEX NUM), found the end of the line")
            #expect(problems[2].hasPrefix("bad.vhost:3:14: expected a virtio feature name") && problems[2].contains("found 'VERSION_9'") && problems[2].contains("did you mean VERSION_1?"))
            #expect(problems[3].hasPrefix("bad.vhost:4:8: expected ok or an errno name after expect, found 'EWHAT'"))
            #expect(problems[4].hasPrefix("bad.vhost:5:8: expected a whole number") && problems[4].contains("found 'lots'"))
            #expect(problems[5].hasPrefix("bad.vhost:6:15: expected a number or one of tap, -1, eventfd, closed, file"))
            #expect(problems[6].hasPrefix("bad.vhost:7:8: expected a parameter of send") && problems[6].hasSuffix("did you mean count?"))
            #expect(problems[7].hasPrefix("bad.vhost:8:18: expected a variable set earlier"))
            #expect(problems[8] == "bad.vhost:10:1: expected a command, found 'frobnicate'")
            #expect(problems[9] == "bad.vhost:11:1: expected a command after this expect, found the end of the file")
            #expect(problems[10] == "bad.vhost:9:1: expected a } to close this repeat block, found the end of the file")
        }
    }

    @Test("a word far from every command gets no suggestion")
    func noWildGuesses() {
        do {
            _ = try Script(parsing: "xyzzy 1 2", name: "s")
            Issue.record("parsed")
        } catch {
            #expect(error.problems == ["s:1:1: expected a command, found 'xyzzy'"])
        }
    }

    @Test("a script saved with CRLF line ends parses as with LF, and errors keep their line numbers")
    func crlf() throws {
        let lf = try Script(parsing: "open\nset-owner\n# a comment\nset-features VERSION_1\n", name: "s")
        let crlf = try Script(parsing: "open\r\nset-owner\r\n# a comment\r\nset-features VERSION_1\r\n", name: "s")
        #expect(crlf.commandCount == lf.commandCount && lf.commandCount == 3)
        do {
            _ = try Script(parsing: "open\r\nxyzzy\r\n", name: "s")
            Issue.record("parsed")
        } catch {
            #expect(error.problems == ["s:2:1: expected a command, found 'xyzzy'"])
        }
    }

    @Test("includes that loop are refused, with the place of the include")
    func includeLoop() {
        do {
            _ = try Script(parsing: "include \"a.vhost\"", name: "a.vhost") { _ in "include \"a.vhost\"" }
            Issue.record("parsed")
        } catch {
            #expect(error.problems.count == 1 && error.problems[0].hasPrefix("a.vhost:1:9: include a.vhost would include itself"))
        }
    }

    @Test("non-printable bytes in a script are escaped in the message")
    func escaped() {
        do {
            _ = try Script(parsing: "set-owner\u{1b}[31m", name: "s")
            Issue.record("parsed")
        } catch {
            #expect(error.problems.count == 1 && error.problems[0].contains("\\u{1b}") && !error.problems[0].contains("\u{1b}"))
        }
    }

    @Test("errno names round-trip")
    func errnoNames() {
        #expect(Errno(named: "EINVAL") == .invalidArgument)
        #expect(Errno(named: "e2big") == .argListTooLong)
        #expect(Errno(named: "ENOSUCH") == nil)
    }
}

@Suite("Script recorder")
struct ScriptRecorderTests {
    @Test("ioctl events and ring events become a script that parses, with the kernel's answers as expectations")
    func recording() throws {
        let recorder = ScriptRecorder()
        let table = MemoryTable(regions: [.init(guestAddress: 0x4000_0000, size: 0x10_0000, userspaceAddress: 0x7f00_0000_0000)])
        let events: [IoctlEvent] = [
            IoctlEvent(.request(.tun(.setInterface(name: "vhrec0", flags: 0x5002))), result: .success(0)),
            IoctlEvent(.open(path: "/dev/vhost-net"), result: .success(5)),
            IoctlEvent(.request(.vhost(.setOwner)), result: .success(0)),
            IoctlEvent(.request(.vhost(.setOwner)), result: .failure(.resourceBusy)),
            IoctlEvent(.request(.vhost(.getFeatures)), result: .success(0), answer: .value(0x1_3000_8000)),
            IoctlEvent(.request(.vhost(.setFeatures(0x1_0000_0000))), result: .success(0)),
            IoctlEvent(.request(.vhost(.setMemoryTable(table))), result: .success(0)),
            IoctlEvent(.request(.vhost(.setVringNum(1, 64))), result: .success(0)),
            IoctlEvent(.request(.vhost(.setVringAddress(1, VringAddresses(descriptors: HostAddress(unchecked: 0x7f00_0000_1000), avail: HostAddress(unchecked: 0x7f00_0000_1400),
                                                                            used: HostAddress(unchecked: 0x7f00_0000_2000))))), result: .success(0)),
            IoctlEvent(.request(.vhost(.setVringKick(1, fd: 7))), result: .success(0)),
            IoctlEvent(.request(.vhost(.netSetBackend(1, fd: 4))), result: .success(0)),
            IoctlEvent(.request(.tun(.setOffload(1))), result: .success(0)),
        ]
        for event in events { recorder.ioctlObserver(event) }
        recorder.ringObserver(.published(queue: 1, chains: 10, frameBytes: 640))
        recorder.ringObserver(.kicked(queue: 1))
        recorder.ringObserver(.published(queue: 1, chains: 6, frameBytes: 384))
        recorder.ioctlObserver(IoctlEvent(.request(.vhost(.getVringBase(1))), result: .success(0), answer: .value(16)))
        let text = recorder.script(header: "test")
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains("tap vhrec0") && lines.contains("open") && lines.contains("set-owner"))
        #expect(lines.firstIndex(of: "expect EBUSY").map { lines[$0 + 1] == "set-owner" } == true)
        #expect(lines.contains("expect features == 0x130008000"))
        #expect(lines.contains("memory 0x100000 0x40000000"))
        #expect(lines.contains("set-vring-addr 1 0x40001000 0x40001400 0x40002000"))
        #expect(lines.contains("set-vring-kick 1 eventfd"))
        #expect(lines.contains("set-backend 1 tap"))
        #expect(lines.contains { $0.hasPrefix("send 1 count=16 size=64") })
        #expect(lines.contains("expect base == 16"))
        #expect(lines.contains("set-offloads 0x1"))
        let script = try Script(parsing: text, name: "recorded")
        #expect(script.commandCount == lines.filter { !$0.hasPrefix("#") && !$0.hasPrefix("expect E") }.count)  // `expect ERRNO` belongs to the next line
    }
}
