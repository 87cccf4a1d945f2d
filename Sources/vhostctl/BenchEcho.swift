import ArgumentParser
import Glibc
import Synchronization
import Vhost
import DatapathMeasure
import VhostNet
import HostNetwork
import NetFormats
import Virtio

/// `vhostctl bench echo`: attach as a UDP echo server under a fixed offered load, and count the
/// replies on the tap, for each reply path in turn (interleaved trials, one run, one boot).
struct BenchEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo",
        abstract: "Attach as a UDP echo server under a fixed offered load and count the replies on the tap: the burst reply path against the single one (the path before batching), in one run.",
        discussion: """
        Each trial creates a tap, attaches an endpoint (10.79.0.2, echoing UDP port 9) with one \
        reply path, and offers --rate requests per second of --frame-size bytes for --seconds: \
        from pktgen (ratep) when its module is loaded, else from a packet socket paced by a \
        thread (--source). Replies are what the tap counts coming from vhost (rx_packets); \
        requests are what the endpoint received. Trials of the paths are interleaved, so drift \
        hits them alike; the ratio of each path's median replies per second to the single \
        path's is valid within the run. Needs root.
        """)

    @OptionGroup var common: CommonOptions
    @OptionGroup var output: OutputOptions

    @Option(help: "Tap to create for the run (it must not exist).")
    var tap = "vhecho0"

    @Option(name: .customLong("reply-path"), help: "Reply paths to compare, comma-separated (burst, single); ratios are to single.",
            completion: .list(["single", "burst"]))
    var replyPaths = SweepList<ReplyPath>([.single, .burst])

    @Option(help: "Offered requests per second.")
    var rate = 20_000

    @Option(name: .customLong("frame-size"), help: "Request frame size in bytes (60 to 1514; pktgen counts the 4-byte CRC in it).")
    var frameSize = 64

    @Option(help: "Seconds per measurement.")
    var seconds = 2.0

    @Option(help: "Seconds of load before each measurement starts.")
    var warmup = 0.5

    @Option(help: "Interleaved trials per reply path (the median is reported).")
    var trials = 5

    @Option(help: "Where requests come from: pktgen (kernel, ratep), socket (a paced packet socket), or auto (pktgen when loaded).",
            completion: .list(["auto", "pktgen", "socket"]))
    var source = "auto"

    @Option(name: .customLong("worker-cpu"), help: "Pin the vhost worker to this CPU.", completion: CompletionHints.cpus)
    var workerCPU: Int?

    @Option(name: .customLong("driver-cpu"), help: "Pin the endpoint's thread to this CPU.", completion: CompletionHints.cpus)
    var driverCPU: Int?

    @Option(name: .customLong("json-file"), help: ArgumentHelp("Also write the results as JSON to this file (the --json schema).", valueName: "file"),
            completion: .file(extensions: ["json"]))
    var jsonFile: String?

    var paths: [ReplyPath] { replyPaths.values }

    func validate() throws {
        guard (1...10_000_000).contains(rate) else { throw ValidationError("--rate takes 1 to 10000000 requests per second") }
        guard (60...1514).contains(frameSize) else { throw ValidationError("--frame-size \(frameSize): use 60 to 1514") }
        guard seconds > 0 && seconds <= 60, warmup >= 0 && warmup <= 60 else { throw ValidationError("--seconds takes more than 0 and at most 60, --warmup 0 to 60") }
        guard (1...99).contains(trials) else { throw ValidationError("--trials takes 1 to 99") }
        guard ["auto", "pktgen", "socket"].contains(source) else { throw ValidationError("--source takes pktgen, socket or auto") }
        do { try Tap.validate(name: tap) } catch { throw ValidationError("--tap: \(error)") }
        if let jsonFile { try output.check(jsonFile, option: "--json-file") }
    }

    func run() throws {
        try runReportingErrors { try bench() }
    }

    struct Trial: Encodable {
        var replyPath: String
        var offeredPerSecond: Int
        var sent: UInt64
        var requestsReceived: UInt64
        var repliesCountedByTap: UInt64
        var repliesPerSecond: Double
        var driverNsPerReply: Double?
        var workerNsPerReply: Double?
        var transmitPublishes: UInt64
    }

    struct Report: Encodable {
        struct Path: Encodable {
            var replyPath: String
            var repliesPerSecondMedian: Double
            var ratioToSingle: Double?
            var trials: [Trial]
        }
        var kernel: String
        var source: String
        var rate: Int
        var frameSize: Int
        var seconds: Double
        var paths: [Path]
    }

    func bench() throws {
        try requireNetworkAdministration("vhostctl bench echo")
        let data = DataOutput(json: common.json)
        try requireFreeTapName(tap)
        if let driverCPU { try CurrentThread.pin(to: driverCPU) }
        let usePktgen = source == "pktgen" || (source == "auto" && PacketGenerator.isAvailable)
        if source == "pktgen" && !PacketGenerator.isAvailable {
            throw CLIError(message: "pktgen is not loaded (/proc/net/pktgen/pgctrl): modprobe pktgen, or use --source socket", status: ExitStatus.unavailable)
        }
        print("vhostctl bench echo: \(rate) requests/s of \(frameSize) bytes from \(usePktgen ? "pktgen" : "a paced packet socket"), \(trials) interleaved trials of \(seconds) s per reply path, kernel \(KernelInfo.release())")
        var results = [[Trial]](repeating: [], count: paths.count)
        for trial in 1...trials {
            for (i, path) in paths.enumerated() {
                results[i].append(try measure(path, pktgen: usePktgen))
                let t = results[i].last!
                print("  trial \(trial) \(path): \(t.requestsReceived) requests received, \(t.repliesCountedByTap) replies counted by the tap, \(Int(t.repliesPerSecond)) replies/s, \(t.transmitPublishes) TX publishes")
                fflush(nil)
            }
        }
        let medians = results.map { Bench.median($0.map(\.repliesPerSecond)) }
        let single = paths.firstIndex(of: .single).map { medians[$0] }
        print("reply path  replies/s (median)  ratio to single")
        var report = Report(kernel: KernelInfo.release(), source: usePktgen ? "pktgen" : "socket", rate: rate, frameSize: frameSize, seconds: seconds, paths: [])
        for (i, path) in paths.enumerated() {
            let ratio = single.flatMap { $0 > 0 ? medians[i] / $0 : nil }
            print("\(path.rawValue.padding(12))\(String(Int(medians[i])).padding(20))\(ratio.map { String(format3($0)) } ?? "-")")
            report.paths.append(.init(replyPath: path.rawValue, repliesPerSecondMedian: medians[i], ratioToSingle: ratio, trials: results[i]))
        }
        if let jsonFile { try output.write(try JSONOutput.text(report) + "\n", to: jsonFile, option: "--json-file") }
        if data.json { try data.emit(report) }
    }

    func format3(_ value: Double) -> String {
        let scaled = Int((value * 1000).rounded())
        return "\(scaled / 1000).\(String(scaled % 1000).leftPadded(3))"
    }

    /// One trial: an endpoint with `path` under the offered load.
    func measure(_ path: ReplyPath, pktgen: Bool) throws -> Trial {
        var config = VhostNetEndpoint.Configuration(tapName: tap)
        config.datapath.exclusiveTapCreation = true  // the name was free at start; one made meanwhile is refused
        config.ipv4 = IPv4Interface(address: IPv4Address(10, 79, 0, 2), prefixLength: 24)
        config.udpEchoPort = 9
        config.replyPath = path
        config.datapath.devicePath = common.device
        let endpoint = try VhostNetEndpoint(config, logger: common.makeLogger())
        let workers = VhostWorkerThread.findAll()
        if let workerCPU { for worker in workers { try worker.pin(to: workerCPU) } }
        let load = try Load(tap: tap, pktgen: pktgen, frameSize: frameSize, destination: config.mac, rate: rate)
        try load.start()
        let warmupEnd = ContinuousClock.now + .clampedSeconds(warmup)
        while ContinuousClock.now < warmupEnd { try endpoint.service(milliseconds: 5) }
        let repliesBefore = KernelInfo.interfaceStatistic(tap, "rx_packets") ?? 0
        let requestsBefore = endpoint.receiveCounters.frames
        let txBefore = endpoint.transmitCounters
        let sentBefore = load.sent
        let meter = CPUCost.Meter(workers: workers)
        let start = ContinuousClock.now
        while start.duration(to: .now).inSeconds < seconds { try endpoint.service(milliseconds: 5) }
        let elapsed = start.duration(to: .now).inSeconds
        let cost = meter.read()
        let replies = (KernelInfo.interfaceStatistic(tap, "rx_packets") ?? 0) &- repliesBefore
        let requests = endpoint.receiveCounters.frames &- requestsBefore
        let txAfter = endpoint.transmitCounters
        let sent = load.sent &- sentBefore
        load.stop()
        try endpoint.stop()
        return Trial(replyPath: path.rawValue, offeredPerSecond: rate, sent: sent, requestsReceived: requests, repliesCountedByTap: replies,
                     repliesPerSecond: Double(replies) / elapsed,
                     driverNsPerReply: replies > 0 ? Double(cost.driverNanoseconds) / Double(replies) : nil,
                     workerNsPerReply: replies > 0 ? cost.workerNanoseconds.map { Double($0) / Double(replies) } : nil,
                     transmitPublishes: (txAfter.kicks + txAfter.suppressedKicks) &- (txBefore.kicks + txBefore.suppressedKicks))
    }

    /// The offered load: pktgen at `ratep`, or a thread sending through a packet socket on the
    /// tap at the same rate (a burst every millisecond).
    final class Load {
        let generator: PacketGenerator?
        let tap: String
        let frame: [UInt8]
        let rate: Int
        /// What the sending thread shares with the measuring one.
        final class Shared: Sendable {
            let stopping = Atomic<Bool>(false)
            let count = Atomic<UInt64>(0)
        }
        private let shared = Shared()
        private var thread: WorkerThread?

        init(tap: String, pktgen: Bool, frameSize: Int, destination: MACAddress, rate: Int) throws {
            self.tap = tap
            self.rate = rate
            generator = pktgen ? try PacketGenerator(device: tap, frameSize: frameSize, destination: destination, packetsPerSecond: rate) : nil
            let hostMAC = MACAddress(try NetworkInterface(name: tap).hardwareAddress()) ?? MACAddress(2, 0, 0, 0, 0, 1)
            let payload = [UInt8](repeating: 0x5a, count: max(0, frameSize - 4 - 14 - 20 - 8))
            let udp = UDPDatagram.build(source: IPv4Address(10, 79, 0, 1), destination: IPv4Address(10, 79, 0, 2), sourcePort: 9, destinationPort: 9, payload: payload[...])
            frame = IPv4Packet.frame(destinationMAC: destination, sourceMAC: hostMAC, source: IPv4Address(10, 79, 0, 1), destination: IPv4Address(10, 79, 0, 2),
                                     protocolNumber: 17, payload: udp)
        }

        var sent: UInt64 { generator.map { $0.sent ?? 0 } ?? shared.count.load(ordering: .relaxed) }

        func start() throws {
            if let generator { try generator.start(); return }
            let index = try NetworkInterface(name: tap).index()
            let frame = self.frame, rate = self.rate
            let shared = self.shared
            thread = WorkerThread {
                guard let socket = try? PacketSocket(interfaceIndex: index) else { return }
                socket.setBuffers(bytes: 8 << 20)
                let start = ContinuousClock.now
                var sent: UInt64 = 0
                while !shared.stopping.load(ordering: .relaxed) {
                    let due = UInt64(start.duration(to: .now).inSeconds * Double(rate))
                    while sent < due { if (try? socket.send(frame)) != nil { sent += 1 } else { break } }
                    shared.count.store(sent, ordering: .relaxed)
                    usleep(1000)
                }
            }
        }

        func stop() {
            generator?.stop()
            shared.stopping.store(true, ordering: .relaxed)
            thread?.join()
            thread = nil
        }
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}
