import ArgumentParser
import Glibc
import Vhost
import DatapathMeasure
import VhostNet
import HostNetwork
import NetFormats
import Virtio

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The whole product in one command: create a tap, attach through vhost-net, check ARP, ping and UDP from the host stack, and run a short TX/RX benchmark.",
        discussion: "Needs root. Exits 0 when every check passed, 1 when one failed.")

    @OptionGroup var common: CommonOptions
    @OptionGroup var recording: RecordOptions

    @Option(help: "Name of the tap to create (it must not exist).")
    var tap = "vhdemo0"

    @Option(name: .customLong("host-ip"), help: "The host side's address on the tap, with prefix.")
    var hostIP = "10.77.0.1/24"

    @Option(help: "The endpoint's IPv4 address, in --host-ip's subnet; a prefix, as attach --ip takes, must be --host-ip's.")
    var ip = "10.77.0.2/24"

    /// --ip's address: with or without a prefix.
    var endpointAddress: IPv4Address? { IPv4Interface(parsing: ip)?.address ?? IPv4Address(parsing: ip) }

    @Option(help: "Seconds for each benchmark direction.")
    var seconds = 1.0

    func validate() throws {
        guard let host = IPv4Interface(parsing: hostIP) else { throw ValidationError("--host-ip \(hostIP) is not an address with prefix, e.g. 10.77.0.1/24") }
        guard let me = endpointAddress else { throw ValidationError("--ip \(ip) is not an IPv4 address, e.g. 10.77.0.2/24") }
        if let prefix = IPv4Interface(parsing: ip)?.prefixLength, prefix != host.prefixLength {
            throw ValidationError("--ip \(ip): the prefix must be --host-ip's (/\(host.prefixLength)), or leave it out")
        }
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

    /// `demo --json` (docs/json.md): the checks and the measurements, one object.
    struct Report: Encodable {
        struct Check: Encodable { var name: String; var passed: Bool }
        struct RoundTrips: Encodable { var min: Double; var avg: Double; var max: Double }
        struct Rate: Encodable { var framesPerSecond: Double; var sent: UInt64; var counted: UInt64 }
        var kernel: String
        var tap: String
        var negotiatedFeatures: [String]
        var pingsSent: Int
        var pingReplies: Int
        var rttMs: RoundTrips?
        var tx: Rate
        var rx: Rate
        var checks: [Check]
        var passed: Bool
    }

    func demo() throws -> Bool {
        try requireNetworkAdministration("vhostctl demo")
        let data = DataOutput(json: common.json)
        try requireFreeTapName(tap)
        let recordFile = try recording.openFile()
        let recorder = recording.makeRecorder()
        defer { recording.save(recorder, to: recordFile, command: "demo") }
        let host = IPv4Interface(parsing: hostIP)!
        let me = endpointAddress!
        let udpPort: UInt16 = 7
        step("vhostctl demo: this process is the virtio-net driver; the kernel's vhost-net worker moves the frames.")
        step("kernel \(KernelInfo.release())")

        var config = VhostNetEndpoint.Configuration(tapName: tap)
        config.datapath.exclusiveTapCreation = true  // the name was free above; one made meanwhile is refused
        config.ipv4 = IPv4Interface(address: me, prefixLength: host.prefixLength)
        config.udpEchoPort = udpPort
        config.datapath.observer = RecordOptions.observer(common, recorder)
        config.datapath.ringObserver = recorder?.ringObserver
        config.datapath.devicePath = common.device
        let endpoint = try VhostNetEndpoint(config, logger: common.makeLogger())
        let pair = endpoint.pairs[0]
        step("[1/6] created tap \(tap) and attached vhost-net: 1 queue pair of \(config.datapath.queueSize) descriptors")
        step("      kernel offers \(pair.offeredFeatures.featureNames.joined(separator: " ")); negotiated \(pair.negotiatedFeatures.featureNames.joined(separator: " "))")

        try HostNetwork.setAddress(host, on: tap, observer: common.observer)
        step("[2/6] host side \(host) on \(tap); the endpoint is \(me) with MAC \(config.mac)")

        var checks: [(String, Bool)] = []

        // ARP and ping: the host stack resolves the endpoint, then ICMP echo goes through vhost both ways.
        let icmp = try HostSocket.icmp()
        var rtts: [Double] = []
        let pings = 5
        for sequence in 0..<pings {
            let request = ICMPEcho.request(identifier: 0x5648, sequence: UInt16(sequence), payload: Array("swift-vhost ping".utf8))
            let sent = ContinuousClock.now
            try icmp.send(request, to: me)
            let deadline = sent + .seconds(3)
            while ContinuousClock.now < deadline {
                try endpoint.service(milliseconds: 5, extraFDs: [icmp.fd])
                if let reply = icmp.receive(milliseconds: 0), reply.from == me, isEchoReply(reply.bytes, sequence: UInt16(sequence)) {
                    rtts.append(sent.duration(to: .now).inSeconds * 1000)
                    break
                }
            }
        }
        let neighbour = HostNetwork.neighbour(me)
        let arpOK = neighbour == config.mac
        step("[3/6] ARP: the host resolved \(me) to \(neighbour?.description ?? "nothing") \(arpOK ? "✓" : "✗ (expected \(config.mac))")")
        checks.append(("ARP", arpOK))
        let pingOK = pings > 0 && rtts.count == pings
        let rttText = rtts.isEmpty ? "" : ", rtt min/avg/max \(ms(rtts.min()!))/\(ms(rtts.reduce(0, +) / Double(rtts.count)))/\(ms(rtts.max()!)) ms"
        step("[4/6] ping \(me): \(rtts.count)/\(pings) replies\(rttText) \(pingOK ? "✓" : "✗")")
        checks.append(("ping", pingOK))

        // UDP echo.
        let udp = try HostSocket.udp()
        let message = Array("hello through vhost-net".utf8)
        try udp.send(message, to: me, port: udpPort)
        var echoed: [UInt8]? = nil
        let udpDeadline = ContinuousClock.now + .seconds(3)
        while echoed == nil && ContinuousClock.now < udpDeadline {
            try endpoint.service(milliseconds: 5, extraFDs: [udp.fd])
            if let reply = udp.receive(milliseconds: 0), reply.from == me { echoed = reply.bytes }
        }
        let udpOK = echoed == message
        step("[5/6] UDP echo on port \(udpPort): \(udpOK ? "\"\(String(decoding: message, as: UTF8.self))\" came back ✓" : "no echo ✗")")
        checks.append(("UDP echo", udpOK))

        // A short benchmark in both directions, 64-byte frames.
        step("[6/6] benchmark, 64-byte frames, \(seconds) s each (under emulation compare only within one run):")
        let txFrame = EthernetFrame.build(destination: .broadcast, source: config.mac,
                                          etherType: EthernetFrame.experimentalType, payload: [UInt8](repeating: 0x5a, count: 50))
        let tx = try DatapathRate.transmit(pair, frame: txFrame, seconds: seconds, chunk: 4096)
        step("      TX (driver → vhost → tap):  \(Int(tx.framesPerSecond)) frames/s; \(tx.counted) frames counted by the tap, \(tx.kicks) kicks")
        // At least one frame each way, or "every frame counted" would hold for none.
        checks.append(("TX counted", tx.sent > 0 && tx.counted == tx.sent))
        let rxFrame = EthernetFrame.build(destination: config.mac, source: MACAddress(0x52, 0x54, 0, 0, 0, 1),
                                          etherType: EthernetFrame.experimentalType, payload: [UInt8](repeating: 0xa5, count: 50))
        let rx = try DatapathRate.receive(pair, frame: rxFrame, seconds: seconds, burst: 128, burstWait: 2)
        step("      RX (host → tap → vhost → driver): \(Int(rx.framesPerSecond)) frames/s; \(rx.counted) of \(rx.sent) frames received")
        checks.append(("RX received", rx.sent > 0 && rx.counted == rx.sent))

        try endpoint.stop()
        let failed = checks.filter { !$0.1 }.map(\.0)
        if failed.isEmpty {
            step("summary: all \(checks.count) checks passed — ARP, ping and UDP went host stack → tap → vhost-net → this driver and back; the tap \(tap) is removed on exit.")
        } else {
            step("summary: \(failed.count) of \(checks.count) checks FAILED: \(failed.joined(separator: ", ")).")
        }
        if data.json {
            let rtt = rtts.isEmpty ? nil : Report.RoundTrips(min: rtts.min()!, avg: rtts.reduce(0, +) / Double(rtts.count), max: rtts.max()!)
            try data.emit(Report(kernel: KernelInfo.release(), tap: tap, negotiatedFeatures: pair.negotiatedFeatures.featureNames,
                                 pingsSent: pings, pingReplies: rtts.count, rttMs: rtt,
                                 tx: .init(framesPerSecond: tx.framesPerSecond, sent: UInt64(tx.sent), counted: UInt64(tx.counted)),
                                 rx: .init(framesPerSecond: rx.framesPerSecond, sent: UInt64(rx.sent), counted: UInt64(rx.counted)),
                                 checks: checks.map { Report.Check(name: $0.0, passed: $0.1) }, passed: failed.isEmpty))
        }
        return failed.isEmpty
    }

    /// A raw ICMP socket delivers the IP header too.
    func isEchoReply(_ bytes: [UInt8], sequence: UInt16) -> Bool {
        guard bytes.count >= 28 else { return false }
        return ICMPEcho.reply(in: bytes[(Int(bytes[0] & 0x0f) * 4)...])?.sequence == sequence
    }

    func ms(_ value: Double) -> String { fixed(value, places: 2) }
}
