import Glibc
import NetFormats
import Testing
import Vhost
import VhostModel
@testable import VhostNet
import Virtio

/// The host end of an endpoint's frame pipe: frames in with a zero virtio-net header, frames
/// out with theirs.
final class PipeHost {
    var end: FramePipeEnd?
    let headerLength = 12

    func send(_ frame: [UInt8]) throws { try end!.send([UInt8](repeating: 0, count: headerLength) + frame) }

    /// The next frame the endpoint sent, with its header, or nil after `milliseconds`.
    func receive(milliseconds: Int32 = 2000) -> (header: VirtioNetHeader, frame: [UInt8])? {
        guard let message = end!.receive(milliseconds: milliseconds), message.count >= headerLength else { return nil }
        return (VirtioNetHeader(bytes: Array(message[0..<headerLength])), Array(message[headerLength...]))
    }
}

/// An endpoint on the in-process device, and the host end of its pipe.
func makeInProcessEndpoint(_ configure: (inout EndpointConfiguration) -> Void) throws -> (VirtioNetEndpoint<InProcessVhostNetDevice, FramePipeEnd>, PipeHost) {
    var config = EndpointConfiguration(tapName: "vhu-burst")
    config.ipv4 = IPv4Interface(address: HostFrames.me4, prefixLength: 24)
    config.ipv6 = [IPv6Interface(address: HostFrames.global, prefixLength: 64)]
    config.udpEchoPort = 7
    config.mac = HostFrames.myMAC
    configure(&config)
    let host = PipeHost()
    let endpoint = try VirtioNetEndpoint<InProcessVhostNetDevice, FramePipeEnd>(config) { pairConfig, logger throws(VhostError) in
        var pipe = try FramePipe(name: pairConfig.tapName)
        host.end = pipe.takeHostEnd()
        return try VirtioNetQueuePair(pairConfig, device: try InProcessVhostNetDevice(), port: pipe.takeDeviceEnd()!, logger: logger)
    }
    return (endpoint, host)
}

@Suite("Replies in bursts on the in-process device")
struct BurstEndpointTests {
    typealias H = HostFrames

    /// ICMP echo requests to the endpoint, numbered by sequence.
    func pings(_ count: Int) -> [[UInt8]] {
        (0..<count).map { i in
            IPv4Packet.frame(destinationMAC: H.myMAC, sourceMAC: H.hostMAC, source: H.host4, destination: H.me4, protocolNumber: 1,
                             payload: ICMPEcho.request(identifier: 0x77, sequence: UInt16(i), payload: [UInt8](repeating: UInt8(i), count: 56)))
        }
    }

    /// Sends `frames` from the host and waits until the device has put them all on the RX ring.
    func deliver(_ frames: [[UInt8]], to endpoint: VirtioNetEndpoint<InProcessVhostNetDevice, FramePipeEnd>, host: PipeHost) throws {
        for frame in frames { try host.send(frame) }
        let deadline = ContinuousClock.now + .seconds(5)
        while endpoint.pairs[0].withReceiveDriver({ $0.usedPending }) < frames.count && ContinuousClock.now < deadline { usleep(1000) }
        try #require(endpoint.pairs[0].withReceiveDriver({ $0.usedPending }) == frames.count)
    }

    @Test("a batch of 16 requests is answered with one publish of the TX ring (one kick at most), each reply seen in the TX buffer it goes out from")
    func oneFlushPerBatch() throws {
        let (endpoint, host) = try makeInProcessEndpoint { _ in }
        var transmittedInPlace = 0, transmitted = 0
        let buffers = endpoint.pairs[0].transmitQueue.queue.memory.buffers
        endpoint.frameObserver = { observed in
            guard observed.direction == .transmitted, let start = observed.bytes.baseAddress else { return }
            transmitted += 1
            // Written where the device reads it: inside one of the TX ring's buffers.
            if buffers.contains(where: { start >= UnsafeRawPointer($0.host) && start + observed.bytes.count <= UnsafeRawPointer($0.host + $0.length) }) { transmittedInPlace += 1 }
        }
        try deliver(pings(16), to: endpoint, host: host)
        let before = endpoint.transmitCounters
        #expect(try endpoint.service(milliseconds: 0) == 16)
        let after = endpoint.transmitCounters
        #expect(after.frames - before.frames == 16)
        #expect((after.kicks + after.suppressedKicks) - (before.kicks + before.suppressedKicks) == 1, "one publish for the batch")
        #expect(after.kicks - before.kicks <= 1)
        #expect(transmitted == 16 && transmittedInPlace == 16)
        var sequences: [UInt16] = []
        for _ in 0..<16 {
            guard let reply = host.receive() else { break }
            let ip = try #require(IPv4Packet(frame: reply.frame))
            #expect(ip.destination == H.host4 && internetChecksum(reply.frame[ip.payload]) == 0)
            if let echo = ICMPEcho.reply(in: reply.frame[ip.payload]) { sequences.append(echo.sequence) }
        }
        #expect(sequences == (0..<16).map(UInt16.init))
        try endpoint.stop()
    }

    /// Runs one turn on an endpoint whose frame observer calls `service` when `reenter`, after a
    /// ping reached the RX ring; returns normally when the turn took the frame.
    static func turnWithObserver(reenter: Bool) throws {
        let (endpoint, host) = try makeInProcessEndpoint { _ in }
        // Weak: the endpoint holds the observer, and a cycle is a leak that LeakSanitizer turns
        // into exit status 1 at the child's end (the ASan tier).
        endpoint.frameObserver = { [weak endpoint] _ in if reenter { _ = try? endpoint?.service(milliseconds: 0) } }
        try BurstEndpointTests().deliver(BurstEndpointTests().pings(1), to: endpoint, host: host)
        guard try endpoint.service(milliseconds: 0) == 1 else { exit(3) }
    }

    @Test("a frame observer that runs a turn inside a turn stops the process with the precondition's message (the RX queue is not checked at run time); one that does not, runs")
    func turnInsideATurnIsRefused() async {
        let refused = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            try BurstEndpointTests.turnWithObserver(reenter: true)
        }
        #expect(refused.map { String(decoding: $0.standardErrorContent, as: UTF8.self).contains("called from a frame observer, inside a turn") } == true)
        await #expect(processExitsWith: .success) {
            try BurstEndpointTests.turnWithObserver(reenter: false)
        }
    }

    @Test("the single path, kept to measure against, publishes once per reply (and drains each)")
    func singlePath() throws {
        let (endpoint, host) = try makeInProcessEndpoint { $0.replyPath = .single }
        try deliver(pings(8), to: endpoint, host: host)
        let before = endpoint.transmitCounters
        #expect(try endpoint.service(milliseconds: 0) == 8)
        let after = endpoint.transmitCounters
        #expect((after.kicks + after.suppressedKicks) - (before.kicks + before.suppressedKicks) == 8)
        #expect(endpoint.pairs[0].withTransmitDriver { $0.inFlight } == 0, "each reply was drained")
        for _ in 0..<8 { #expect(host.receive() != nil) }
        try endpoint.stop()
    }

    @Test("a 20,000-byte UDP datagram in fragments goes back as one USO superframe through the large TX buffer; a replayed superframe too")
    func superframeThroughTheRing() throws {
        let (endpoint, host) = try makeInProcessEndpoint { $0.datapath.features = [.version1, .eventIndex, .netCsum, .netHostUSO] }
        #expect(endpoint.responder.offloads == TransmitOffloads(checksum: true, udpSegmentation: true, largestFrame: endpoint.pairs[0].transmitQueue.largeFrameCapacity))
        let payload = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 3) }
        try deliver(H.fragments4(H.udp4Upper(payload), protocolNumber: 17), to: endpoint, host: host)
        try endpoint.service(milliseconds: 0)
        let reply = try #require(host.receive())
        #expect(reply.header.gsoType == VirtioNetHeader.GSOType.udpL4.rawValue && reply.header.gsoSize == 1472 && reply.header.flags == .needsChecksum)
        #expect(reply.frame.count == 20_042 && Array(reply.frame[42...]) == payload)
        // The same frame sent again (as --replay does): the large buffer is free again.
        try endpoint.send([(frame: reply.frame, header: reply.header, queue: 0)])
        let again = try #require(host.receive())
        #expect(again.frame == reply.frame && again.header.gsoType == 5)
        // A frame larger than any TX buffer is dropped and counted, not truncated.
        let drops = endpoint.transmitCounters.drops
        try endpoint.send([UInt8](repeating: 0, count: 70_000))
        #expect(endpoint.transmitCounters.drops == drops + 1)
        try endpoint.stop()
    }

    @Test("a NEEDS_CSUM or GSO frame without the feature negotiated is refused before the ring (virtio 1.x 5.1.6.2)")
    func offloadNeedsFeature() throws {
        let (endpoint, _) = try makeInProcessEndpoint { _ in }
        #expect(throws: VhostError.self) {
            try endpoint.pairs[0].enqueueTransmit(length: 60, header: VirtioNetHeader(flags: .needsChecksum, checksumStart: 34, checksumOffset: 6)) { _ in }
        }
        #expect(throws: VhostError.self) {
            try endpoint.pairs[0].enqueueTransmit(length: 60, header: VirtioNetHeader(gsoType: 5)) { _ in }
        }
        try endpoint.stop()
    }

    @Test("IPv6 through the ring: a DAD probe at start, then a solicitation answered and an echo replied")
    func ipv6ThroughTheRing() throws {
        let (endpoint, host) = try makeInProcessEndpoint { _ in }
        try endpoint.announce()
        let probes = [host.receive(), host.receive()].compactMap { $0 }
        #expect(probes.count == 2 && probes.allSatisfy { HostFrames.parse6($0.frame)?.ip.source == .unspecified })
        let ns = H.ethernet(H.linkLocal.solicitedNodeMulticast.multicastMAC, EthernetFrame.ipv6Type, H.solicitation(from: H.host, target: H.linkLocal, link: H.hostMAC))
        try deliver([ns, H.ethernet(H.myMAC, EthernetFrame.ipv6Type, H.echo6(from: H.host, to: H.linkLocal))], to: endpoint, host: host)
        try endpoint.service(milliseconds: 0)
        let kinds = [host.receive(), host.receive(), host.receive()].compactMap { $0.flatMap { HostFrames.parse6($0.frame)?.upper.first } }
        #expect(kinds == [136, 129, 135])   // the advertisement, the echo reply, the probe of the STALE host
        try endpoint.stop()
    }
}

@Suite("Captures: pcapng from the writer, read back for replay")
struct CaptureReplayTests {
    typealias H = HostFrames

    func temporaryPath(_ name: String) -> String { "/tmp/swift-vhost-\(getpid())-\(name)" }

    @Test("the writer's pcapng reads back with each frame's queue, direction, nanosecond time and header; pcap without them")
    func writeAndRead() throws {
        let path = temporaryPath("w.pcapng")
        defer { unlink(path) }
        let frame = H.pings(1)[0]
        do {
            let writer = try PcapWriter(path: path, interfaces: ["vht0 queue 0", "vht0 queue 1"])
            #expect(writer.format == .pcapng)
            frame.withUnsafeBytes { writer.write($0, direction: .inbound, queue: 1, header: VirtioNetHeader(flags: .dataValid, numBuffers: 1)) }
            frame.withUnsafeBytes { writer.write($0, direction: .outbound, queue: 0, header: VirtioNetHeader(flags: .needsChecksum, checksumStart: 34, checksumOffset: 2)) }
            try writer.finish()
        }
        let capture = try readCaptureFile(path: path)
        #expect(capture.format == .pcapng && capture.packets.count == 2)
        #expect(capture.packets.map(\.interface) == [1, 0] && capture.packets.map(\.direction) == [.inbound, .outbound])
        #expect(capture.packets.allSatisfy { $0.bytes == frame && ($0.timestampNanoseconds ?? 0) > 1_600_000_000 * 1_000_000_000 })
        #expect(capture.packets[0].comments == ["virtio-net header: flags 0x02 gso_type 0x00 hdr_len 0 gso_size 0 csum_start 0 csum_offset 0 num_buffers 1 [02 00 00 00 00 00 00 00 00 00 01 00]"])
        let pcapPath = temporaryPath("w.pcap")
        defer { unlink(pcapPath) }
        do {
            let writer = try PcapWriter(path: pcapPath)
            #expect(writer.format == .pcap)
            writer.write(frame)
            try writer.finish()
        }
        #expect(try readPcapFrames(path: pcapPath) == [frame])
    }

    @Test("replay: queues from the capture, NEEDS_CSUM kept with CSUM or completed without, DATA_VALID dropped, GSO and link-type mismatches refused")
    func replayFrames() throws {
        let udp = IPv4Packet.frame(destinationMAC: H.hostMAC, sourceMAC: H.myMAC, source: H.me4, destination: H.host4, protocolNumber: 17, payload: H.udp4Upper(Array("partial".utf8)))
        var partial = udp
        let pseudo = foldChecksum(IPv4Packet.pseudoHeaderSum(source: H.me4, destination: H.host4, protocolNumber: 17, length: 15))
        partial[40] = UInt8(pseudo >> 8); partial[41] = UInt8(pseudo & 0xff)
        let csum = VirtioNetHeader(flags: .needsChecksum, checksumStart: 34, checksumOffset: 6)
        func capture(_ header: VirtioNetHeader, linkType: UInt32 = 1, frame: [UInt8]) -> CaptureFile {
            var file = Pcapng.sectionHeader(application: "t") + Pcapng.interfaceDescription(linkType: UInt16(linkType), name: "q0")
                + Pcapng.interfaceDescription(linkType: UInt16(linkType), name: "q1")
            file += Pcapng.enhancedPacket(interface: 1, timestamp: 0, packet: frame, direction: .outbound, comment: Pcapng.virtioNetHeaderComment(header.bytes(length: 12)))
            return try! CaptureFile(parsing: file)
        }
        let kept = try Replay.frames(of: capture(csum, frame: partial), path: "p", linkLayer: .ethernet, features: [.version1, .netCsum], queues: 2)
        #expect(kept.count == 1 && kept[0].header == csum && kept[0].frame == partial && kept[0].queue == 1)
        let completed = try Replay.frames(of: capture(csum, frame: partial), path: "p", linkLayer: .ethernet, features: [.version1], queues: 1)
        #expect(completed[0].header == VirtioNetHeader() && completed[0].frame == udp && completed[0].queue == 0)
        let received = try Replay.frames(of: capture(VirtioNetHeader(flags: .dataValid, numBuffers: 1), frame: udp), path: "p", linkLayer: .ethernet, features: [.version1], queues: 1)
        #expect(received[0].header == VirtioNetHeader())
        let uso = VirtioNetHeader(flags: .needsChecksum, gsoType: 5, headerLength: 42, gsoSize: 1472, checksumStart: 34, checksumOffset: 6)
        do {
            _ = try Replay.frames(of: capture(uso, frame: partial), path: "p", linkLayer: .ethernet, features: [.version1, .netCsum], queues: 1)
            Issue.record("a USO superframe replayed without HOST_USO")
        } catch {
            #expect("\(error)".contains("HOST_USO"))
        }
        #expect(try Replay.frames(of: capture(uso, frame: partial), path: "p", linkLayer: .ethernet, features: [.version1, .netCsum, .netHostUSO], queues: 1)[0].header == uso)
        #expect(throws: VhostError.self) { try Replay.frames(of: capture(VirtioNetHeader(), frame: udp), path: "p", linkLayer: .none, features: [], queues: 1) }
        let outside = VirtioNetHeader(flags: .needsChecksum, checksumStart: 2000, checksumOffset: 6)
        #expect(throws: VhostError.self) { try Replay.frames(of: capture(outside, frame: udp), path: "p", linkLayer: .ethernet, features: [.netCsum], queues: 1) }
    }
}

extension HostFrames {
    /// ICMP echo requests from the host (for captures).
    static func pings(_ count: Int) -> [[UInt8]] {
        (0..<count).map { i in
            IPv4Packet.frame(destinationMAC: myMAC, sourceMAC: hostMAC, source: host4, destination: me4, protocolNumber: 1,
                             payload: ICMPEcho.request(identifier: 1, sequence: UInt16(i), payload: [1, 2, 3, 4]))
        }
    }
}
