import Glibc
import NetFormats
import Vhost
import VhostNet

/// Per-queue statistics with rates since the previous snapshot taken by the same sampler
/// (`attach --stats` has one, the control socket another, so neither skews the other's rates).
struct StatisticsSampler {
    private var previous: (time: ContinuousClock.Instant, queues: [QueuePairStatistics])?

    /// Each queue pair's counters and rates, the tap's counters (nil when the interface has none),
    /// and the seconds the rates are over (nil for the first sample, which has no rates).
    mutating func sample<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(_ endpoint: VirtioNetEndpoint<B, P>)
        -> (queues: [AttachEvent.QueuePair], tap: TapStatistics?, seconds: Double?) {
        let now = ContinuousClock.now
        let queues = endpoint.queuePairStatistics
        let seconds = previous.map { $0.time.duration(to: now).inSeconds } ?? 0
        let result = queues.map { queue in
            AttachEvent.QueuePair(queue, rates: QueuePairRates(from: previous?.queues.first { $0.queuePair == queue.queuePair }, to: queue, seconds: seconds))
        }
        let interval = previous == nil ? nil : seconds
        previous = (now, queues)
        return (result, TapStatistics.read(interface: endpoint.interfaceName), interval)
    }

    /// One text line per queue pair, and one for the tap's own counters.
    static func lines(_ queues: [AttachEvent.QueuePair], tap: TapStatistics?, interface: String) -> [String] {
        func side(_ s: AttachEvent.QueuePair.Side) -> String {
            "\(s.frames) frames \(s.bytes) bytes drops \(s.drops) ring-errors \(s.ringErrors) calls \(s.calls) kicks \(s.kicks) (\(rate(s.framesPerSecond)) frames/s \(rate(s.bytesPerSecond)) bytes/s)"
        }
        var lines = queues.map { "queue \($0.queuePair)\($0.running ? "" : " (stopped)"): rx \(side($0.rx)) | tx \(side($0.tx))" }
        if let tap {
            lines.append("tap \(interface): host sent toward us \(tap.towardUsPackets) (tx_packets), dropped before our ring \(tap.towardUsDropped) (tx_dropped) | received from us \(tap.fromUsPackets) (rx_packets), dropped \(tap.fromUsDropped) (rx_dropped)")
        }
        return lines
    }

    private static func rate(_ value: Double) -> String {
        guard value.isFinite, value >= 0, value < 1e18 else { return "0" }
        return String(Int64(value.rounded()))
    }
}

/// The attach side of `--control`: each command done on the endpoint, from the event loop's
/// thread (the datapath's: no lock is needed, and nothing runs while a command does).
final class AttachControl {
    let server: ControlServer
    /// `stop` was asked and no `resume` since: the event loop does not service the datapath.
    private(set) var stopped = false
    /// Queue pairs detached with `queue N disable`: stopped, their tap queue detached.
    private var disabled: Set<Int> = []
    private var sampler = StatisticsSampler()
    /// The RX offloads set up (from --offloads or the GUEST_ features): `offloads` may narrow them.
    private let configuredOffloads: Tap.Offloads
    /// `--trace`'s observer: the commands' ioctls are traced as the set-up's are.
    private let observer: IoctlObserver?

    /// How `pcap start FILE` creates its capture (nil: attach's --pcap is capturing already).
    private let startCapture: ((String) throws -> PcapWriter)?
    /// The capture `pcap start` began, until `pcap stop` (or attach stops).
    private var capture: PcapWriter?

    init(server: ControlServer, configuredOffloads: Tap.Offloads, observer: IoctlObserver?, startCapture: ((String) throws -> PcapWriter)?) {
        self.server = server
        self.observer = observer
        self.configuredOffloads = configuredOffloads
        self.startCapture = startCapture
    }

    /// Answers every waiting request (never blocks).
    func serve<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(_ endpoint: VirtioNetEndpoint<B, P>) {
        server.serve { command in
            do { return try handle(command, endpoint) } catch { return .failure("\(command.name): \(error)") }
        }
    }

    private func handle<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(_ command: ControlCommand, _ endpoint: VirtioNetEndpoint<B, P>) throws -> ControlReply {
        switch command {
        case .stats:
            let (queues, tap, interval) = sampler.sample(endpoint)
            var reply = ControlReply.done("statistics of \(endpoint.interfaceName)")
            reply.intervalSeconds = interval
            reply.stopped = stopped
            reply.counters = AttachEvent.Counters(endpoint)
            reply.queues = queues
            reply.tap = tap.map(AttachEvent.TapCounters.init)
            return reply
        case .stop:
            guard !stopped else { return .done("already stopped") }
            // vhost_net_stop on every pair: frames the host sends meanwhile wait in the tap's queue.
            try endpoint.stop()
            stopped = true
            return .done("stopped: the backends are detached; frames wait in the tap's queue until resume")
        case .resume:
            guard stopped else { return .done("already running") }
            // The pairs prepare the tap as they have it now (offloads, send buffer: Tap.prepare).
            for (index, pair) in endpoint.pairs.enumerated() where !disabled.contains(index) { try pair.resume(bringingLinkUp: false) }
            stopped = false
            // The link is left as it is: SIOCSIFFLAGS needs CAP_NET_ADMIN, dropped after set-up.
            return .done("resumed from the saved vring bases")
        case .link(let up):
            // tun.c __tun_chr_ioctl: TUNSETCARRIER calls tun_net_change_carrier (netif_carrier_on/off).
            for pair in endpoint.pairs { try Tap.perform(.setCarrier(up), on: pair.port.fd, observer: observer) }
            return .done("carrier \(up ? "on" : "off")")
        case .queue(let index, let enable):
            return try setQueue(index, enable: enable, endpoint)
        case .offloads(let offloads):
            guard configuredOffloads.isSuperset(of: offloads) else {
                return .failure("offloads: only the RX offloads set up at start can be turned on (0x\(String(configuredOffloads.rawValue, radix: 16))): the driver negotiated no more")
            }
            // tun.c set_offload; the pairs keep them for every resume.
            for pair in endpoint.pairs { try pair.setReceiveOffloads(offloads) }
            return .done("RX offloads (TUNSETOFFLOAD) 0x\(String(offloads.rawValue, radix: 16))")
        case .pcapStart(let path):
            guard let startCapture else { return .failure("pcap: attach --pcap is capturing already") }
            guard capture == nil else { return .failure("pcap: a capture is running already (\(capture!.path)); pcap stop first") }
            let writer: PcapWriter
            do { writer = try startCapture(path) } catch let error as CLIError { return .failure(error.message) }
            let headerLength = endpoint.pairs[0].headerLength
            endpoint.frameObserver = { observed in
                writer.write(observed.bytes, direction: observed.direction == .received ? .inbound : .outbound, queue: observed.queue,
                             header: observed.header, headerLength: headerLength)
            }
            capture = writer
            return .done("capturing to \(path)")
        case .pcapStop:
            guard let writer = capture else { return .failure("pcap: no capture started with pcap start") }
            endpoint.frameObserver = nil
            capture = nil
            try writer.finish()
            return .done("wrote \(writer.frames) frames to \(writer.path)")
        case .dirtyLog(let on):
            guard on else { return .failure("dirty-log off: the library cannot turn the dirty log off once on (VHOST_F_LOG_ALL stays set until the device is closed)") }
            var pages = 0
            for pair in endpoint.pairs {
                if pair.dirtyLog == nil { try pair.enableDirtyLog() }
                pages += pair.dirtyLog?.dirtyPages ?? 0
            }
            var reply = ControlReply.done("dirty log on: \(pages) dirty pages")
            reply.dirtyPages = pages
            return reply
        }
    }

    /// TUNSETQUEUE on pair `index`'s tap fd. A disabled pair stays stopped: nothing arrives on a
    /// detached queue, and a send through it fails (tun.c tun_get returns NULL for a detached
    /// tfile: EBADFD).
    private func setQueue<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(_ index: Int, enable: Bool, _ endpoint: VirtioNetEndpoint<B, P>) throws -> ControlReply {
        guard index < endpoint.pairs.count else { return .failure("queue \(index): there are \(endpoint.pairs.count) queue pair(s), 0 to \(endpoint.pairs.count - 1)") }
        let pair = endpoint.pairs[index]
        if enable {
            guard disabled.contains(index) else { return .done("queue \(index) is enabled already") }
            // tun.c tun_set_queue: IFF_ATTACH_QUEUE re-attaches the detached tfile.
            try Tap.perform(.setQueue(attach: true), on: pair.port.fd, observer: observer)
            disabled.remove(index)
            if !stopped { try pair.resume(bringingLinkUp: false) }
            return .done("queue \(index) enabled")
        }
        guard !disabled.contains(index) else { return .done("queue \(index) is disabled already") }
        guard endpoint.pairs.count - disabled.count > 1 else { return .failure("queue \(index) is the last enabled queue pair: enable another first") }
        try pair.stop()
        do {
            // tun.c tun_set_queue: IFF_DETACH_QUEUE takes the queue out of the tap's steering.
            try Tap.perform(.setQueue(attach: false), on: pair.port.fd, observer: observer)
        } catch {
            if !stopped { try? pair.resume(bringingLinkUp: false) }
            throw error
        }
        disabled.insert(index)
        return .done("queue \(index) disabled")
    }

    /// Closes the socket and completes a capture `pcap start` began (the frame observer is off by now).
    func close() {
        server.close()
        if let capture { do { try capture.finish() } catch { printDiagnostic("vhostctl: warning: pcap \(capture.path): \(error)") } }
        capture = nil
    }
}

extension ControlCommand {
    /// The command's name as the request gives it.
    var name: String {
        switch self {
        case .stats: "stats"
        case .stop: "stop"
        case .resume: "resume"
        case .link: "link"
        case .queue: "queue"
        case .offloads: "offloads"
        case .pcapStart, .pcapStop: "pcap"
        case .dirtyLog: "dirty-log"
        }
    }
}

extension Attach {
    /// `--control PATH`'s socket (made now, before the drop) and the commands' state.
    func makeControl<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(path: String, endpoint: VirtioNetEndpoint<B, P>, plan: RunAsPlan) throws -> AttachControl {
        let server = try ControlServer(path: path, owner: plan.fileCreator)
        let interfaces = (0..<queuePairs).map { "\(endpoint.interfaceName) queue \($0)" }
        let linkType = tun ? Pcap.linkTypeRaw : Pcap.linkTypeEthernet
        let output = recording.output
        // After the drop the capture is created as the user attach runs as, like --pcap's.
        let startCapture: ((String) throws -> PcapWriter)? = pcap != nil ? nil : { file in
            try PcapWriter(file: try output.create(file, option: "pcap start"), linkType: linkType, interfaces: interfaces)
        }
        return AttachControl(server: server, configuredOffloads: endpoint.pairs[0].configuration.effectiveReceiveOffloads, observer: common.observer,
                             startCapture: startCapture)
    }
}
