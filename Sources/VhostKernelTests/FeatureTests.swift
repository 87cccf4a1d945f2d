import DatapathMeasure
import DatapathSuite
import Glibc
import HostNetwork
import NetFormats
import SystemPackage
import Vhost
import VhostNet
import Virtio

/// A UDP datagram over IPv4 as the driver hands it to vhost for checksum offload or USO: the
/// checksum field holds the pseudo-header sum (NEEDS_CSUM) unless `fullChecksum` is given.
func udpOffloadFrame(destinationMAC: MACAddress, source: IPv4Address, destination: IPv4Address, port: UInt16,
                     payload: [UInt8], gsoSize: UInt16 = 0, fullChecksum: UInt16? = nil) -> (frame: [UInt8], header: VirtioNetHeader) {
    var udp = [UInt8](repeating: 0, count: 8)
    udp[0] = 0x9c; udp[1] = 0x40                                 // source port 40000
    udp[2] = UInt8(port >> 8); udp[3] = UInt8(port & 0xff)
    let length = 8 + payload.count
    udp[4] = UInt8((length >> 8) & 0xff); udp[5] = UInt8(length & 0xff)
    var pseudo = (source.value >> 16) + (source.value & 0xffff) + (destination.value >> 16) + (destination.value & 0xffff) + 17 + UInt32(length)
    while pseudo >> 16 != 0 { pseudo = (pseudo & 0xffff) + (pseudo >> 16) }
    let checksum = fullChecksum ?? UInt16(pseudo)
    udp[6] = UInt8(checksum >> 8); udp[7] = UInt8(checksum & 0xff)
    let frame = IPv4Packet.frame(destinationMAC: destinationMAC, sourceMAC: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56),
                                 source: source, destination: destination, protocolNumber: IPv4Packet.protocolUDP, payload: udp + payload)
    let header = fullChecksum != nil ? VirtioNetHeader() :
        VirtioNetHeader(flags: .needsChecksum, gsoType: gsoSize > 0 ? VirtioNetHeader.GSOType.udpL4.rawValue : 0,
                        headerLength: gsoSize > 0 ? 42 : 0, gsoSize: gsoSize, checksumStart: 34, checksumOffset: 6)
    return (frame, header)
}

/// Sends one GSO frame from the host stack (a PACKET_VNET_HDR socket on the tap) and waits for
/// a frame over 1514 bytes in the RX ring; returns its header and bytes.
func receiveGSOFrame(_ p: VhostNetQueuePair, frame: [UInt8], header: VirtioNetHeader) throws -> (VirtioNetHeader, [UInt8]) {
    let socket = try PacketSocket(interfaceIndex: try p.tap.interfaceIndex())
    try socket.enableVnetHeader()
    try socket.send(header.bytes(length: 10) + frame)
    var got: (VirtioNetHeader, [UInt8])? = nil
    let deadline = ContinuousClock.now + .seconds(5)
    while got == nil && ContinuousClock.now < deadline {
        try p.receive(milliseconds: 500) { f in if f.frame.count > 1514 { got = (f.header, [UInt8](f.frame)) } }
    }
    guard let got else { throw KernelTestFailure("no frame over 1514 bytes arrived: the host segmented it (tap offloads not applied?)") }
    return got
}

/// The running kernel's version as (major, minor).
func kernelVersion() -> (Int, Int) {
    let parts = KernelInfo.release().split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
    return (parts.first ?? 0, parts.count > 1 ? parts[1] : 0)
}

/// An IPv4/UDP frame of one flow (its source port), carrying a sequence number.
func udpFlowFrame(sequence: Int, sourcePort: UInt16) -> [UInt8] {
    let payload = (0..<64).map { UInt8(truncatingIfNeeded: $0 == 0 ? sequence >> 8 : $0 == 1 ? sequence : $0 &+ sequence) }
    let segment = UDPDatagram.build(source: IPv4Address(10, 0, 8, 1), destination: IPv4Address(10, 0, 8, 2),
                                    sourcePort: sourcePort, destinationPort: 9, payload: payload[...])
    return IPv4Packet.frame(destinationMAC: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56), sourceMAC: MACAddress(0x52, 0x54, 0, 0, 0, 1),
                            source: IPv4Address(10, 0, 8, 1), destination: IPv4Address(10, 0, 8, 2),
                            protocolNumber: IPv4Packet.protocolUDP, payload: segment)
}

let featureTests: [KernelTest] = [
    KernelTest(name: "features: each ring feature negotiates where offered, and is named where not") {
        let offered = try VhostNetDevice().features()
        let candidates: [VirtioFeatures] = [.eventIndex, .indirectDescriptors, .netMergeableRxBuffers, .notifyOnEmpty,
                                            .vhostNetVirtioNetHeader, .accessPlatform, .inOrder, .ringReset]
        var negotiated: [String] = [], missing: [String] = []
        for feature in candidates {
            let name = feature.featureNames[0]
            if offered.contains(feature) {
                let device = try ownedDevice()
                try device.setFeatures([.version1, feature])
                negotiated.append(name)
            } else {
                do {
                    _ = try pair("vht-feat") { $0.features = [.version1, feature] }
                    throw KernelTestFailure("\(name) is not offered, yet the queue pair started")
                } catch let error as VhostError {
                    guard case .featureUnavailable = error, error.description.contains(name) else { throw KernelTestFailure("unexpected error: \(error)") }
                    try expect(!Tap.exists(name: "vht-feat"), "a failed start left the tap behind")
                    missing.append(name)
                }
            }
        }
        say("  negotiated: \(negotiated.joined(separator: " ")); not offered (refused by name): \(missing.joined(separator: " "))")
    },
    KernelTest(name: "features: the legacy 10-byte header (neither VERSION_1 nor MRG_RXBUF), the tap told the same") {
        let p = try pair("vht-h10") { $0.features = [.eventIndex] }
        try expect(p.headerLength == 10, "header length \(p.headerLength)")
        let tapLength = try p.tap.vnetHeaderSize()
        try expect(tapLength == 10, "TUNGETVNETHDRSZ = \(tapLength), expected 10")
        try transmitAndCompare(p, frames: 300)
        try receiveAndCompare(p, frames: 128)
    },
    KernelTest(name: "notifications: busy-poll mode and VHOST_SET/GET_VRING_BUSYLOOP_TIMEOUT") {
        let p = try pair("vht-poll") { $0.notificationMode = .poll }
        for index: UInt32 in [0, 1] {
            try p.device.setVringBusyloopTimeout(index: index, microseconds: 50)
            let value = try p.device.vringBusyloopTimeout(index: index)
            try expect(value == 50, "GET_VRING_BUSYLOOP_TIMEOUT(\(index)) = \(value), expected 50")
        }
        // What the kernel signals is read from the call eventfds themselves (the driver never
        // waits on them in poll mode, so its own counters would say nothing).
        _ = p.receiveQueue.queue.call.consume(); _ = p.transmitQueue.queue.call.consume()
        try transmitAndCompare(p, frames: 500)
        try receiveAndCompare(p, frames: 128)
        try expect(p.transmitCounters.calls == 0, "poll mode should not sleep on the call eventfd")
        let rxCalls = p.receiveQueue.queue.call.consume() ?? 0, txCalls = p.transmitQueue.queue.call.consume() ?? 0
        try expect(rxCalls == 0 && txCalls == 0, "the kernel signalled the call eventfds \(rxCalls) (RX) and \(txCalls) (TX) times: interrupts were not suppressed")
        say("  poll mode: 500 frames out, 128 in, and the kernel signalled neither call eventfd")
        // The control: the same traffic in interrupt mode, where the kernel must signal RX (the
        // driver sleeps on the call eventfd there), so "no signal" above says something.
        do {
            let control = try pair("vht-irq") { $0.notificationMode = .interrupt }
            let host = try KernelHostSide(control)
            quietHostStack(interface: "vht-irq")
            try transmitAndCompare(control, host: host, frames: 500)
            try receiveAndCompare(control, host: host, frames: 128)
            while try control.receive(limit: 64, milliseconds: 100, handler: { _ in }) > 0 {}
            // Interrupts re-enabled as an interrupt-mode driver does before it sleeps; one frame.
            _ = control.takeReceiveSignals()
            _ = control.armReceiveNotification()
            try host.send(TestFrame.bytes(77))
            var signals: UInt64 = 0
            let until = ContinuousClock.now + .seconds(2)
            while signals == 0 && ContinuousClock.now < until { signals = control.takeReceiveSignals() ?? 0; usleep(2000) }
            say("  interrupt mode: one frame after the driver re-enabled interrupts, and the kernel signalled the RX call eventfd \(signals) time(s)")
            try expect(signals > 0, "in interrupt mode the kernel never signalled RX: the poll-mode check above proves nothing")
        }
    },
    KernelTest(name: "notifications: VHOST_SET_VRING_BUSYLOOP_TIMEOUT makes the worker spin: a kick on an empty TX ring costs it about the timeout in CPU, and next to nothing without") {
        let p = try pair("vht-spin") { $0.notificationMode = .poll }
        // vhost_net_busy_poll stops spinning when the RX socket has data: keep the host stack's
        // own frames (IPv6 neighbour discovery) off the tap.
        quietHostStack(interface: "vht-spin")
        guard let worker = VhostWorkerThread.find() else { throw KernelTestFailure("no vhost worker found for this thread") }
        /// The worker's CPU time over one kick of the empty TX ring and 400 ms of quiet.
        func workerCPU(afterKickWithBusyloop microseconds: UInt32) throws -> UInt64 {
            try p.device.setVringBusyloopTimeout(index: 1, microseconds: microseconds)
            usleep(100_000)
            let before = ThreadCPUTime.nanoseconds(tid: worker.tid) ?? 0
            p.transmitQueue.queue.kick.signal()
            usleep(400_000)
            return (ThreadCPUTime.nanoseconds(tid: worker.tid) ?? 0) &- before
        }
        let idle = try workerCPU(afterKickWithBusyloop: 0)
        // The spin ends at need_resched() (vhost_can_busy_poll runs with preemption off), so any
        // task that wakes on the worker's CPU cuts it short: under emulation a spin was once cut
        // after 1 ms. Up to 5 kicks, the longest spin counts; without the timeout every kick
        // costs ~0, so the check still fails when busyloop does nothing.
        var spins: [UInt64] = []
        while spins.count < 5, (spins.max() ?? 0) < 10_000_000 { spins.append(try workerCPU(afterKickWithBusyloop: 200_000)) }
        let spinning = spins.max() ?? 0
        let idleAgain = try workerCPU(afterKickWithBusyloop: 0)
        say("  worker CPU after a kick of the empty TX ring: \(idle / 1_000_000) ms without busyloop, \(spins.map { "\($0 / 1_000_000)" }.joined(separator: ", ")) ms with 200 ms (kick by kick), \(idleAgain / 1_000_000) ms without again")
        try expect(spinning >= 10_000_000, "with a 200 ms busyloop the worker ran at most \(spinning / 1_000_000) ms after each of \(spins.count) kicks")
        try expect(spinning > 5 * max(idle, idleAgain, 1_000_000), "busyloop changed nothing: \(idle / 1_000_000) ms, \(spinning / 1_000_000) ms, \(idleAgain / 1_000_000) ms")
    },
    KernelTest(name: "receive: buffers too small for a frame without MRG_RXBUF are refused before any ioctl") {
        do {
            _ = try pair("vht-small") { $0.bufferSize = 512 }
            throw KernelTestFailure("512-byte RX buffers without MRG_RXBUF were accepted")
        } catch let error as VhostError {
            try expect(error.description.contains("truncates and discards"), "unexpected error: \(error)")
            try expect(!Tap.exists(name: "vht-small"), "the tap was left behind")
        }
    },
    KernelTest(name: "receive: frames bigger than the RX buffers (tap MTU) are refused or reported, never silently lost") {
        let jumbo = EthernetFrame.build(destination: .broadcast, source: MACAddress(0x52, 0x54, 0, 0, 0, 1), etherType: EthernetFrame.experimentalType,
                                        payload: (0..<9000).map { UInt8(truncatingIfNeeded: $0 &* 11) })
        do { // a persistent tap with MTU 9000, as a host set up for jumbo frames has
            let tap = try Tap(name: "vht-mtu")
            try tap.setPersistent(true)
            try tap.setMTU(9000)
        }
        defer { if let tap = try? Tap(name: "vht-mtu") { try? tap.setPersistent(false) } }
        do {
            _ = try pair("vht-mtu")
            throw KernelTestFailure("2048-byte RX buffers without MRG_RXBUF were accepted on a tap with MTU 9000")
        } catch let error as VhostError {
            try expect(error.description.contains("MTU 9000") && error.description.contains("MRG_RXBUF"), "unclear error: \(error)")
            say("  refused at start: \(error)")
        }
        // With MRG_RXBUF the same tap's 9014-byte frames arrive whole.
        do {
            let merged = try pair("vht-mtu") { $0.features = [.version1, .eventIndex, .netMergeableRxBuffers] }
            let socket = try PacketSocket(interfaceIndex: try merged.tap.interfaceIndex())
            try socket.send(jumbo)
            var got: [UInt8]? = nil
            let deadline = ContinuousClock.now + .seconds(5)
            while got == nil && ContinuousClock.now < deadline {
                try merged.receive(milliseconds: 500) { f in if f.frame.count > 1514 { got = [UInt8](f.frame) } }
            }
            try expect(got == jumbo, "the 9014-byte frame did not arrive whole with MRG_RXBUF (\(got?.count ?? 0) bytes)")
        }
        // A tap whose MTU is raised after start: the risk is reported, and the kernel does drop
        // such a frame without any sign in the ring, which is why it must be reported.
        let p = try pair("vht-mtu2")
        try expect(p.receiveTruncationRisk() == nil, "a risk reported at MTU 1500")
        try p.tap.setMTU(9000)
        let risk = p.receiveTruncationRisk()
        try expect(risk?.contains("MTU 9000") == true, "no risk reported after raising the MTU")
        let socket = try PacketSocket(interfaceIndex: try p.tap.interfaceIndex())
        try socket.send(jumbo)
        try socket.send(TestFrame.bytes(7))
        var big = 0, small = 0
        let deadline = ContinuousClock.now + .seconds(2)
        while small == 0 && ContinuousClock.now < deadline {
            try p.receive(milliseconds: 200) { f in
                if f.frame.count > 1514 { big += 1 } else if [UInt8](f.frame) == TestFrame.bytes(7) { small += 1 }
            }
        }
        try expect(big == 0 && small == 1, "expected the jumbo frame discarded and the next one delivered (big \(big), small \(small))")
        say("  after raising the MTU: reported (\(risk!.prefix(60))…); the kernel discarded the jumbo frame, the next frame arrived")
    },
    KernelTest(name: "offloads: 64 KiB TSO frames (TCPv4, TCPv6) arrive whole on the host side") {
        let p = try pair("vht-tso") { $0.bufferSize = 65536 + 1024; $0.queueSize = 64 }
        // The host side reads each frame with the virtio_net_hdr the stack kept (PACKET_VNET_HDR):
        // the GSO type and size it saw, not what we meant to send.
        let socket = try PacketSocket(interfaceIndex: try p.tap.interfaceIndex())
        try socket.enableVnetHeader()
        socket.setBuffers(bytes: 16 << 20)
        for ipv6 in [false, true] {
            let payload = ipv6 ? 65000 : 64000
            let (frame, header) = OffloadFrame.tcp(ipv6: ipv6, payload: payload, seed: ipv6 ? 6 : 4)
            let bytesBefore = try statistic(p.tap.name, "rx_bytes")
            try p.transmit(count: 1, header: header) { _, buffer in buffer.copyBytes(from: frame); return frame.count }
            var seen: (VirtioNetHeader, [UInt8])? = nil
            let deadline = ContinuousClock.now + .seconds(5)
            while seen == nil && ContinuousClock.now < deadline {
                if let f = socket.receive(milliseconds: 500, capacity: 70_000), f.count > 60_000 {
                    seen = (VirtioNetHeader(bytes: Array(f.prefix(10))), Array(f.dropFirst(10)))
                }
            }
            guard let (hostHeader, bytes) = seen else { throw KernelTestFailure("no \(ipv6 ? "TCPv6" : "TCPv4") frame over 60,000 bytes reached the host side") }
            try expect(bytes.count == frame.count, "the host saw \(bytes.count) bytes, sent \(frame.count)")
            try expect(Array(bytes[54...]) == Array(frame[54...]), "the TSO payload differs")
            let expectedType = (ipv6 ? VirtioNetHeader.GSOType.tcpV6 : .tcpV4).rawValue
            try expect(hostHeader.gsoType & ~VirtioNetHeader.gsoECN == expectedType && hostHeader.gsoSize == 1448,
                       "the host stack saw gso_type \(hostHeader.gsoType), gso_size \(hostHeader.gsoSize); sent \(expectedType), 1448")
            let counted = try statistic(p.tap.name, "rx_bytes") - bytesBefore
            try expect(counted == UInt64(frame.count), "the tap counted \(counted) bytes for a \(frame.count)-byte frame")
            say("  \(ipv6 ? "TCPv6" : "TCPv4"): one \(bytes.count)-byte frame on the host side, gso_type \(hostHeader.gsoType), gso_size \(hostHeader.gsoSize); tap rx_bytes +\(counted)")
        }
    },
    KernelTest(name: "offloads: a 64 KiB GSO frame from the host arrives as one frame with its GSO header (MRG_RXBUF, TUNSETOFFLOAD)") {
        let p = try pair("vht-gro") {
            $0.features = [.version1, .eventIndex, .netMergeableRxBuffers]
            $0.receiveOffloads = [.checksum, .tso4, .tso6]
        }
        let (frame, header) = OffloadFrame.tcp(ipv6: false, payload: 60000, seed: 9)
        let (h, bytes) = try receiveGSOFrame(p, frame: frame, header: header)
        say("  one \(bytes.count)-byte frame in \(h.numBuffers) buffers; gso_type \(h.gsoType), gso_size \(h.gsoSize), flags \(h.flags.rawValue)")
        try expect(bytes.count == frame.count && Array(bytes[54...]) == Array(frame[54...]), "the frame differs (\(bytes.count) vs \(frame.count) bytes)")
        try expect(h.gsoType == VirtioNetHeader.GSOType.tcpV4.rawValue && h.gsoSize == 1448, "GSO header lost: \(h)")
        try expect(h.flags.contains(.needsChecksum), "NEEDS_CSUM lost: \(h)")
        try expect(h.numBuffers > 1, "a 60 KB frame should span several 2 KiB buffers")
    },
    KernelTest(name: "offloads: big RX buffers without MRG_RXBUF take a whole 64 KiB GSO frame in one buffer") {
        let p = try pair("vht-big") { $0.bufferSize = 65600; $0.queueSize = 16; $0.receiveOffloads = [.checksum, .tso4, .tso6] }
        let (frame, header) = OffloadFrame.tcp(ipv6: true, payload: 65000, seed: 3)
        let (h, bytes) = try receiveGSOFrame(p, frame: frame, header: header)
        say("  one \(bytes.count)-byte TCPv6 GSO frame in one buffer; gso_type \(h.gsoType), gso_size \(h.gsoSize)")
        try expect(bytes == frame, "the frame differs")
        try expect(h.gsoType == VirtioNetHeader.GSOType.tcpV6.rawValue && p.receiveCounters.mergedFrames == 0, "header \(h)")
    },
    KernelTest(name: "offloads: UDP L4 GSO (USO), probed through TUNSETOFFLOAD: carried whole with its GSO fields where the tap takes it, refused with a clear error where not") {
        // The kernel's own answer decides, not its version: tun's TUNSETOFFLOAD refuses flags it
        // does not know (EINVAL), and TUN_F_USO4 came with 6.2.
        let probe = try Tap(name: "vht-usoprobe")
        let probed = answer { try probe.setOffloads([.checksum, .uso4, .uso6]) }
        let tapTakesUSO = probed == "ok"
        say("  TUNSETOFFLOAD csum|uso4|uso6 on a fresh tap: \(probed)")
        try expect(probed == "ok" || probed == "EINVAL", "TUNSETOFFLOAD answered \(probed)")
        try expect(tapTakesUSO == KernelInfo.tapSupportsUDPSegmentation,
                   "the library says this kernel \(KernelInfo.tapSupportsUDPSegmentation ? "has" : "lacks") USO, the tap's TUNSETOFFLOAD says \(probed)")
        let p = try pair("vht-uso") { $0.bufferSize = 65536 + 1024; $0.queueSize = 16 }
        let socket = try PacketSocket(interfaceIndex: try p.tap.interfaceIndex())
        socket.setBuffers(bytes: 16 << 20)
        let payload = (0..<60000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let (frame, header) = udpOffloadFrame(destinationMAC: MACAddress(0x52, 0x54, 0, 0, 0, 1), source: IPv4Address(10, 0, 6, 2),
                                              destination: IPv4Address(10, 0, 6, 1), port: 9, payload: payload, gsoSize: 1400)
        let version = kernelVersion()
        do {
            try p.transmit(count: 1, header: header) { _, buffer in buffer.copyBytes(from: frame); return frame.count }
        } catch let error as VhostError {
            try expect(!tapTakesUSO && error.description.contains("6.2"), "kernel \(version): unexpected error \(error)")
            try expect(p.transmitCounters.frames == 0, "a refused frame was counted as sent")
            refusalChecked("kernel \(version.0).\(version.1) has no USO: refused before the ring: \(error)")
            // What the kernel itself does with such a frame, past the library's check: post()
            // puts it on the ring as it is. The used entry comes back, and nothing reaches the host.
            let counters = ["rx_packets", "rx_dropped", "rx_errors", "rx_frame_errors"]
            let before = try counters.map { try statistic(p.tap.name, $0) }
            let posted = try p.post(count: 1) { _, buffer in buffer.copyBytes(from: frame); return frame.count }
            try p.drainTransmit(milliseconds: 3000)
            var sizes: [Int] = []
            let until = ContinuousClock.now + .seconds(1)
            while ContinuousClock.now < until {
                if let f = socket.receive(milliseconds: 100, capacity: 70_000), f.count > 1_000 { sizes.append(f.count) }
            }
            let after = try counters.map { try statistic(p.tap.name, $0) }
            let deltas = zip(counters, zip(after, before)).map { "\($0) +\($1.0 - $1.1)" }.joined(separator: ", ")
            try expect(posted == 1 && p.transmitCounters.frames == 1, "the chain was not used")
            // 6.1 (docs/kernel-findings.md): tun takes the GSO frame as it is; the tap counts it and
            // a packet socket sees it whole, unsegmented.
            try expect(after[0] - before[0] == 1 && sizes == [frame.count],
                       "kernel \(version): expected the tap to count the frame once and a packet socket to see it whole (\(frame.count) bytes); saw frames of \(sizes) bytes; tap \(deltas)")
            say("  sent anyway (what 6.1 does past the library's check): the kernel used the chain; a packet socket on the tap saw frames of \(sizes) bytes; tap \(deltas)")
            return
        }
        try expect(tapTakesUSO, "kernel \(version): a USO frame was sent into a tap that refuses TUNSETOFFLOAD USO")
        // The host side reads the frame with the virtio_net_hdr the stack kept (PACKET_VNET_HDR):
        // the GSO type and size the kernel saw, not what we meant to send.
        try socket.enableVnetHeader()
        var seen: (header: VirtioNetHeader, frame: [UInt8])? = nil
        let deadline = ContinuousClock.now + .seconds(3)
        while seen == nil && ContinuousClock.now < deadline {
            if let f = socket.receive(milliseconds: 200, capacity: 70_000), f.count > 60_000 {
                seen = (VirtioNetHeader(bytes: Array(f.prefix(10))), Array(f.dropFirst(10)))
            }
        }
        try expect(seen?.frame == frame, "the USO frame did not arrive whole (\(seen?.frame.count ?? 0) bytes)")
        // VIRTIO_NET_HDR_GSO_UDP_L4 is 5 (linux/virtio_net.h).
        try expect(seen!.header.gsoType & 0x7f == 5 && seen!.header.gsoSize == 1400,
                   "the host stack kept gso_type \(seen!.header.gsoType), gso_size \(seen!.header.gsoSize), not UDP_L4 with 1400")
        say("  kernel \(version.0).\(version.1): one \(frame.count)-byte frame on the host side, gso_type UDP_L4, gso_size \(seen!.header.gsoSize)")
    },
    KernelTest(name: "offloads: TX checksum offload (NEEDS_CSUM) is completed: a host UDP socket gets the datagram; a bad full checksum is dropped") {
        let p = try pair("vht-csum")
        let host = IPv4Interface(parsing: "10.0.5.1/24")!
        try HostNetwork.setAddress(host, on: p.tap.name)
        let tapMAC = MACAddress(try p.tap.macAddress())!
        let listener = try HostSocket.udp()
        try listener.bind(host.address, port: 5555)
        let good = Array("checksum completed by the offload".utf8)
        let bad = Array("a datagram with a wrong checksum".utf8)
        let (badFrame, badHeader) = udpOffloadFrame(destinationMAC: tapMAC, source: IPv4Address(10, 0, 5, 2), destination: host.address,
                                                    port: 5555, payload: bad, fullChecksum: 0x1234)
        try p.transmit(count: 1, header: badHeader) { _, buffer in buffer.copyBytes(from: badFrame); return badFrame.count }
        let (frame, header) = udpOffloadFrame(destinationMAC: tapMAC, source: IPv4Address(10, 0, 5, 2), destination: host.address, port: 5555, payload: good)
        try p.transmit(count: 1, header: header) { _, buffer in buffer.copyBytes(from: frame); return frame.count }
        guard let got = listener.receive(milliseconds: 3000) else { throw KernelTestFailure("the host UDP socket received nothing") }
        try expect(got.bytes == good, "the host received \(String(decoding: got.bytes, as: UTF8.self)) first; the datagram with a bad checksum must be dropped")
    },
    KernelTest(name: "multiqueue: traffic on 4 queue pairs at once, with per-queue counts") {
        var config = VhostNetEndpoint.Configuration(tapName: "vht-mq")
        config.queues = 4
        let endpoint = try VhostNetEndpoint(config)
        let perQueue = 2_000
        let before = try statistic("vht-mq", "rx_packets")
        for p in endpoint.pairs { try p.transmit(count: perQueue) { i, buffer in TestFrame.write(i, into: buffer) } }
        let after = try statistic("vht-mq", "rx_packets")
        try expect(after - before == UInt64(4 * perQueue), "the tap counted \(after - before) frames, not \(4 * perQueue)")
        // RX: 64 flows from the host; the tap spreads them over its queues by flow hash.
        let socket = try PacketSocket(interfaceIndex: try endpoint.pairs[0].tap.interfaceIndex())
        let total = 512
        var seen = Set<Int>()
        var perQueueRX = [Int](repeating: 0, count: 4)
        var sent = 0
        while sent < total {
            for s in sent..<(sent + 64) { try socket.send(udpFlowFrame(sequence: s, sourcePort: UInt16(20000 + s % 64))) }
            sent += 64
            let deadline = ContinuousClock.now + .seconds(5)
            while seen.count < sent && ContinuousClock.now < deadline {
                for (q, p) in endpoint.pairs.enumerated() {
                    try p.receive(milliseconds: 0) { f in
                        let b = [UInt8](f.frame)
                        guard b.count == 14 + 20 + 8 + 64, b[23] == 17, b[36] == 0, b[37] == 9 else { return }
                        let sequence = Int(b[42]) << 8 | Int(b[43])
                        if b == udpFlowFrame(sequence: sequence, sourcePort: UInt16(20000 + sequence % 64)) {
                            seen.insert(sequence); perQueueRX[q] += 1
                        }
                    }
                }
            }
        }
        var bases: [UInt32] = []
        for p in endpoint.pairs { bases.append(try p.stop().transmitBase) }
        say("  TX per queue (kernel last_avail_idx): \(bases); RX per queue: \(perQueueRX)")
        try expect(bases.allSatisfy { $0 == UInt32(perQueue) }, "per-queue TX bases \(bases)")
        try expect(seen.count == total, "received \(seen.count) of \(total) frames")
        try expect(perQueueRX.allSatisfy { $0 > 0 }, "64 flows from the host did not reach every one of the 4 queues: \(perQueueRX)")
    },
    KernelTest(name: "memory: regions below and above 4 GiB with a hole, traffic in both (dirty log proves the kernel wrote each)") {
        let p = try pair("vht-hole") { $0.memoryPlacement = .belowAndAbove4GiB; $0.queueSize = 64 }
        let regions = p.memoryRegions
        try expect(regions.count == 2 && regions[1].guestAddress >= 0x1_0000_0000 && regions[0].guestAddress + regions[0].size < regions[1].guestAddress,
                   "layout \(regions.map { "\(hex($0.guestAddress.rawValue))+\(hex(UInt64($0.size)))" })")
        try p.enableDirtyLog()
        p.dirtyLog!.clear()
        try transmitAndCompare(p, frames: 300)
        try receiveAndCompare(p, frames: 128)
        let log = p.dirtyLog!
        let dirtyRX = p.receiveBufferAddresses.filter { log.isDirty(guestAddress: $0) }
        let low = dirtyRX.filter { $0 < 0x1_0000_0000 }.count, high = dirtyRX.count - low
        say("  regions \(regions.map { hex($0.guestAddress.rawValue) }); RX buffers written: \(low) below 4 GiB, \(high) above")
        try expect(low > 0 && high > 0, "RX traffic did not reach both regions (\(low) low, \(high) high)")
    },
    KernelTest(name: "memory: VHOST_F_LOG_ALL dirty log marks what the kernel wrote, not what it read") {
        let p = try pair("vht-log") { $0.queueSize = 64 }
        try p.enableDirtyLog()
        let log = p.dirtyLog!
        log.clear()
        try p.transmit(count: 256) { i, buffer in TestFrame.write(i, into: buffer) }
        let dirtyTX = p.transmitBufferAddresses.filter { log.isDirty(guestAddress: $0) }.count
        try expect(dirtyTX == 0, "\(dirtyTX) TX buffers (only read by the kernel) are marked dirty")
        try expect(log.dirtyPages > 0, "the TX used ring was written but nothing is marked")
        log.clear()
        try receiveAndCompare(p, frames: 64)
        let dirtyRX = p.receiveBufferAddresses.filter { log.isDirty(guestAddress: $0) }.count
        say("  after TX: no TX buffer dirty; after RX: \(dirtyRX) RX buffer pages dirty, \(log.dirtyPages) pages in all")
        try expect(dirtyRX > 0, "no RX buffer page is marked dirty")
    },
    KernelTest(name: "memory: hugepage backing (memfd MFD_HUGETLB), and a clear error when none are reserved") {
        let path = "/proc/sys/vm/nr_hugepages"
        let original = KernelInfo.readFile(path) ?? "0"
        defer { KernelInfo.writeFile(path, original) }
        KernelInfo.writeFile(path, "0")
        do {
            _ = try pair("vht-huge0") { $0.memoryBacking = .memfd(hugePages: true); $0.queueSize = 64 }
            throw KernelTestFailure("huge-page memory was mapped with no huge pages reserved")
        } catch let error as VhostError {
            say("  with none reserved: \(error)")
            try expect(error.description.contains("nr_hugepages") || error.description.contains("hugetlbfs"), "unclear error: \(error)")
        }
        KernelInfo.writeFile(path, "16")
        let reserved = Int((KernelInfo.readFile(path) ?? "0").filter(\.isNumber)) ?? 0
        try expect(reserved >= 2, "could not reserve huge pages (got \(reserved))")
        let p = try pair("vht-huge") { $0.memoryBacking = .memfd(hugePages: true); $0.queueSize = 64 }
        try transmitAndCompare(p, frames: 300)
        try receiveAndCompare(p, frames: 128)
    },
]

func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
