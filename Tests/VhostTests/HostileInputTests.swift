import NetFormats
import PropertyBased
import Testing
@testable import VhostNet
@testable import VhostScript
import Virtio

/// Frames from anyone on the host, pcap files and scripts from anyone: random and mutated input
/// never crashes, never hangs, and never gets a reply that a well-formed request would not get.
@Suite("Hostile input: the responder, the packet parsers, pcap and scripts")
struct HostileInputTests {
    static let me = IPv4Address(10, 0, 0, 2)
    static let mac = MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56)
    static let me6 = IPv6Address(parsing: "fd00:6::2")!

    /// A responder with IPv4 and IPv6 on.
    /// A pcap or pcapng refusal names a place inside the file (a record or block offset), never
    /// one past its end, and a reason where the format has one.
    static func expectWithinFile(_ error: Pcap.ParseError, size: Int) {
        switch error {
        case .tooShort, .badMagic, .unsupportedLinkType: break
        case .truncatedRecord(let index, let offset): #expect(index >= 0 && offset >= 0 && offset <= size, "\(error)")
        case .recordTooLarge(let index, let length): #expect(index >= 0 && length > 0, "\(error)")
        case .malformedBlock(let offset, let reason): #expect(offset >= 0 && offset <= size && !reason.isEmpty, "\(error)")
        }
    }

    static func responder() -> NetworkResponder {
        NetworkResponder(mac: mac, ipv4: IPv4Interface(address: me, prefixLength: 24), ipv6: [IPv6Interface(address: me6, prefixLength: 64)], udpEchoPort: 7)
    }

    /// Well-formed requests the responder answers: ARP for us, an ICMP echo, a UDP echo.
    static let seeds: [[UInt8]] = {
        let peer = IPv4Address(10, 0, 0, 1), peerMAC = MACAddress(2, 0, 0, 0, 0, 1)
        let arp = ARPPacket(operation: .request, senderMAC: peerMAC, senderIP: peer, targetMAC: MACAddress(0, 0, 0, 0, 0, 0), targetIP: me).frame()
        var icmp: [UInt8] = [8, 0, 0, 0, 0x12, 0x34, 0, 1] + [UInt8](repeating: 0x42, count: 32)
        let sum = internetChecksum(icmp[...]); icmp[2] = UInt8(sum >> 8); icmp[3] = UInt8(sum & 0xff)
        let ping = IPv4Packet.frame(destinationMAC: mac, sourceMAC: peerMAC, source: peer, destination: me, protocolNumber: 1, payload: icmp)
        let udp = UDPDatagram.build(source: peer, destination: me, sourcePort: 40000, destinationPort: 7, payload: Array("echo".utf8)[...])
        let echo = IPv4Packet.frame(destinationMAC: mac, sourceMAC: peerMAC, source: peer, destination: me, protocolNumber: 17, payload: udp)
        typealias H = HostFrames
        let ns = H.ethernet(H.linkLocal.solicitedNodeMulticast.multicastMAC, EthernetFrame.ipv6Type, H.solicitation(from: H.host, target: H.linkLocal, link: H.hostMAC))
        let dad = H.ethernet(me6.solicitedNodeMulticast.multicastMAC, EthernetFrame.ipv6Type, H.solicitation(from: .unspecified, target: me6, link: nil))
        let ping6 = H.ethernet(mac, EthernetFrame.ipv6Type, H.echo6(from: H.hostGlobal, to: me6))
        let udp6 = H.ethernet(mac, EthernetFrame.ipv6Type, H.udp6(from: H.hostGlobal, to: me6, payload: Array("echo".utf8)))
        return [arp, ping, echo, ns, dad, ping6, udp6]
    }()

    /// Whether `frame` is a request the responder may answer: an ARP request for us, or an IPv4
    /// packet to us (ICMP or UDP; the responder checks the rest).
    static func mayBeAnswered(_ frame: [UInt8]) -> Bool {
        if let arp = ARPPacket(frame: frame) { return arp.operation == .request && arp.targetIP == me }
        if EthernetFrame.etherType(of: frame) == EthernetFrame.ipv6Type {
            // An IPv6 packet to one of our addresses or groups, carrying ICMPv6 or UDP.
            guard let ip = frame.withUnsafeBytes({ IPv6Packet($0, at: 14) }) else { return false }
            let ours = [IPv6Address.linkLocal(mac: mac), me6]
            let forUs = ours.contains(ip.destination) || ip.destination == .allNodes || ours.contains { $0.solicitedNodeMulticast == ip.destination }
            return forUs && (ip.upperLayer == 58 || ip.upperLayer == 17)
        }
        guard let ip = IPv4Packet(frame: frame) else { return false }
        return ip.destination == me && (ip.protocolNumber == 1 || ip.protocolNumber == 17)
    }

    @Test("random frames and random virtio-net headers: no crash, no reply to anything that is not a request to us")
    func randomFrames() async {
        await propertyCheck(count: 2000, input: Gen.int(in: 0...255).array(of: 0...1600), Gen.int(in: 0...255), Gen.int(in: 0...255)) { bytes, flags, gso in
            let frame = bytes.map { UInt8(truncatingIfNeeded: $0) }
            var responder = Self.responder()
            let header = VirtioNetHeader(flags: .init(rawValue: UInt8(flags)), gsoType: UInt8(gso))
            if let reply = responder.respond(to: frame, header: header) {
                #expect(Self.mayBeAnswered(frame), "a reply of \(reply.count) bytes to a frame that is no request to us")
            }
            // The same bytes as an L3 tun carries them (no Ethernet header).
            var tun = Self.responder(); tun.linkLayer = .none
            _ = tun.replies(to: Array(frame.dropFirst(14)), header: header)
            _ = IPv4Packet(frame: frame).map { UDPDatagram.parse(frame: frame, ip: $0) }
        }
    }

    @Test("well-formed requests truncated and with flipped bytes: no crash, no read out of bounds, replies only to requests")
    func mutatedRequests() async {
        await propertyCheck(count: 5000, input: Gen.int(in: 0...(Self.seeds.count - 1)), Gen.int(in: 0...2000), Gen.int(in: 0...255).array(of: 0...6), Gen.bool) { seed, cut, flips, trustChecksum in
            var frame = Self.seeds[seed]
            frame = Array(frame.prefix(cut % (frame.count + 1)))
            for (i, value) in flips.enumerated() where !frame.isEmpty { frame[(value &* 31 &+ i) % frame.count] ^= UInt8(truncatingIfNeeded: value | 1) }
            var responder = Self.responder()
            let header = VirtioNetHeader(flags: trustChecksum ? .needsChecksum : [])
            if responder.respond(to: frame, header: header) != nil {
                #expect(Self.mayBeAnswered(frame), "a reply to a broken frame")
            }
        }
        // The intact seeds are answered (the property above must not pass by answering nothing).
        #expect(Self.seeds.allSatisfy { var responder = Self.responder(); return responder.respond(to: $0) != nil })
    }

    /// A frame of pktgen's stream: UDP to our MAC and address, port 9 (nothing serves it).
    static let sinkFrame = udpFrame(toPort: 9)

    /// A UDP datagram of 18 zero bytes to our MAC and address, port `port`.
    static func udpFrame(toPort port: UInt16) -> [UInt8] {
        let peer = IPv4Address(10, 0, 0, 1)
        let udp = UDPDatagram.build(source: peer, destination: me, sourcePort: 9, destinationPort: port, payload: [UInt8](repeating: 0, count: 18)[...])
        return IPv4Packet.frame(destinationMAC: mac, sourceMAC: MACAddress(2, 0, 0, 0, 0, 1), source: peer, destination: me, protocolNumber: 17, payload: udp)
    }

    /// What `respond` and `respondParsing` (no fast path) send for `frame` and count.
    static func outcome(_ frame: [UInt8], linkLayer: LinkLayer, parsing: Bool) -> (replies: [[UInt8]], counters: NetworkResponder.Counters) {
        var responder = Self.responder(); responder.linkLayer = linkLayer
        var replies: [[UInt8]] = []
        frame.withUnsafeBytes { bytes in
            let emit: NetworkResponder.Emit = { length, _, write in
                var buffer = [UInt8](repeating: 0, count: length)
                buffer.withUnsafeMutableBytes { write($0) }
                replies.append(buffer)
            }
            if parsing { responder.respondParsing(to: bytes, headerFlags: [], emit: emit) } else { responder.respond(to: bytes, headerFlags: [], emit: emit) }
        }
        return (replies, responder.counters)
    }

    @Test("the sink's fast path answers and counts every frame as the full parse does: mutated sink frames, requests, both link layers")
    func sinkFastPathIsTheParse() async {
        let seeds = Self.seeds + [Self.sinkFrame]
        await propertyCheck(count: 5000, input: Gen.int(in: 0...(seeds.count - 1)), Gen.int(in: 0...2000), Gen.int(in: 0...255).array(of: 0...4), Gen.bool) { seed, cut, flips, tun in
            var frame = seeds[seed]
            frame = Array(frame.prefix(cut % (frame.count + 1) + (cut % 3 == 0 ? frame.count : 0)))
            // Flips land in the headers (the first 42 bytes), where the fast path decides.
            for (i, value) in flips.enumerated() where !frame.isEmpty { frame[(value &* 7 &+ i) % min(frame.count, 42)] ^= UInt8(truncatingIfNeeded: value | 1) }
            if tun { frame = Array(frame.dropFirst(min(14, frame.count))) }
            let fast = Self.outcome(frame, linkLayer: tun ? .none : .ethernet, parsing: false)
            let parsed = Self.outcome(frame, linkLayer: tun ? .none : .ethernet, parsing: true)
            #expect(fast.replies == parsed.replies && fast.counters == parsed.counters, "\(frame)")
        }
        // The fast path is taken (the property must not pass by never taking it), and not for
        // the echo port, a fragment, another MAC or broadcast.
        #expect(Self.sinkFrame.withUnsafeBytes { Self.responder().isSinkFrame($0) })
        var l3 = Self.responder(); l3.linkLayer = .none
        #expect(Array(Self.sinkFrame.dropFirst(14)).withUnsafeBytes { l3.isSinkFrame($0) })
        let toEcho = Self.udpFrame(toPort: 7)
        var fragment = Self.sinkFrame; fragment[21] = 1
        var broadcast = Self.sinkFrame; for i in 0..<6 { broadcast[i] = 0xff }
        var otherMAC = Self.sinkFrame; otherMAC[5] ^= 1
        for frame in [toEcho, fragment, broadcast, otherMAC] { #expect(!frame.withUnsafeBytes { Self.responder().isSinkFrame($0) }) }
        #expect(Self.outcome(toEcho, linkLayer: .ethernet, parsing: false).replies.count == 1, "the echo port is answered")
    }

    @Test("random and truncated pcap files: parsed or refused with a reason, never a crash")
    func randomPcap() async {
        let good = Pcap.globalHeader() + Pcap.recordHeader(seconds: 1, microseconds: 2, capturedLength: 60, originalLength: 60) + [UInt8](repeating: 7, count: 60)
        await propertyCheck(count: 2000, input: Gen.int(in: 0...255).array(of: 0...200), Gen.int(in: 0...200), Gen.bool) { bytes, cut, startGood in
            let data = startGood ? Array(good.prefix(cut)) + bytes.map { UInt8(truncatingIfNeeded: $0) } : bytes.map { UInt8(truncatingIfNeeded: $0) }
            let started = ContinuousClock.now
            do {
                let frames = try Pcap.parse(data)
                #expect(frames.allSatisfy { $0.count <= data.count })
            } catch let error as Pcap.ParseError {
                // A typed refusal that points inside the file, never past it.
                Self.expectWithinFile(error, size: data.count)
            } catch {
                Issue.record("an error that is no Pcap.ParseError: \(error)")
            }
            #expect(ContinuousClock.now - started < .seconds(1), "parsing \(data.count) bytes took \(ContinuousClock.now - started)")
        }
    }

    @Test("random and mutated pcapng files: parsed or refused with a reason, never a crash, never a packet larger than the file")
    func randomPcapng() async {
        var good = Pcapng.sectionHeader(application: "fuzz") + Pcapng.interfaceDescription(linkType: 1, name: "q0")
        good += Pcapng.enhancedPacket(interface: 0, timestamp: 5, packet: [UInt8](repeating: 7, count: 61), direction: .inbound,
                                      comment: Pcapng.virtioNetHeaderComment([1, 5, 42, 0, 0xc0, 5, 34, 0, 6, 0, 1, 0]))
        good += [3, 0, 0, 0, 20, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4, 20, 0, 0, 0]
        await propertyCheck(count: 3000, input: Gen.int(in: 0...255).array(of: 0...12), Gen.int(in: 0...400), Gen.int(in: 0...255).array(of: 0...64)) { flips, cut, tail in
            var data = Array(good.prefix(cut)) + tail.map { UInt8(truncatingIfNeeded: $0) }
            for (i, value) in flips.enumerated() where !data.isEmpty { data[(value &* 37 &+ i &* 11) % data.count] ^= UInt8(truncatingIfNeeded: value | 1) }
            let started = ContinuousClock.now
            do {
                let capture = try CaptureFile(parsing: data)
                #expect(capture.packets.allSatisfy { $0.bytes.count <= data.count })
                _ = capture.packets.map(\.virtioNetHeaderBytes)
            } catch let error as Pcap.ParseError {
                Self.expectWithinFile(error, size: data.count)
            } catch {
                Issue.record("an error that is no Pcap.ParseError: \(error)")
            }
            #expect(ContinuousClock.now - started < .seconds(1), "parsing \(data.count) bytes took \(ContinuousClock.now - started)")
        }
    }

    @Test("random fragments into the reassembler: never a crash, memory bounded, a completed datagram no larger than 64 KiB")
    func randomFragments() async {
        await propertyCheck(count: 500, input: Gen.int(in: 0...70_000).array(of: 0...60), Gen.int(in: 0...1500).array(of: 0...60), Gen.int(in: 0...5)) { offsets, lengths, ids in
            var reassembler = FragmentReassembler()
            let header = [UInt8](writing: 20) { w in
                IPv4Packet.writeHeader(to: &w, totalLength: 20, identification: 1, protocolNumber: 17, source: Self.me, destination: Self.me)
            }
            var key = FragmentReassembler.Key(header.withUnsafeBytes { IPv4Packet($0, at: 0)! })
            for (i, (offset, length)) in zip(offsets, lengths).enumerated() {
                key.identification = UInt32(i % (ids + 1))
                let outcome = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: length).withUnsafeBytes {
                    reassembler.add(key, offset: offset & ~7, more: i % 3 != 0, data: $0)
                }
                if case .complete(let whole) = outcome { #expect(whole.count <= 65_535) }
                #expect(reassembler.pendingCount <= reassembler.maximumPending)
            }
        }
    }

    @Test("random bytes and token soups as scripts: every problem has its line, non-printable input is escaped, nothing half-parsed runs")
    func randomScripts() async {
        let words = ScriptCommands.all.map(\.name) + ["0", "1", "-1", "256", "0xffffffff", "tap", "EINVAL", "ok", "VERSION_1", "4M", "#", "\n", "\n", "\t", "\u{07}", "é",
                                                      "expect", "let", "x", "=", "$x", "$x+4", "repeat", "as", "{", "}", "include", "\"", "count=", "contains", "==", "ring-error"]
        await propertyCheck(count: 1500, input: Gen.int(in: 0...(words.count - 1)).array(of: 0...60), Gen.int(in: 0...255).array(of: 0...80)) { tokens, raw in
            let soup = tokens.map { words[$0] }.joined(separator: " ")
            let bytes = String(decoding: raw.map { UInt8(truncatingIfNeeded: $0) }, as: UTF8.self)
            for text in [soup, bytes, soup + "\n" + bytes] {
                let started = ContinuousClock.now
                defer { #expect(ContinuousClock.now - started < .seconds(1), "parsing \(text.utf8.count) bytes took \(ContinuousClock.now - started)") }
                do {
                    let script = try Script(parsing: text, name: "fuzz") { _ in nil }
                    // What parsed is whole: no more statements than lines, none from an include
                    // (the loader reads nothing).
                    #expect(script.statements.count <= text.split(separator: "\n", omittingEmptySubsequences: false).count)
                } catch let error as Script.ParseError {
                    #expect(!error.problems.isEmpty && error.problems.count <= 100, "\(error.problems.count) problems")
                    for problem in error.problems {
                        #expect(problem.hasPrefix("fuzz:"), "a problem without its place: \(problem)")
                        #expect(!problem.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f }, "raw control characters echoed: \(problem.debugDescription)")
                    }
                } catch {
                    Issue.record("an error that is no ParseError: \(error)")
                }
            }
        }
    }
}

@Suite("Script parser at scale")
struct ScriptParserScaleTests {
    @Test("a 100,000-line script with a problem on every line parses in one pass and reports at most 100 problems")
    func manyLines() {
        let text = Array(repeating: "set-vring-num 0 banana", count: 100_000).joined(separator: "\n")
        do {
            _ = try Script(parsing: text, name: "big")
            Issue.record("parsed")
        } catch {
            #expect(error.problems.count == 100)
        }
        // One enormous line, and a deep nest of repeats.
        let wide = "set-features " + Array(repeating: "VERSION_1", count: 200_000).joined(separator: " ")
        #expect((try? Script(parsing: wide, name: "wide")) != nil)
        // A deep nest of repeats is refused at the limit, without recursing once per level.
        let deep = String(repeating: "repeat 2 {\n", count: 5000) + "set-owner\n" + String(repeating: "}\n", count: 5000)
        do {
            _ = try Script(parsing: deep, name: "deep")
            Issue.record("5000 nested repeats parsed")
        } catch {
            #expect(error.problems.first == "deep:17:1: expected at most 16 repeat blocks inside each other (the limit), found more")
        }
        let sixteen = String(repeating: "repeat 2 {\n", count: 16) + "set-owner\n" + String(repeating: "}\n", count: 16)
        #expect((try? Script(parsing: sixteen, name: "sixteen"))?.commandCount == 1 << 16)
    }
}
