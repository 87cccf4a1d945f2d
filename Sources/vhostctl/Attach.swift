import ArgumentParser
import Glibc
import Logging
import Vhost
import VhostNet
import HostNetwork
import NetFormats
import Virtio

extension ReplyPath: ExpressibleByArgument {}

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach to a tap as the guest's NIC, through the kernel's vhost-net, until stopped.",
        discussion: """
        Answers ARP and ICMP echo for --ip, neighbour discovery and ICMPv6 echo for --ip6 and the \
        link-local address from the MAC, echoes UDP on --udp-echo over both, records frames with \
        --pcap (pcapng for a name ending in .pcapng) and sends the frames of --replay (pcap or pcapng). Prints counters every --stats seconds. SIGINT, \
        SIGTERM, SIGHUP or a closed standard output (SIGPIPE) stops it cleanly: the backends are detached, the capture is \
        completed and a tap it created is removed (unless --keep). Needs root or CAP_NET_ADMIN for set-up (nothing with --tap-fd: descriptors a privileged helper passed); after it, attach \
        runs as the user nobody (or --user) with no capabilities and no-new-privs. Output files are created with mode 0600, \
        never through a symbolic link, never over an existing file without --force, and appear under their name only once complete. \
        A macvtap it creates is removed by a small privileged helper process even when attach is killed; \
        `vhostctl cleanup` removes what a kill of both left.
        """)

    @OptionGroup var common: CommonOptions
    @OptionGroup var recording: RecordOptions

    @Option(help: "The tap interface to attach to (with --macvtap: the macvtap's name).", completion: CompletionHints.interfaceNames)
    var tap: String?

    @Option(help: "Use a macvtap named by --tap on this parent interface as the backend (created in bridge mode when missing, and removed at exit then).", completion: CompletionHints.interfaceNames)
    var macvtap: String?

    @Option(name: .customLong("packet-socket"), help: "Use a raw packet socket bound to this interface as the backend (vhost adds the virtio-net header: VHOST_NET_F_VIRTIO_NET_HDR is negotiated).", completion: CompletionHints.interfaceNames)
    var packetSocket: String?

    @OptionGroup(title: "Passed descriptors and namespaces")
    var passed: PassedOptions

    @Flag(help: "Create the tap; it must not exist yet (TUNSETIFF with IFF_TUN_EXCL, so one made meanwhile by someone else is never attached). Without it, the tap must exist.")
    var create = false

    @Flag(help: "With --create: keep the tap when stopping (TUNSETPERSIST).")
    var keep = false

    @Option(help: "The endpoint's MAC address.")
    var mac = "52:54:00:12:34:56"

    @Option(help: "The endpoint's IPv4 address with prefix, e.g. 10.0.0.2/24. Without it (and without --ip6) nothing is answered.")
    var ip: String?

    @Option(name: .customLong("ip6"), help: "An IPv6 address of the endpoint with prefix, e.g. fd00::2/64 (repeat for more). With it IPv6 is on, and the link-local address from the MAC (EUI-64) is answered too.")
    var ip6: [String] = []

    @Flag(help: "Use a tun in IFF_TUN mode (bare IP packets, no Ethernet header) as --tap, with the virtio-net header: an L3 endpoint, without ARP or neighbour discovery.")
    var tun = false

    @Option(name: .customLong("reply-path"), help: "How replies are sent: burst (a batch's replies published together, the default) or single (each reply copied and sent alone, then drained: the path before batching, to measure against).")
    var replyPath: ReplyPath = .burst

    @Option(name: .customLong("udp-echo"), help: "Echo UDP datagrams sent to this port.")
    var udpEcho: UInt16?

    @Option(name: [.customLong("queue-pairs"), .customLong("queues")], help: "Queue pairs (more than 1 uses an IFF_MULTI_QUEUE tap). --queues is an older alias.")
    var queuePairs = 1

    @OptionGroup(title: "Datapath")
    var datapath: DatapathOptions

    @Option(help: "Write every received and transmitted frame to this capture file: pcapng when the name ends in .pcapng (an interface per queue pair, each frame's direction, nanosecond timestamps, the virtio-net header as a comment), pcap otherwise. Mode 0600, owned by the user attach runs as (who must be able to write in its folder); it appears under its name when attach stops.", completion: .file(extensions: ["pcap", "pcapng"]))
    var pcap: String?

    @Option(help: "Transmit the frames of this pcap or pcapng file once attached (from pcapng: each on its queue pair, with its virtio-net header).", completion: .file(extensions: ["pcap", "pcapng"]))
    var replay: String?

    @Option(help: "After set-up, run as this user (a name, or uid[:gid]) with no capabilities; a tap attach creates is owned by it. Default when started as root: nobody. --user root keeps uid 0 (still without capabilities).")
    var user: String?

    @Flag(name: .customLong("keep-capabilities"), help: "With --user root: keep root's capabilities after set-up (by default attach drops them all: it needs none to run).")
    var keepCapabilities = false

    @Flag(name: .customLong("take-over-tap"), help: "Attach to a persistent tap owned by another user (refused otherwise).")
    var takeOverTap = false

    @Flag(name: .customLong("existing-macvtap"), help: "With --macvtap: attach to a macvtap named by --tap that already exists (one this run did not create, perhaps another guest's NIC); refused otherwise.")
    var existingMacvtap = false

    @Option(name: .customLong("worker-cpu"), help: "Pin the queue pairs' vhost worker threads (vhost-<pid>): one CPU for all, or a list with one CPU per queue pair (0,1 or 0-1).", completion: CompletionHints.cpus)
    var workerCPU: WorkerCPUList?

    @OptionGroup(title: "Tuning")
    var tuning: TuningOptions

    @Option(help: "Seconds between counter lines (0: only at the end).")
    var stats = 5.0

    @Option(help: "Stop after this many seconds (0: run until SIGINT/SIGTERM).")
    var duration = 0.0

    @Option(help: "Serve a control socket here (a Unix stream socket speaking JSON lines, mode 0600, owned by the user attach runs as): `vhostctl ctl PATH stats|stop|resume|link up|down|queue N enable|disable|offloads NAME…|pcap start FILE|pcap stop|dirty-log on`. An existing path is refused unless it is a stale socket; removed at exit.", completion: .file())
    var control: String?

    func validate() throws {
        guard MACAddress(parsing: mac) != nil else {
            throw ValidationError("--mac \(mac) is not a MAC address: write six hex pairs, e.g. 52:54:00:12:34:56")
        }
        if let mac = MACAddress(parsing: mac), mac.isMulticast {
            throw ValidationError("--mac \(mac) is a multicast address: the first byte must be even")
        }
        if let ip, IPv4Interface(parsing: ip) == nil {
            throw ValidationError("--ip \(ip) is not an IPv4 address with prefix: write e.g. 10.0.0.2/24")
        }
        for address in ip6 where IPv6Interface(parsing: address) == nil {
            throw ValidationError("--ip6 \(address) is not a unicast IPv6 address with prefix: write e.g. fd00::2/64")
        }
        if tun && (macvtap != nil || packetSocket != nil) { throw ValidationError("--tun makes --tap an L3 tun; it does not apply to --macvtap or --packet-socket") }
        _ = try datapath.resolvedNetHeader(features: datapath.negotiatedFeatures, packetSocket: packetSocket != nil)
        try passed.check(queuePairs: queuePairs, tap: tap, create: create, macvtap: macvtap, packetSocket: packetSocket)
        guard (tap == nil) != (packetSocket == nil) || !passed.tapFD.isEmpty else {
            throw ValidationError("give --tap NAME (a tap, or with --macvtap PARENT the macvtap's name), or --packet-socket IFACE")
        }
        if let tap { do { try Tap.validate(name: tap) } catch { throw ValidationError("--tap: \(error)") } }
        if macvtap != nil || packetSocket != nil {
            if create || keep { throw ValidationError("--create and --keep apply to taps; a macvtap is created when missing, a packet socket's interface must exist") }
        }
        if packetSocket != nil && queuePairs != 1 { throw ValidationError("--packet-socket carries one queue pair: every socket bound to an interface sees every frame") }
        for name in [macvtap, packetSocket].compactMap({ $0 }) where passed.netns == nil && !Tap.exists(name: name) {
            throw ValidationError("\(name): no such interface")
        }
        guard (1...256).contains(queuePairs) else { throw ValidationError("--queue-pairs \(queuePairs): use 1 to 256") }
        if keep && !create { throw ValidationError("--keep only applies with --create") }
        _ = try RunAsPlan.resolve(user: user, keepCapabilities: keepCapabilities)
        if existingMacvtap && macvtap == nil { throw ValidationError("--existing-macvtap applies to --macvtap only") }
        if let pcap { try recording.output.check(pcap, option: "--pcap") }
        guard stats >= 0, duration >= 0 else { throw ValidationError("--stats and --duration take seconds ≥ 0") }
        if let workerCPU, let problem = workerCPU.problem(queuePairs: queuePairs, online: WorkerCPUList.onlineCPUs() ?? [0]) { throw ValidationError(problem) }
        try tuning.check(queuePairs: queuePairs, backend: macvtap != nil ? "--macvtap" : packetSocket != nil ? "--packet-socket" : nil)
    }

    func run() throws {
        try runReportingErrors { try attach() }
    }

    func attach() throws {
        // Before anything is created: a signal from here on stops attach cleanly.
        installStopHandlers()
        try passed.enterNamespace()
        let logger = common.makeLogger()
        // With --json the human lines below go to standard error; the events to standard output.
        let data = DataOutput(json: common.json)
        if !passed.needsNoPrivilege { try requireNetworkAdministration("vhostctl attach") }
        let plan = try RunAsPlan.resolve(user: user, keepCapabilities: keepCapabilities)
        // Outputs are created now, as the user attach runs as later, and written through these fds.
        let recordFile = try recording.openFile(creatingAs: plan.fileCreator)
        let recorder = recording.makeRecorder()
        defer { recording.save(recorder, to: recordFile, command: "attach") }
        if let tap, macvtap == nil {
            // --create needs no check here: the tap is created with IFF_TUN_EXCL, and the kernel
            // refuses an existing name (Tap.Flags.exclusive).
            if !create && !Tap.exists(name: tap) {
                throw VhostError.tap(name: tap, problem: .missing, reason: "does not exist; add --create to create it")
            }
            // Root may open any tap; taking over a user's persistent tap is refused unless asked.
            if !create, !takeOverTap, let owner = tapOwner(tap), owner != geteuid() {
                throw VhostError.tap(name: tap, problem: .permission, reason: "is a persistent tap owned by uid \(owner): refusing to take it over; pass --take-over-tap to attach anyway")
            }
        }
        if let tap, let parent = macvtap, !existingMacvtap, Tap.exists(name: tap) {
            throw CLIError(message: "macvtap \(tap) already exists, and this run would not have created it (it may be another guest's NIC): pass --existing-macvtap to attach to it anyway, or give --tap a free name to create one on \(parent)",
                           status: ExitStatus.usage)
        }
        // A macvtap gets a reaper before it exists (see Reaper.swift), which deletes it once this
        // process is gone, whatever the exit, kill -9 included. The defer runs before
        // runReportingErrors reports an error, so a failed set-up has removed it by then.
        let reaper = try macvtap.map { _ in try ReaperProcess.spawn(links: [tap!]) }
        defer { reaper?.finish() }
        var config = EndpointConfiguration(tapName: tap ?? packetSocket ?? "")
        config.queues = queuePairs
        datapath.apply(to: &config.datapath)
        tuning.apply(to: &config.datapath, trace: common.observer)
        config.datapath.tunMode = tun
        datapath.applyCoalescing(to: &config.datapath)
        if try datapath.resolvedNetHeader(features: config.datapath.features, packetSocket: packetSocket != nil) == .vhost {
            config.datapath.features.insert(.vhostNetVirtioNetHeader)
            // A packet socket's send buffer is not INT_MAX, so its TX never takes the batched path.
            if packetSocket == nil && !NetHeaderOwner.vhostHeaderTransmitsCleanly { printDiagnostic(DatapathOptions.staleTransmitHeaderWarning) }
        }
        let adopted = try passed.adopt(config.datapath, queuePairs: queuePairs)
        if let adopted { config.datapath.tapName = adopted.name; config.adopted = adopted.pairs }
        config.datapath.exclusiveTapCreation = create
        config.mac = MACAddress(parsing: mac)!
        config.ipv4 = ip.flatMap(IPv4Interface.init(parsing:))
        config.ipv6 = ip6.compactMap(IPv6Interface.init(parsing:))
        config.udpEchoPort = udpEcho
        config.replyPath = replyPath
        // Read and open files before any setup, so that a bad file leaves nothing half set up.
        let replayFrames = try replay.map { path throws(VhostError) in
            try Replay.frames(of: try readCaptureFile(path: path), path: path, linkLayer: config.linkLayer, features: config.datapath.features, queues: queuePairs)
        } ?? []
        let interfaceName = adopted?.name ?? tap ?? packetSocket!
        // Unfinished (a failed set-up, an error before serve), the writer removes its temporary file.
        let writer = try pcap.map { path in
            try PcapWriter(file: try recording.output.create(path, option: "--pcap", creatingAs: plan.fileCreator),
                           linkType: tun ? Pcap.linkTypeRaw : Pcap.linkTypeEthernet, interfaces: (0..<queuePairs).map { "\(interfaceName) queue \($0)" })
        }
        let workerTracker = WorkerTracker()
        config.datapath.observer = workerTracker.observer(wrapping: RecordOptions.observer(common, recorder))
        config.datapath.ringObserver = recorder?.ringObserver
        config.datapath.devicePath = common.device
        if let parent = macvtap {
            let endpoint = try VirtioNetEndpoint<VhostNetDevice, MacvtapPort>(config, macvtapOn: parent, logger: logger)
            try serve(endpoint, replayFrames: replayFrames, writer: writer, plan: plan, data: data, workerTracker: workerTracker, backend: "macvtap \(endpoint.interfaceName) on \(parent)")
        } else if let interface = packetSocket {
            // A packet socket carries no virtio-net header: vhost adds and strips it (above).
            let endpoint = try VirtioNetEndpoint<VhostNetDevice, PacketSocketPort>(config, packetSocketOn: interface, logger: logger)
            try serve(endpoint, replayFrames: replayFrames, writer: writer, plan: plan, data: data, workerTracker: workerTracker, backend: "a packet socket on \(interface)")
        } else {
            let endpoint = try VhostNetEndpoint(config, logger: logger)
            try tuning.finishSetup(endpoint, queuePairs: queuePairs)
            if adopted != nil, let warning = PassedOptions.linkWarning(endpoint.tapName) { printDiagnostic(warning) }
            // The user --user names may open the tap again; the default user (shared by many
            // daemons) is given nothing.
            if create, plan.chosenByUser, let owner = plan.user { try endpoint.pairs[0].tap.setOwner(uid: owner.uid) }
            if create && keep { try endpoint.pairs[0].tap.setPersistent(true) }
            // A tap it made and does not keep carries its mark (a --keep tap is deliberately left: unmarked).
            if create && !keep { try RouteNetlink.setAlias(index: try endpoint.pairs[0].tap.interfaceIndex(), InterfaceMark.current().description) }
            try serve(endpoint, replayFrames: replayFrames, writer: writer, plan: plan, data: data, workerTracker: workerTracker, backend: "tap \(endpoint.tapName)")
            if create && !keep { print("tap \(tap!) removed") }
        }
        // The endpoint, its taps and fds go away here: a created, non-persistent tap disappears.
    }

    /// Runs the endpoint until stopped: workers pinned, privileges dropped, replay, the event
    /// loop with counter lines, then the stop.
    func serve<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(_ endpoint: VirtioNetEndpoint<B, P>, replayFrames: [(frame: [UInt8], header: VirtioNetHeader, queue: Int)],
                                                                      writer: PcapWriter?, plan: RunAsPlan, data: DataOutput, workerTracker: WorkerTracker, backend: String) throws {
        let config = endpoint.configuration
        try datapath.finishSetup(endpoint)
        // The vhost workers (vhost-<pid>), pinned while we still may (a kernel thread needs root).
        if let workerCPU { try workerTracker.pin(workerCPU, queuePairs: queuePairs) }
        // --low-latency without --worker-cpu: the polling driver (this thread) and the busy-polling
        // workers on different CPUs (LowLatencyPlacement says why).
        if datapath.lowLatency && workerCPU == nil {
            if let placement = LowLatencyPlacement.choose(allowed: LowLatencyPlacement.allowedCPUs(), workers: queuePairs) {
                try CurrentThread.pin(to: placement.driverCPU)
                print("low latency: the driver's thread pinned to CPU \(placement.driverCPU)")
                try workerTracker.pin(WorkerCPUList(cpus: placement.workerCPUs), queuePairs: queuePairs)
            } else {
                printDiagnostic("vhostctl: warning: --low-latency on one CPU: the polling driver and the busy-polling worker share it, which is slower than polling alone; give attach two CPUs, or leave out --low-latency")
            }
        }
        let workers = VhostWorkerThread.findAll()
        // Everything that needs root is done: the fds are open, the outputs created. A macvtap this
        // run created is deleted by its reaper, which kept CAP_NET_ADMIN: none is kept here.
        let control = try control.map { try makeControl(path: $0, endpoint: endpoint, plan: plan) }
        defer { control?.close() }
        let credentials = try plan.drop()

        let pair = endpoint.pairs[0]
        let ip6Text = endpoint.responder.ipv6Enabled ? endpoint.responder.ipv6Addresses.map { address in
            config.ipv6.first { $0.address == address }?.description ?? "\(address)/64"
        }.joined(separator: " ") : "none"
        print("attached to \(endpoint.interfaceName) (\(backend)\(tun ? ", L3 tun" : "")): mac \(config.mac), ip \(config.ipv4?.description ?? "none"), ip6 \(ip6Text), udp echo \(udpEcho.map(String.init) ?? "off"), \(queuePairs) queue pair(s) of \(datapath.queueSize), \(datapath.descriptors) descriptors, \(datapath.notificationMode) mode\(datapath.effectiveBusyloopTimeout.map { ", vhost busyloop \($0) µs" } ?? ""), \(DatapathOptions.coalescingDescription(config.datapath.receiveCoalescing)), \(replyPath) replies")
        print("negotiated: \(pair.negotiatedFeatures)")
        if !pair.negotiatedOffloads.isEmpty {
            let rx = pair.configuration.effectiveReceiveOffloads
            print("offloads: \(pair.negotiatedOffloads.featureNames.joined(separator: " ")); tap RX offloads (TUNSETOFFLOAD) 0x\(String(rx.rawValue, radix: 16))\(datapath.offloads.isEmpty ? " from the GUEST_ features" : " from --offloads"); MTU \(endpoint.responder.mtu)")
        }
        for worker in workers { print("worker \(worker)") }
        if data.json {
            try data.emitLine(AttachEvent(event: "attached", interface: endpoint.interfaceName, backend: backend, mac: config.mac.description,
                                          queuePairs: queuePairs, negotiatedFeatures: pair.negotiatedFeatures.featureNames))
        }
        print(plan.summary(credentials) + (macvtap != nil ? " (a helper process deletes the macvtap at exit)" : ""))
        if common.verbose, let now = try? ProcessCredentials.current() { print("credentials: \(now)") }
        if let writer {
            let headerLength = pair.headerLength
            endpoint.frameObserver = { observed in
                writer.write(observed.bytes, direction: observed.direction == .received ? .inbound : .outbound, queue: observed.queue,
                             header: observed.header, headerLength: headerLength)
            }
        }
        endpoint.duplicateAddressHandler = { address, link in
            printDiagnostic("vhostctl: warning: duplicate address: \(address) is also advertised by \(link)")
        }
        // The device's complaints about our rings (vq_err), with the likely cause.
        endpoint.ringErrorHandler = { _, event in
            printDiagnostic("vhostctl: " + event.report)
        }
        // A device that breaks the virtio protocol costs its queue pair, never the process.
        endpoint.brokenQueueHandler = { index, error in
            printDiagnostic("vhostctl: error: queue pair \(index): \(error); serving the other queue pairs until stopped")
        }
        fflush(nil)
        let loopStart = ContinuousClock.now
        do {
            try run(endpoint, replayFrames: replayFrames, writer: writer, data: data, control: control)
        } catch {
            // An error mid-run: what was captured until then is complete, and kept.
            endpoint.frameObserver = nil
            try? writer?.finish()
            throw error
        }
        let signal = stopSignal.load(ordering: .relaxed)
        print(counterLine(endpoint))
        if data.json {
            try data.emitLine(AttachEvent(event: "stopped", elapsedSeconds: loopStart.duration(to: .now).inSeconds, counters: AttachEvent.Counters(endpoint),
                                          signal: signal != 0 ? signal : nil, pcapFrames: writer?.frames, pcapPath: writer?.path))
        }
        print("stopped\(signal != 0 ? " on signal \(signal)" : ""); backends detached")
        if let writer { print("wrote \(writer.frames) frames to \(writer.path)") }
    }

    /// The event loop until a stop signal or --duration, then the stop and the capture completed.
    func run<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(_ endpoint: VirtioNetEndpoint<B, P>, replayFrames: [(frame: [UInt8], header: VirtioNetHeader, queue: Int)],
                                                                    writer: PcapWriter?, data: DataOutput, control: AttachControl? = nil) throws {
        // Duplicate-address-detection probes for the IPv6 addresses, as a NIC coming up sends.
        try endpoint.announce()
        if !replayFrames.isEmpty {
            try endpoint.send(replayFrames)
            print("replayed \(replayFrames.count) frames from \(replay!)")
        }

        let start = ContinuousClock.now
        // The loop reads the coarse clock (vDSO, no clocksource read) every turn: a busy endpoint
        // turns about once per frame, and under TCG a precise read can be a system call into an
        // emulated HPET (6.1's clocksource there). The stats' elapsed time uses the precise one.
        let startSeconds = MonotonicClock.coarseSeconds()
        var nextStats: Double? = stats > 0 ? startSeconds + stats : nil
        var reportedRisk: String? = nil
        var sampler = StatisticsSampler()
        // A turn sleeps 200 ms at most (a stop signal that lands just before the sleep is seen
        // then), or the coalescing delay when that is longer, so that a held frame waits the whole
        // delay --rx-coalesce-delay gives, not part of it.
        let sleep = max(200, endpoint.pairs[0].configuration.receiveCoalescing?.maxDelayMilliseconds ?? 0)
        while !stopRequested {
            // While the control socket's `stop` holds, the datapath is not serviced.
            if control?.stopped == true { control?.server.wait(milliseconds: 200) } else { try endpoint.service(milliseconds: sleep, extraFDs: control?.server.descriptors ?? []) }
            control?.serve(endpoint)
            let nowSeconds = MonotonicClock.coarseSeconds()
            if let due = nextStats, nowSeconds >= due {
                let now = ContinuousClock.now
                let risk = endpoint.pairs[0].receiveTruncationRisk()
                if let risk, risk != reportedRisk { printDiagnostic("vhostctl: warning: \(risk)") }
                reportedRisk = risk
                print(counterLine(endpoint))
                let (queues, tap, _) = sampler.sample(endpoint)
                for line in StatisticsSampler.lines(queues, tap: tap, interface: endpoint.interfaceName) { print(line) }
                if data.json { try data.emitLine(AttachEvent(event: "stats", elapsedSeconds: start.duration(to: now).inSeconds, counters: AttachEvent.Counters(endpoint),
                                                             queues: queues, tap: tap.map(AttachEvent.TapCounters.init))) }
                fflush(nil)
                try writer?.flush()
                nextStats = nowSeconds + stats
            }
            if duration > 0 && nowSeconds - startSeconds >= duration { break }
        }
        endpoint.frameObserver = nil
        try endpoint.stop()
        try writer?.finish()
    }

    func counterLine<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(_ endpoint: VirtioNetEndpoint<B, P>) -> String {
        let rx = endpoint.receiveCounters, tx = endpoint.transmitCounters, r = endpoint.responder.counters
        return "rx \(rx.frames) frames \(rx.bytes) bytes drops \(rx.drops) | tx \(tx.frames) frames \(tx.bytes) bytes drops \(tx.drops) | kicks \(rx.kicks + tx.kicks) calls \(rx.calls + tx.calls) | arp \(r.arpReplies) icmp \(r.icmpEchoReplies) udp \(r.udpEchoes) | nd \(r.neighborAdvertisements)/\(r.neighborSolicitations) dad \(r.duplicateAddressProbesAnswered) icmp6 \(r.icmp6EchoReplies) udp6 \(r.udp6Echoes) | frag \(r.reassembled)/\(r.fragmentsSent) uso \(r.segmentationOffloads) csum-errors \(r.checksumErrors)"
    }
}
