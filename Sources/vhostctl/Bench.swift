import ArgumentParser
import Glibc
import Histogram
import Vhost
import DatapathMeasure
import VhostNet
import HostNetwork
import NetFormats
import Virtio
import VhostScript

/// `vhostctl bench` (driver configurations side by side) and `vhostctl bench backends`
/// (vhost-net against the userspace tap path).
struct BenchGroup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark the in-kernel datapath: driver configurations side by side (the default), vhost-net against the userspace tap path (bench backends), or attach as an echo server under load with each reply path (bench echo).",
        subcommands: [Bench.self, BenchBackends.self, BenchEcho.self],
        defaultSubcommand: Bench.self)
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "configs",
        abstract: "Benchmark the in-kernel datapath: driver configurations side by side in one run, with interleaved trials, medians and ratios; and the round-trip latency through vhost-net and the host stack.",
        discussion: """
        Each trial creates a tap, attaches, and measures TX (driver → vhost → tap, counted by the \
        tap) and RX (host packet socket → tap → vhost → driver) for --seconds. Trials of all \
        configurations are interleaved, so slow drift hits them alike; report ratios, which stay \
        valid within one run (absolute numbers under emulation do not carry across runs). \
        Needs root.
        """)

    @OptionGroup var common: CommonOptions
    @OptionGroup var recording: RecordOptions

    @Option(help: "Tap to create for the run (it must not exist).")
    var tap = "vhbench0"

    @Option(parsing: .upToNextOption, help: "Configurations to compare; the first is the baseline. Known: \(Variant.all.map(\.name).joined(separator: " ")).",
            completion: .list(Variant.all.map(\.name)))
    var configs: [String] = ["event-idx", "flags", "poll", "indirect", "chained"]

    @Option(name: .customLong("frame-size"), help: "Ethernet frame size in bytes (60 to 1514).")
    var frameSize = 64

    @Option(help: "Seconds per measurement.")
    var seconds = 1.0

    @Option(help: "Interleaved trials per configuration (the median is reported).")
    var trials = 5

    @Option(help: "Round trips to time with ICMP echo through the host stack (0: skip).")
    var latency = 1000

    @Option(name: .customLong("worker-cpu"), help: "Pin the vhost worker to this CPU.", completion: CompletionHints.cpus)
    var workerCPU: Int?

    @Option(name: .customLong("driver-cpu"), help: "Pin this process's thread (the driver) to this CPU.", completion: CompletionHints.cpus)
    var driverCPU: Int?

    /// `--json` is the global flag (GlobalOptions): one JSON object instead of a table.
    var json: Bool { common.json }

    /// A driver configuration: what it changes in the settings of the one benchmark engine
    /// (`BackendComparison`, the engine of `bench backends` too).
    struct Variant: Sendable {
        var name: String
        var summary: String
        var apply: @Sendable (inout BenchSettings) -> Void

        static let all: [Variant] = [
            Variant(name: "event-idx", summary: "EVENT_IDX, interrupts (epoll)") { $0.eventIndex = true },
            Variant(name: "flags", summary: "NO_NOTIFY/NO_INTERRUPT flags, no EVENT_IDX") { $0.eventIndex = false },
            Variant(name: "poll", summary: "EVENT_IDX, busy-polling the used ring") { $0.mode = .poll },
            Variant(name: "indirect", summary: "indirect tables (header + frame)") { $0.descriptorLayout = .indirect },
            Variant(name: "chained", summary: "header in its own descriptor") { $0.descriptorLayout = .separateHeader },
            Variant(name: "mergeable", summary: "MRG_RXBUF") { $0.mergeableReceiveBuffers = true },
            Variant(name: "ring-1024", summary: "1024-entry rings") { $0.queueSize = 1024 },
            Variant(name: "hugepages", summary: "guest memory on 2 MiB huge pages") { $0.hugePages = true },
            Variant(name: "tap-header", summary: "the virtio-net header on the tap (IFF_VNET_HDR), as QEMU and DPDK have it; the others have vhost add it (VHOST_NET_F_VIRTIO_NET_HDR)") { $0.netHeader = .tap },
            Variant(name: "in-order", summary: "IN_ORDER (vhost-net offers it from Linux 6.17)") { $0.inOrder = true },
            Variant(name: "small-buffers", summary: "buffers of the header and the frame rounded up to 64 bytes, not 2,048, with MRG_RXBUF (RX frames larger than a buffer span several)") {
                $0.mergeableReceiveBuffers = true
                $0.bufferSize = (BackendComparison.configuration($0, tapName: "").headerLength + $0.frameSize + 63) & ~63
            },
            Variant(name: "busyloop", summary: "the worker busy-polls \(DatapathOptions.lowLatencyBusyloop) µs before it sleeps (VHOST_SET_VRING_BUSYLOOP_TIMEOUT; the default before Linux 6.4)") {
                $0.busyloopMicroseconds = DatapathOptions.lowLatencyBusyloop
            },
            Variant(name: "no-busyloop", summary: "the worker sleeps at once when its queue is empty (the default from Linux 6.4)") {
                $0.busyloopMicroseconds = 0
            },
        ]
    }

    /// The engine's settings of `variant` in `scenario`: vhost, with `bench backends`' defaults
    /// (EVENT_IDX, interrupts, ring 512, batch 64, adaptive RX coalescing, the virtio-net header
    /// from vhost) changed by the variant.
    func settings(_ variant: Variant, _ scenario: BenchScenario) -> BenchSettings {
        var settings = BenchSettings(backend: .vhost, scenario: scenario, frameSize: frameSize)
        settings.seconds = seconds
        settings.receiveCoalescing = .adaptive
        settings.busyloopMicroseconds = BenchSettings.defaultBusyloopMicroseconds
        settings.workerCPU = workerCPU
        variant.apply(&settings)
        return settings
    }

    func validate() throws {
        guard !configs.isEmpty else { throw ValidationError("--configs needs at least one configuration") }
        for name in configs where !Variant.all.contains(where: { $0.name == name }) {
            throw ValidationError("--configs: unknown configuration \(name); known: \(Variant.all.map(\.name).joined(separator: " "))")
        }
        guard (60...1514).contains(frameSize) else { throw ValidationError("--frame-size \(frameSize): use 60 to 1514") }
        guard seconds > 0 && seconds <= 60 else { throw ValidationError("--seconds takes more than 0 and at most 60") }
        guard (1...99).contains(trials) else { throw ValidationError("--trials takes 1 to 99") }
        guard latency >= 0 && latency <= 1_000_000 else { throw ValidationError("--latency takes 0 to 1000000 round trips") }
        try validateOnlineCPUs([(name: "worker-cpu", cpu: workerCPU), (name: "driver-cpu", cpu: driverCPU)])
        do { try Tap.validate(name: tap) } catch { throw ValidationError("--tap: \(error)") }
        // Each configuration against the queue pair's own rules, so a bad one fails now.
        for name in configs {
            guard let variant = Variant.all.first(where: { $0.name == name }) else { continue }
            do { try BackendComparison.configuration(settings(variant, .rx), tapName: tap).validate() } catch { throw ValidationError("--configs \(name): \(error)") }
        }
    }

    func run() throws {
        try runReportingErrors { try bench() }
    }

    func bench() throws {
        try requireNetworkAdministration("vhostctl bench")
        try requireFreeTapName(tap)
        if let driverCPU { try CurrentThread.pin(to: driverCPU) }
        let named = configs.compactMap { name in Variant.all.first { $0.name == name } }
        let (variants, leftOut) = try BenchBackends.withoutUnofferedInOrder(named, common: common) { settings($0, .tx).inOrder }
        if !leftOut.isEmpty {
            print("--configs \(leftOut.map(\.name).joined(separator: " ")): this device does not offer IN_ORDER (vhost-net offers it from Linux 6.17); left out")
            guard !variants.isEmpty else { throw CLIError(message: "--configs: no configuration is left that this device can run; add one without IN_ORDER", status: ExitStatus.usage) }
        }
        let recordFile = try recording.openFile()
        let recorder = recording.makeRecorder()
        defer { recording.save(recorder, to: recordFile, command: "bench") }
        let hooks = BenchHooks(devicePath: common.device, observer: RecordOptions.observer(common, recorder), ringObserver: recorder?.ringObserver)
        if !json { print("vhostctl bench: \(frameSize)-byte frames, \(trials) interleaved trials of \(seconds) s per direction, kernel \(KernelInfo.release())") }
        // TX and RX of every configuration: the combinations of the one engine, interleaved.
        let combinations = variants.flatMap { [settings($0, .tx), settings($0, .rx)] }
        var measured = 0
        let results = try BackendComparison.interleavedTrials(combinations, trials: trials, warmup: 0, tapName: tap, hooks: hooks) { _, _, result in
            guard result != nil else { return }
            measured += 1
            // Every combination once is a trial.
            if !json && measured % combinations.count == 0 { print("  trial \(measured / combinations.count)/\(trials) done"); fflush(nil) }
        }
        let tx = variants.indices.map { results[2 * $0] }
        let rx = variants.indices.map { results[2 * $0 + 1] }
        var rtt: Histogram<UInt64>? = nil
        if latency > 0 {
            // ICMP echo round trips through the host stack, of the first configuration: `latency`
            // of them recorded, after the engine's unrecorded first ones.
            var trips = settings(variants[0], .ping)
            trips.seconds = 60
            trips.roundTripLimit = latency + RoundTrips.unrecorded
            rtt = try BackendComparison.run(trips, tapName: tap, hooks: hooks).roundTrips?.histogram
        }
        try report(variants: variants, tx: tx, rx: rx, rtt: rtt)
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    /// `bench configs --json`. Ratios are strings with three decimals, as the table prints them.
    struct ConfigsJSON: Encodable {
        struct Config: Encodable {
            var name: String
            var txPpsMedian: UInt64, txPps: [UInt64], txRatio: String
            var rxPpsMedian: UInt64, rxPps: [UInt64], rxRatio: String
            /// Medians of the driver thread's and the vhost worker's CPU time per frame.
            var txDriverNsPerFrame: Double, txWorkerNsPerFrame: Double?, rxDriverNsPerFrame: Double, rxWorkerNsPerFrame: Double?
        }
        struct RoundTrips: Encodable { var count, p50, p90, p99, max: UInt64 }
        var kernel: String
        var frameSize: Int
        var trials: Int
        var seconds: Double
        var configs: [Config]
        var rttNs: RoundTrips?
    }

    func report(variants: [Variant], tx txResults: [[BenchResult]], rx rxResults: [[BenchResult]], rtt: Histogram<UInt64>?) throws {
        let tx = txResults.map { $0.map(\.framesPerSecond) }, rx = rxResults.map { $0.map(\.framesPerSecond) }
        let txMedians = tx.map(Bench.median), rxMedians = rx.map(Bench.median)
        // CPU per frame: the driver's always, the worker's where its schedstat was read.
        func driverCost(_ r: [BenchResult]) -> Double { Bench.median(r.map(\.driverNanosecondsPerFrame)) }
        func workerCost(_ r: [BenchResult]) -> Double? {
            let costs = r.compactMap(\.workerNanosecondsPerFrame)
            return costs.isEmpty ? nil : Bench.median(costs)
        }
        func ratio(_ value: Double, _ base: Double) -> Double { base > 0 ? value / base : 0 }
        if json {
            let configs = variants.indices.map { i in
                ConfigsJSON.Config(name: variants[i].name, txPpsMedian: UInt64(txMedians[i]), txPps: tx[i].map { UInt64($0) },
                                   txRatio: format3(ratio(txMedians[i], txMedians[0])), rxPpsMedian: UInt64(rxMedians[i]),
                                   rxPps: rx[i].map { UInt64($0) }, rxRatio: format3(ratio(rxMedians[i], rxMedians[0])),
                                   txDriverNsPerFrame: driverCost(txResults[i]), txWorkerNsPerFrame: workerCost(txResults[i]),
                                   rxDriverNsPerFrame: driverCost(rxResults[i]), rxWorkerNsPerFrame: workerCost(rxResults[i]))
            }
            let round = rtt.map { ConfigsJSON.RoundTrips(count: $0.totalCount, p50: $0.valueAtPercentile(50), p90: $0.valueAtPercentile(90),
                                                         p99: $0.valueAtPercentile(99), max: $0.maxRecorded) }
            try DataOutput(json: true).emit(ConfigsJSON(kernel: KernelInfo.release(), frameSize: frameSize, trials: trials, seconds: seconds,
                                                        configs: configs, rttNs: round))
            return
        }
        // The name column as wide as the longest name, so every row lines up.
        let nameWidth = max(6, variants.map(\.name.count).max() ?? 0) + 2
        print("")
        print(pad("config", nameWidth) + pad("TX median pps", 15) + pad("(min–max)", 21) + pad("ratio", 8) + pad("RX median pps", 15) + pad("(min–max)", 21) + "ratio")
        for i in variants.indices {
            print(pad(variants[i].name, nameWidth) + pad(String(Int(txMedians[i])), 15) + pad("(\(Int(tx[i].min()!))–\(Int(tx[i].max()!)))", 21)
                  + pad(format3(ratio(txMedians[i], txMedians[0])), 8)
                  + pad(String(Int(rxMedians[i])), 15) + pad("(\(Int(rx[i].min()!))–\(Int(rx[i].max()!)))", 21)
                  + format3(ratio(rxMedians[i], rxMedians[0])))
        }
        print("")
        print(pad("config", nameWidth) + pad("TX driver ns/f", 16) + pad("TX worker ns/f", 16) + pad("RX driver ns/f", 16) + "RX worker ns/f")
        for i in variants.indices {
            let worker = { (r: [BenchResult]) in workerCost(r).map { String(Int($0)) } ?? "-" }
            print(pad(variants[i].name, nameWidth) + pad(String(Int(driverCost(txResults[i]))), 16) + pad(worker(txResults[i]), 16)
                  + pad(String(Int(driverCost(rxResults[i]))), 16) + worker(rxResults[i]))
        }
        for variant in variants { print("  \(variant.name): \(variant.summary)") }
        print("ratios are against \(variants[0].name), measured side by side in this run; absolute numbers do not carry across runs or machines")
        if let rtt {
            let us = { (ns: UInt64) in format3(Double(ns) / 1000) }
            print("round trip (driver → vhost → host ICMP → vhost → driver, \(variants[0].name)), \(rtt.totalCount) samples: p50 \(us(rtt.valueAtPercentile(50))) µs, p90 \(us(rtt.valueAtPercentile(90))) µs, p99 \(us(rtt.valueAtPercentile(99))) µs, max \(us(rtt.maxRecorded)) µs")
        }
    }

    func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }
    func format3(_ value: Double) -> String { fixed(value, places: 3) }
}
