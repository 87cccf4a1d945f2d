import ArgumentParser
import DatapathMeasure
import Glibc
import Vhost
import VhostNet

/// `vhostctl bench backends`: vhost-net against this process moving the same frames through
/// the tap itself, interleaved in one run, swept over any list of settings, with the CPU each
/// frame cost the driver and the vhost worker.
struct BenchBackends: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backends",
        abstract: "vhost-net against the userspace tap path (QEMU without vhost): interleaved trials, sweeps, CPU per frame, JSON, CSV and SVG.",
        discussion: """
        Every list option takes comma-separated values and the run sweeps their product; the \
        trials of every combination are interleaved (one trial of each, then the next round), \
        after a warm-up of each. TX frames are counted by the tap's statistics (with --xdp-drop \
        they end in an XDP program on the tap, and its drops count); RX comes from the kernel's \
        pktgen when its module is loaded, else from a packet socket on another thread, and is \
        counted in our ring and by the tap (which also counts what it dropped). CPU per frame is \
        the driver thread's CPU time and the vhost worker's (from /proc/<tid>/schedstat) divided \
        by the frames. Under emulation, compare only ratios within one run. Needs root.
        """)

    @OptionGroup var common: CommonOptions
    @OptionGroup var output: OutputOptions

    @Option(help: "Tap to create for each measurement (it must not exist).")
    var tap = "vhbench0"

    @Option(help: "Scenarios: tx, rx, bidir; ping and udp-rr (round trips with the host's stack: latency); latency means ping,udp-rr.",
            completion: .list(ScenarioChoice.allValueStrings))
    var scenario = SweepList<ScenarioChoice>([.scenario(.tx)])

    @Option(help: "Backends: vhost, tap (this process reads and writes the tap fd, sleeping in poll), tap-poll (the same, spinning).",
            completion: .list(BenchBackend.allValueStrings))
    var backend = SweepList<BenchBackend>([.vhost, .tap])

    @Option(name: .customLong("frame-size"), help: "Ethernet frame sizes in bytes: 60 to 9000 (above 1514 the tap's MTU is raised), or 9001 to 65549 (64k: 65536) for TCPv4 TSO superframes the host segments (tx only).")
    var frameSize = SweepList<FrameSize>([FrameSize(bytes: 64), FrameSize(bytes: 1500)])

    @Option(name: [.customLong("queue-pairs"), .customLong("queues")], help: "Queue pairs, each on its own queue of a multiqueue tap and driven by its own thread (1,2,4 sweeps the scaling). --queues is an alias.")
    var queuePairs = SweepList<Int>([1])

    @Option(name: .customLong("queue-size"), help: "vhost ring sizes (powers of 2 from 64 to 32768). Default 512: see docs/benchmarks.md, \"Why the rings hold 512\".")
    var queueSize = SweepList<UInt16>([512])

    @Option(name: [.customLong("notify"), .customLong("mode")], help: "How the vhost driver waits: interrupt, poll. --mode is an alias.", completion: .list(["interrupt", "poll"]))
    var mode = SweepList<NotificationMode>([.interrupt])

    @Option(name: .customLong("event-idx"), help: "VIRTIO_RING_F_EVENT_IDX for vhost: on, off.", completion: .list(["on", "off"]))
    var eventIndex = SweepList<Switch>([.on])

    @Option(help: "Frames per burst: added to the ring before one publish (vhost), or written and read per loop (tap).")
    var batch = SweepList<Int>([64])

    @Option(name: .customLong("rx-coalesce"), help: "vhost RX interrupt coalescing: auto (adaptive, up to half the ring: a lone frame wakes the driver at once, a stream about once per --rx-coalesce-delay; interrupt mode with --event-idx on, else off), a frame count (sleep until that many are used or the delay passed; needs --event-idx on and interrupt mode; at most half the ring), or 0 (wake on the first frame).",
            completion: .list(["auto", "0"]))
    var receiveCoalesce = SweepList<ReceiveCoalescingSetting>([.adaptive])

    @Option(name: .customLong("rx-coalesce-delay"), help: "The longest --rx-coalesce holds a frame, in milliseconds (1 to 1000; as ethtool -C rx-usecs). Default: \(BenchSettings.defaultReceiveCoalescingDelay).")
    var receiveCoalesceDelay = SweepList<Int32>([BenchSettings.defaultReceiveCoalescingDelay])

    @Option(name: .customLong("busyloop-timeout"), help: "vhost's VHOST_SET_VRING_BUSYLOOP_TIMEOUT in µs (0: off). Default: 50 before Linux 6.4, where the worker is a kernel thread and the loop cut its CPU per RX frame; 0 from 6.4 (docs/benchmarks.md).")
    var busyloopTimeout: SweepList<UInt32>?

    @Option(name: .customLong("descriptors"), help: "vhost descriptor layouts: inline (the header before the frame in one descriptor), separateHeader (a chain of two), indirect (a two-entry table; negotiates INDIRECT_DESC).",
            completion: .list(DescriptorLayout.allCases.map(\.rawValue)))
    var layout = SweepList<DescriptorLayout>([.inline])

    @Option(name: .customLong("mrg-rxbuf"), help: "VIRTIO_NET_F_MRG_RXBUF for vhost: on, off.", completion: .list(["on", "off"]))
    var mergeable = SweepList<Switch>([.off])

    @Option(name: .customLong("in-order"), help: "VIRTIO_F_IN_ORDER for vhost: on, off (vhost-net offers it from Linux 6.17; where the device does not, the on runs are left out with a line that says so).",
            completion: .list(["on", "off"]))
    var inOrder = SweepList<Switch>([.off])

    @Option(name: .customLong("huge-pages"), help: "Guest memory on 2 MiB huge pages for vhost: on, off.", completion: .list(["on", "off"]))
    var hugePages = SweepList<Switch>([.off])

    @Option(name: .customLong("net-header"), help: "Who adds and strips the virtio-net header on vhost: vhost (VHOST_NET_F_VIRTIO_NET_HDR, the tap without IFF_VNET_HDR: the worker costs less per frame) or tap (IFF_VNET_HDR, as QEMU and DPDK have it). Default: vhost, and tap for TSO superframes (whose GSO fields only the tap's header carries) and, before Linux 6.9, for what transmits (vhost's batched TX path reads a stale header there: docs/kernel-findings.md).",
            completion: .list(NetHeaderOwner.allCases.map(\.rawValue)))
    var netHeader: SweepList<NetHeaderOwner>?

    @Option(name: .customLong("buffer-size"), help: "Bytes per vhost frame buffer, the virtio-net header inline (64 to 1048576; default: 2048, or the header and the frame where that is more). A TX buffer must hold the header and the frame; RX buffers smaller than the header and 1514 bytes need --mrg-rxbuf on.")
    var bufferSize: SweepList<Int>?

    @Flag(name: .customLong("low-latency"), help: "Measure vhost in attach --low-latency's configuration: the driver polling (--notify poll), the worker busy-polling (--busyloop-timeout \(DatapathOptions.lowLatencyBusyloop), unless --busyloop-timeout is given), and unless --driver-cpu or --worker-cpu is given, the two pinned to different CPUs.")
    var lowLatency = false

    @Option(help: "Interleaved trials per combination (the median is reported; at least 5 for numbers to cite).")
    var trials = 5

    @Option(help: "Seconds per measurement.")
    var seconds = 1.0

    @Option(help: "Seconds of warm-up per combination, discarded.")
    var warmup = 0.5

    @Option(help: "The backend the ratios are against (default: the first).")
    var baseline: String?

    @Flag(name: .customLong("xdp-drop"), help: "Attach an XDP program that drops every frame to the tap, so TX measures vhost without the host stack.")
    var xdpDrop = false

    @Option(name: .customLong("worker-cpu"), help: "Pin the vhost worker to this CPU; none leaves it unpinned (none,1 compares both).",
            completion: CompletionHints.cpusOrNone)
    var workerCPU = SweepList<CPUChoice>([.unpinned])

    @Option(name: .customLong("driver-cpu"), help: "Pin this process's thread to this CPU.", completion: CompletionHints.cpus)
    var driverCPU: Int?

    @Option(name: .customLong("json-file"), help: ArgumentHelp("Write the report as JSON to this file (the --json schema).", valueName: "file"),
            completion: .file(extensions: ["json"]))
    var jsonFile: String?

    @Option(help: ArgumentHelp("Write one CSV row per measurement.", valueName: "file"), completion: .file(extensions: ["csv"]))
    var csv: String?

    @Option(help: ArgumentHelp("Write SVG charts: pps by frame size per backend, CPU per frame per backend.", valueName: "file"),
            completion: .file(extensions: ["svg"]))
    var svg: String?

    @Flag(name: .customLong("stats-blocks"), help: "Print a testpmd-style statistics block per combination.")
    var statsBlocks = false

    var scenarios: [BenchScenario] { scenario.values.flatMap(\.scenarios) }
    var backends: [BenchBackend] { backend.values }
    var frameSizes: [Int] { frameSize.values.map(\.bytes) }
    var queuePairCounts: [Int] { queuePairs.values }
    var queueSizes: [UInt16] { queueSize.values }
    var modes: [NotificationMode] { lowLatency ? [.poll] : mode.values }
    var eventIndexes: [Bool] { eventIndex.values.map(\.isOn) }
    var batches: [Int] { batch.values }
    /// --busyloop-timeout; without it, --low-latency's, else the kernel's default.
    var busyloops: [UInt32] {
        busyloopTimeout?.values ?? [lowLatency ? DatapathOptions.lowLatencyBusyloop : BenchSettings.defaultBusyloopMicroseconds]
    }
    var coalescings: [ReceiveCoalescingSetting] { receiveCoalesce.values }
    var coalescingDelays: [Int32] { receiveCoalesceDelay.values }
    /// nil: the engine's default buffer size.
    var bufferSizes: [Int?] { bufferSize?.values ?? [nil] }
    var netHeaders: [NetHeaderOwner?] { netHeader?.values ?? [nil] }
    /// nil: not pinned. With --low-latency and neither CPU option: apart from the driver.
    var workerCPUs: [Int?] { lowLatencyPlacement.map { [$0.workerCPUs[0]] } ?? workerCPU.values.map(\.number) }
    /// --low-latency's placement where neither --driver-cpu nor --worker-cpu is given.
    var lowLatencyPlacement: LowLatencyPlacement? {
        guard lowLatency, driverCPU == nil, workerCPU.values.allSatisfy({ $0.number == nil }) else { return nil }
        return LowLatencyPlacement.choose(allowed: LowLatencyPlacement.allowedCPUs(), workers: 1)
    }

    func validate() throws {
        for count in queuePairCounts where !(1...16).contains(count) { throw ValidationError("--queue-pairs \(count): use 1 to 16") }
        for size in batches where !(1...1024).contains(size) { throw ValidationError("--batch \(size): use 1 to 1024") }
        for size in frameSizes where !(60...BenchSettings.largestSegmentationFrame).contains(size) {
            throw ValidationError("--frame-size \(size): use 60 to 9000, or up to \(BenchSettings.largestSegmentationFrame) (64k) for TSO")
        }
        if xdpDrop, let size = frameSizes.first(where: { $0 > BenchSettings.largestPlainFrame }) {
            // Seen on 6.1: tun hands GSO frames to generic XDP, whose drop no tap counter records.
            throw ValidationError("--frame-size \(size) with --xdp-drop: the tap drops TSO superframes in generic XDP without counting them anywhere (rx_packets and rx_dropped stay still), so no frame could be counted; leave out --xdp-drop for sizes above \(BenchSettings.largestPlainFrame)")
        }
        if netHeaders.contains(.vhost), let size = frameSizes.first(where: { $0 > BenchSettings.largestPlainFrame }) {
            throw ValidationError("--net-header vhost with --frame-size \(size): a TSO superframe's GSO fields travel in the tap's virtio-net header, which vhost strips; use --net-header tap, or leave it out (tap is the default for such sizes)")
        }
        if let size = frameSizes.first(where: { $0 > BenchSettings.largestPlainFrame }), scenarios.contains(where: { $0 != .tx }) {
            throw ValidationError("--frame-size \(size): sizes above \(BenchSettings.largestPlainFrame) are TCP superframes for TSO, which only the tx scenario sends; run them with --scenario tx")
        }
        for delay in coalescingDelays where !(1...1000).contains(delay) {
            throw ValidationError("--rx-coalesce-delay \(delay): use 1 to 1000 milliseconds")
        }
        for size in queueSizes where !(64...32768).contains(size) || size & (size - 1) != 0 {
            throw ValidationError("--queue-size \(size): a power of 2 from 64 to 32768 (vhost.c vhost_vring_set_num)")
        }
        do { try Tap.validate(name: tap) } catch { throw ValidationError("--tap: \(error)") }
        // Every vhost combination against the queue pair's own rules (ring size, EVENT_IDX for
        // --rx-coalesce, …), so a bad one fails now, not in the middle of a run; and the guest
        // memory it needs: a buffer per descriptor in both rings of every pair.
        for c in combinations() where c.backend == .vhost {
            let config = BackendComparison.configuration(c, tapName: tap)
            do { try config.validate() } catch { throw ValidationError("\(BenchBackends.describe(c)): \(error)") }
            if let size = c.bufferSize {
                guard (64...(1 << 20)).contains(size) else { throw ValidationError("--buffer-size \(size): use 64 to 1048576") }
                // A TX frame is written into one buffer.
                let needed = config.headerLength + c.frameSize
                if size < needed && c.scenario != .rx {
                    throw ValidationError("--buffer-size \(size) with \(c.frameSize)-byte frames: a TX buffer must hold the \(config.headerLength)-byte header and the frame (\(needed) bytes)")
                }
            }
            let memory = 2 * Int(c.queueSize) * config.bufferSize * c.queuePairs
            guard memory <= 2 << 30 else {
                throw ValidationError("--queue-size \(c.queueSize) with \(c.frameSize)-byte frames and \(c.queuePairs) queue pairs needs \(memory >> 20) MiB of guest memory; use a smaller ring, frame or pair count (at most 2 GiB)")
            }
        }
        guard (1...99).contains(trials) else { throw ValidationError("--trials takes 1 to 99") }
        guard seconds > 0 && seconds <= 60, warmup >= 0 && warmup <= 60 else { throw ValidationError("--seconds takes more than 0 to 60, --warmup 0 to 60") }
        if let baseline, BenchBackend(rawValue: baseline).map(backends.contains) != true {
            throw ValidationError("--baseline \(baseline): name one of the backends being run (\(backend.defaultValueDescription))")
        }
        try validateOnlineCPUs(workerCPUs.map { (name: "worker-cpu", cpu: $0) } + [(name: "driver-cpu", cpu: driverCPU)])
        for (option, path) in [("--json-file", jsonFile), ("--csv", csv), ("--svg", svg)] {
            if let path { try output.check(path, option: option) }
        }
    }

    /// Every combination to measure: the product of the lists. The userspace backends have no
    /// ring, mode, EVENT_IDX, busyloop or worker, so they get the first of those; round trips
    /// have one frame in flight, so they get the first batch size and one queue pair.
    func combinations() -> [BenchSettings] {
        var all: [BenchSettings] = []
        for scenario in scenarios {
            for size in frameSizes {
                for backend in backends {
                    let vhost = backend == .vhost
                    var partial = [BenchSettings(backend: backend, scenario: scenario, frameSize: size)]
                    /// Multiplies the combinations so far by `list`, or by its first value where the setting does not apply.
                    func sweep<T>(_ list: [T], appliesHere: Bool, _ set: (inout BenchSettings, T) -> Void) {
                        partial = partial.flatMap { base in (appliesHere ? list : [list[0]]).map { value in var s = base; set(&s, value); return s } }
                    }
                    sweep(queueSizes, appliesHere: vhost) { $0.queueSize = $1 }
                    sweep(modes, appliesHere: vhost) { $0.mode = $1 }
                    sweep(eventIndexes, appliesHere: vhost) { $0.eventIndex = $1 }
                    sweep(batches, appliesHere: !scenario.isRoundTrip) { $0.batch = $1 }
                    sweep(busyloops, appliesHere: vhost) { $0.busyloopMicroseconds = $1 }
                    sweep(layout.values, appliesHere: vhost) { $0.descriptorLayout = $1 }
                    sweep(mergeable.values.map(\.isOn), appliesHere: vhost) { $0.mergeableReceiveBuffers = $1 }
                    sweep(inOrder.values.map(\.isOn), appliesHere: vhost) { $0.inOrder = $1 }
                    sweep(hugePages.values.map(\.isOn), appliesHere: vhost) { $0.hugePages = $1 }
                    sweep(bufferSizes, appliesHere: vhost) { $0.bufferSize = $1 }
                    sweep(netHeaders, appliesHere: vhost) { $0.netHeader = $1 }
                    sweep(coalescings, appliesHere: BenchBackends.coalescingApplies(backend, scenario)) { $0.receiveCoalescing = $1 }
                    sweep(coalescingDelays, appliesHere: BenchBackends.coalescingApplies(backend, scenario)) { $0.receiveCoalescingDelayMilliseconds = $1 }
                    sweep(workerCPUs, appliesHere: vhost) { $0.workerCPU = $1 }
                    sweep(queuePairCounts, appliesHere: !scenario.isRoundTrip) { $0.queuePairs = $1 }
                    for i in partial.indices {
                        partial[i].seconds = seconds
                        partial[i].xdpDrop = xdpDrop && scenario != .rx && !scenario.isRoundTrip
                    }
                    all += partial
                }
            }
        }
        return all
    }

    func run() throws {
        try runReportingErrors { try bench() }
    }

    /// A live line on a terminal (rewritten in place), a plain line otherwise.
    final class Progress {
        let terminal = isatty(1) == 1
        func show(_ text: String) {
            if terminal { print("\r\u{1b}[K" + text, terminator: "") } else { print(text) }
            fflush(nil)
        }
        func done() { if terminal { print("") } }
    }

    func bench() throws {
        try requireNetworkAdministration("vhostctl bench backends")
        try requireFreeTapName(tap)
        let data = DataOutput(json: common.json)
        if let driverCPU = driverCPU ?? lowLatencyPlacement?.driverCPU { try CurrentThread.pin(to: driverCPU) }
        if xdpDrop && !scenarios.contains(where: { $0 == .tx || $0 == .bidir }) {
            throw CLIError(message: "--xdp-drop drops TX frames on the tap; it needs a tx or bidir scenario", status: ExitStatus.usage)
        }
        let combos = try offeredCombinations(combinations())
        if !NetHeaderOwner.vhostHeaderTransmitsCleanly && combos.contains(where: { $0.backend == .vhost && $0.netHeader == .vhost && $0.scenario != .rx }) {
            printDiagnostic(DatapathOptions.staleTransmitHeaderWarning)
        }
        let progress = Progress()
        let environment = BenchEnvironment.current()
        print("vhostctl bench backends: \(combos.count) combinations × \(trials) interleaved trials of \(fixed(seconds, places: 2)) s, after \(fixed(warmup, places: 2)) s warm-up each")
        print(environment.summary)
        let hooks = BenchHooks(devicePath: common.device, observer: common.observer)
        let results = try BackendComparison.interleavedTrials(combos, trials: trials, warmup: warmup, tapName: tap, hooks: hooks) { phase, i, result in
            progress.show("\(phase): \(BenchBackends.describe(combos[i]))" + (result.map { ": \(Int($0.framesPerSecond)) pps" } ?? ""))
        }
        progress.done()
        let report = BenchReport(combinations: combos, results: results, baseline: baseline.flatMap(BenchBackend.init(rawValue:)) ?? backends[0],
                                 environment: environment, trials: trials, seconds: seconds, warmup: warmup, xdpDrop: xdpDrop,
                                 driverCPU: driverCPU ?? lowLatencyPlacement?.driverCPU)
        print(report.table())
        if statsBlocks { print(report.statisticsBlocks()) }
        if let jsonFile { try write(JSONOutput.text(report.jsonDocument()) + "\n", to: jsonFile, option: "--json-file") }
        if data.json { try data.emit(report.jsonDocument()) }
        if let csv { try write(report.csv(), to: csv, option: "--csv") }
        if let svg { try write(report.svg(), to: svg, option: "--svg") }
    }

    /// The combinations the device can run: without IN_ORDER offered (before Linux 6.17), the
    /// runs that ask for it are left out, each with a line, instead of failing the whole run.
    func offeredCombinations(_ all: [BenchSettings]) throws -> [BenchSettings] {
        let (kept, leftOut) = try BenchBackends.withoutUnofferedInOrder(all, common: common) { $0.backend == .vhost && $0.inOrder }
        guard !leftOut.isEmpty else { return all }
        print("--in-order on: this device does not offer IN_ORDER (vhost-net offers it from Linux 6.17); \(leftOut.count) combinations left out")
        guard !kept.isEmpty else { throw CLIError(message: "--in-order on: this device does not offer IN_ORDER (vhost-net offers it from Linux 6.17), and no other combination is left; add off", status: ExitStatus.usage) }
        return kept
    }

    /// `items` split into those the device at `--device` can run and those that need IN_ORDER it
    /// does not offer (`VHOST_GET_FEATURES`, asked only when some item needs it). Both bench
    /// commands leave the second out with a line of their own.
    static func withoutUnofferedInOrder<T>(_ items: [T], common: CommonOptions, needsInOrder: (T) -> Bool) throws -> (kept: [T], leftOut: [T]) {
        guard items.contains(where: needsInOrder),
              try !VhostNetDevice(path: common.device, observer: common.observer).features().contains(.inOrder) else { return (items, []) }
        return (items.filter { !needsInOrder($0) }, items.filter(needsInOrder))
    }

    static func describe(_ s: BenchSettings) -> String {
        "\(s.scenario.rawValue) \(s.backend.rawValue) \(s.frameSize) B" + (s.backend == .vhost ? " ring \(s.queueSize) \(s.mode.rawValue) event-idx \(s.eventIndex ? "on" : "off")" : "")
            + (s.scenario.isRoundTrip ? "" : " batch \(s.batch)") + (s.busyloopMicroseconds > 0 ? " busyloop \(s.busyloopMicroseconds) µs" : "")
            + (s.workerCPU.map { " worker on CPU \($0)" } ?? "") + (s.queuePairs > 1 ? " \(s.queuePairs) queue pairs" : "")
            + BenchBackends.coalescingLabel(s) + (s.backend == .vhost ? BenchBackends.driverLabel(s) : "")
    }

    /// The driver choices that differ from the defaults: " layout indirect mrg-rxbuf in-order
    /// huge-pages buffer 128 tap-header", or "".
    static func driverLabel(_ s: BenchSettings) -> String {
        (s.descriptorLayout != .inline ? " layout \(s.descriptorLayout.rawValue)" : "") + (s.mergeableReceiveBuffers ? " mrg-rxbuf" : "")
            + (s.inOrder ? " in-order" : "") + (s.hugePages ? " huge-pages" : "") + (s.bufferSize.map { " buffer \($0)" } ?? "")
            + (s.netHeader.map { " \($0.rawValue)-header" } ?? "")
    }

    /// Whether `--rx-coalesce` means anything for a run: vhost receiving, not in round trips.
    static func coalescingApplies(_ backend: BenchBackend, _ scenario: BenchScenario) -> Bool {
        backend == .vhost && scenario != .tx && !scenario.isRoundTrip
    }

    /// " rx-coalesce N" or " rx-coalesce auto" where the setting applies to the run, else "".
    static func coalescingLabel(_ s: BenchSettings) -> String {
        guard coalescingApplies(s.backend, s.scenario),
              s.receiveCoalescing.coalescing(queueSize: s.queueSize, eventIndex: s.eventIndex, mode: s.mode) != nil else { return "" }
        return " rx-coalesce \(s.receiveCoalescing)"
            + (s.receiveCoalescingDelayMilliseconds != BenchSettings.defaultReceiveCoalescingDelay ? " delay \(s.receiveCoalescingDelayMilliseconds) ms" : "")
    }

    func write(_ text: String, to path: String, option: String) throws {
        try output.write(text, to: path, option: option)
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}

/// Where a benchmark ran: what a reader needs to weigh its numbers.
struct BenchEnvironment {
    var kernel: String
    var cpuModel: String
    var cpus: Int
    var emulated: Bool
    var pktgen: Bool

    static func current() -> BenchEnvironment {
        let cpuinfo = KernelInfo.readFile("/proc/cpuinfo") ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }.map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: " ") } ?? "unknown"
        let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
        let vendor = KernelInfo.readFile("/sys/devices/virtual/dmi/id/sys_vendor") ?? ""
        return BenchEnvironment(kernel: KernelInfo.release(), cpuModel: model, cpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))),
                                emulated: flags.contains(" hypervisor") || vendor.contains("QEMU"), pktgen: PacketGenerator.isAvailable)
    }

    var summary: String {
        "kernel \(kernel); CPU \(cpuModel) × \(cpus)\(emulated ? "; under a hypervisor or emulation: compare ratios within this run only" : ""); RX source \(pktgen ? "pktgen" : "a packet socket thread (pktgen not loaded)")"
    }
}
