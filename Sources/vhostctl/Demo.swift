import ArgumentParser
import Glibc
import Vhost
import VhostNet
import Virtio

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The whole product in one command: create a tap, attach through vhost-net, check ARP, ping and UDP from the host stack, and run a short TX/RX benchmark.",
        discussion: "Needs root. Exits 0 when every check passed, 1 when one failed.")

    @OptionGroup var common: CommonOptions

    @Option(help: "Name of the tap to create (it must not exist).")
    var tap = "vhdemo0"

    @Option(name: .customLong("host-ip"), help: "The host side's address on the tap, with prefix.")
    var hostIP = "10.77.0.1/24"

    @Option(help: "The endpoint's address (same subnet).")
    var ip = "10.77.0.2"

    @Option(help: "Seconds for each benchmark direction.")
    var seconds = 1.0

    func validate() throws {
        guard let host = IPv4Interface(parsing: hostIP) else { throw ValidationError("--host-ip \(hostIP) is not an address with prefix, e.g. 10.77.0.1/24") }
        guard let me = IPv4Address(parsing: ip) else { throw ValidationError("--ip \(ip) is not an IPv4 address, e.g. 10.77.0.2") }
        guard me != host.address, me.value & host.netmask.value == host.address.value & host.netmask.value else {
            throw ValidationError("--ip \(ip) must be another address in \(hostIP)'s subnet")
        }
        do { try Tap.validate(name: tap) } catch { throw ValidationError("--tap: \(error)") }
        guard seconds > 0 && seconds <= 60 else { throw ValidationError("--seconds takes 0 to 60") }
    }

    func run() throws {
        try runReportingErrors {
            let passed = try demo()
            if !passed { throw ExitCode(ExitStatus.failure) }
        }
    }

    func step(_ text: String) { print(text); fflush(nil) }

    func demo() throws -> Bool {
        try requireNetworkAdministration("vhostctl demo")
        guard !Tap.exists(name: tap) else {
            throw VhostError.tap(name: tap, problem: .exists, reason: "already exists; pass --tap with a free name")
        }
        let host = IPv4Interface(parsing: hostIP)!
        let me = IPv4Address(parsing: ip)!
        let udpPort: UInt16 = 7
        step("vhostctl demo: this process is the virtio-net driver; the kernel's vhost-net worker moves the frames.")
        step("kernel \(KernelInfo.release())")

        var config = VhostNetEndpoint.Configuration(tapName: tap)
        config.ipv4 = IPv4Interface(address: me, prefixLength: host.prefixLength)
        config.udpEchoPort = udpPort
        config.datapath.observer = common.observer
        config.datapath.devicePath = common.device
        let endpoint = try VhostNetEndpoint(config, logger: common.makeLogger())
        let pair = endpoint.pairs[0]
        step("[1/6] created tap \(tap) and attached vhost-net: 1 queue pair of \(config.datapath.queueSize) descriptors")
        step("      kernel offers \(pair.offeredFeatures.featureNames.joined(separator: " ")); negotiated \(pair.negotiatedFeatures.featureNames.joined(separator: " "))")

        try HostNetwork.setAddress(host, on: tap)
        step("[2/6] host side \(host) on \(tap); the endpoint is \(me) with MAC \(config.mac)")

        var checks: [(String, Bool)] = []

        // ARP and ping: the host stack resolves the endpoint, then ICMP echo goes through vhost both ways.
        let icmp = try HostSocket.icmp()
        var rtts: [Double] = []
        let pings = 5
        for sequence in 0..<pings {
            let request = echoRequest(identifier: 0x5648, sequence: UInt16(sequence))
            let sent = monotonicSeconds()
            try icmp.send(request, to: me)
            let deadline = sent + 3
            while monotonicSeconds() < deadline {
                try endpoint.service(milliseconds: 5, extraFDs: [icmp.fd])
                if let reply = icmp.receive(milliseconds: 0), reply.from == me, isEchoReply(reply.bytes, sequence: UInt16(sequence)) {
                    rtts.append((monotonicSeconds() - sent) * 1000)
                    break
                }
            }
        }
        let neighbour = HostNetwork.neighbour(me)
        let arpOK = neighbour == config.mac
        step("[3/6] ARP: the host resolved \(me) to \(neighbour?.description ?? "nothing") \(arpOK ? "✓" : "✗ (expected \(config.mac))")")
        checks.append(("ARP", arpOK))
        let pingOK = rtts.count == pings
        let rttText = rtts.isEmpty ? "" : ", rtt min/avg/max \(ms(rtts.min()!))/\(ms(rtts.reduce(0, +) / Double(rtts.count)))/\(ms(rtts.max()!)) ms"
        step("[4/6] ping \(me): \(rtts.count)/\(pings) replies\(rttText) \(pingOK ? "✓" : "✗")")
        checks.append(("ping", pingOK))

        // UDP echo.
        let udp = try HostSocket.udp()
        let message = Array("hello through vhost-net".utf8)
        try udp.send(message, to: me, port: udpPort)
        var echoed: [UInt8]? = nil
        let udpDeadline = monotonicSeconds() + 3
        while echoed == nil && monotonicSeconds() < udpDeadline {
            try endpoint.service(milliseconds: 5, extraFDs: [udp.fd])
            if let reply = udp.receive(milliseconds: 0), reply.from == me { echoed = reply.bytes }
        }
        let udpOK = echoed == message
        step("[5/6] UDP echo on port \(udpPort): \(udpOK ? "\"\(String(decoding: message, as: UTF8.self))\" came back ✓" : "no echo ✗")")
        checks.append(("UDP echo", udpOK))

        // A short benchmark in both directions, 64-byte frames.
        step("[6/6] benchmark, 64-byte frames, \(seconds) s each (under emulation compare only within one run):")
        let tx = try benchmarkTransmit(pair)
        step("      TX (driver → vhost → tap):  \(tx.pps) frames/s; \(tx.frames) frames counted by the tap, \(tx.kicks) kicks")
        checks.append(("TX counted", tx.frames == tx.sent))
        let rx = try benchmarkReceive(endpoint)
        step("      RX (host → tap → vhost → driver): \(rx.pps) frames/s; \(rx.frames) of \(rx.sent) frames received")
        checks.append(("RX received", rx.frames == rx.sent))

        try endpoint.stop()
        let failed = checks.filter { !$0.1 }.map(\.0)
        if failed.isEmpty {
            step("summary: all \(checks.count) checks passed — ARP, ping and UDP went host stack → tap → vhost-net → this driver and back; the tap \(tap) is removed on exit.")
        } else {
            step("summary: \(failed.count) of \(checks.count) checks FAILED: \(failed.joined(separator: ", ")).")
        }
        return failed.isEmpty
    }

    struct Throughput { var sent: UInt64; var frames: UInt64; var pps: Int; var kicks: UInt64 }

    func benchmarkTransmit(_ pair: VhostNetQueuePair) throws -> Throughput {
        let before = KernelInfo.interfaceStatistic(tap, "rx_packets") ?? 0
        let kicksBefore = pair.transmitCounters.kicks
        let frame = EthernetFrame.build(destination: .broadcast, source: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56),
                                        etherType: EthernetFrame.experimentalType, payload: [UInt8](repeating: 0x5a, count: 50))
        var sent: UInt64 = 0
        let start = monotonicSeconds()
        while monotonicSeconds() - start < seconds {
            try pair.transmit(count: 4096) { _, buffer in
                buffer.copyBytes(from: frame)
                return frame.count
            }
            sent += 4096
        }
        let elapsed = monotonicSeconds() - start
        let counted = (KernelInfo.interfaceStatistic(tap, "rx_packets") ?? 0) - before
        return Throughput(sent: sent, frames: counted, pps: Int(Double(counted) / elapsed), kicks: pair.transmitCounters.kicks - kicksBefore)
    }

    func benchmarkReceive(_ endpoint: VhostNetEndpoint) throws -> Throughput {
        let pair = endpoint.pairs[0]
        let socket = try PacketSocket(interfaceIndex: try pair.tap.interfaceIndex())
        let frame = EthernetFrame.build(destination: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56), source: MACAddress(0x52, 0x54, 0, 0, 0, 1),
                                        etherType: EthernetFrame.experimentalType, payload: [UInt8](repeating: 0xa5, count: 50))
        var sent: UInt64 = 0, received: UInt64 = 0
        let batch = 128
        let start = monotonicSeconds()
        while monotonicSeconds() - start < seconds {
            for _ in 0..<batch { try socket.send(frame) }
            sent += UInt64(batch)
            let deadline = monotonicSeconds() + 2
            while received < sent && monotonicSeconds() < deadline {
                pair.receive(milliseconds: 100) { f in
                    if EthernetFrame.etherType(of: f.frame) == EthernetFrame.experimentalType { received += 1 }
                }
            }
        }
        let elapsed = monotonicSeconds() - start
        return Throughput(sent: sent, frames: received, pps: Int(Double(received) / elapsed), kicks: 0)
    }

    func echoRequest(identifier: UInt16, sequence: UInt16) -> [UInt8] {
        var packet: [UInt8] = [8, 0, 0, 0, UInt8(identifier >> 8), UInt8(identifier & 0xff), UInt8(sequence >> 8), UInt8(sequence & 0xff)]
        packet += Array("swift-vhost ping".utf8)
        let sum = internetChecksum(packet[...])
        packet[2] = UInt8(sum >> 8); packet[3] = UInt8(sum & 0xff)
        return packet
    }

    /// A raw ICMP socket delivers the IP header too.
    func isEchoReply(_ bytes: [UInt8], sequence: UInt16) -> Bool {
        guard bytes.count >= 28 else { return false }
        let icmp = Int(bytes[0] & 0x0f) * 4
        guard bytes.count >= icmp + 8 else { return false }
        return bytes[icmp] == 0 && UInt16(bytes[icmp + 6]) << 8 | UInt16(bytes[icmp + 7]) == sequence
    }

    func ms(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        return "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100)"
    }
}
