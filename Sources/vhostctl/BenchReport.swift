import DatapathMeasure
import Vhost

/// The results of `bench backends`, and the ways to show them.
struct BenchReport {
    var combinations: [BenchSettings]
    var results: [[BenchResult]]
    var baseline: BenchBackend
    var environment: BenchEnvironment
    var trials: Int
    var seconds: Double
    var warmup: Double
    var xdpDrop: Bool
    var workerCPU: Int?
    var driverCPU: Int?

    struct Summary {
        var median: Double, min: Double, max: Double
        init(_ values: [Double]) {
            median = Bench.median(values)
            min = values.min() ?? 0
            max = values.max() ?? 0
        }
    }

    func pps(_ i: Int) -> Summary { Summary(results[i].map(\.framesPerSecond)) }
    func driverCost(_ i: Int) -> Summary { Summary(results[i].map(\.driverNanosecondsPerFrame)) }
    func workerCost(_ i: Int) -> Summary? {
        let values = results[i].compactMap(\.workerNanosecondsPerFrame)
        return values.isEmpty ? nil : Summary(values)
    }

    /// The baseline combination for `i`: the baseline backend in the same scenario and frame
    /// size (its first ring size, mode and EVENT_IDX setting).
    func baselineIndex(for i: Int) -> Int? {
        let c = combinations[i]
        return combinations.firstIndex { $0.backend == baseline && $0.scenario == c.scenario && $0.frameSize == c.frameSize }
    }

    func ratio(_ i: Int) -> Double? {
        guard let b = baselineIndex(for: i) else { return nil }
        let base = pps(b).median
        return base > 0 ? pps(i).median / base : nil
    }

    func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }
    func ns(_ value: Double) -> String { fixed(value, places: value >= 100 ? 0 : 1) }

    func table() -> String {
        var lines = [""]
        lines.append(pad("scenario", 9) + pad("backend", 9) + pad("size", 6) + pad("ring", 6) + pad("mode", 10) + pad("evidx", 6)
                     + pad("pps median", 12) + pad("(min–max)", 22) + pad("Gbit/s", 8) + pad("ratio", 7)
                     + pad("driver ns/f", 12) + pad("worker ns/f", 12) + pad("kicks/f", 8) + pad("calls/f", 8) + "far side")
        for i in combinations.indices {
            let c = combinations[i], p = pps(i)
            let vhost = c.backend == .vhost
            let farSide: String
            let r = results[i]
            switch c.scenario {
            case .tx: farSide = "tap counted \(r.map(\.transmitted).reduce(0, +)) of \(r.map(\.transmitSent).reduce(0, +)) sent\(c.xdpDrop ? " (XDP drop)" : "")"
            case .rx: farSide = "\(r.first?.receiveSource ?? ""); tap passed \(r.map(\.receiveTapPassed).reduce(0, +)), dropped \(r.map(\.receiveTapDropped).reduce(0, +))"
            case .bidir: farSide = "tap counted \(r.map(\.transmitted).reduce(0, +)) TX; \(r.first?.receiveSource ?? "") RX, tap dropped \(r.map(\.receiveTapDropped).reduce(0, +))"
            }
            let gbps = Summary(r.map(\.gigabitsPerSecond)).median
            lines.append(pad(c.scenario.rawValue, 9) + pad(c.backend.rawValue, 9) + pad(String(c.frameSize), 6) + pad(vhost ? String(c.queueSize) : "-", 6)
                         + pad(vhost ? c.mode.rawValue : (c.backend == .tapPoll ? "spin" : "poll(2)"), 10) + pad(vhost ? (c.eventIndex ? "on" : "off") : "-", 6)
                         + pad(String(Int(p.median)), 12) + pad("(\(Int(p.min))–\(Int(p.max)))", 22) + pad(fixed(gbps, places: 3), 8)
                         + pad(ratio(i).map { fixed($0, places: 3) } ?? "-", 7)
                         + pad(ns(driverCost(i).median), 12) + pad(workerCost(i).map { ns($0.median) } ?? "-", 12)
                         + pad(vhost ? fixed(Summary(r.map(\.kicksPerFrame)).median, places: 3) : "-", 8)
                         + pad(vhost ? fixed(Summary(r.map(\.callsPerFrame)).median, places: 3) : "-", 8) + farSide)
        }
        lines.append("medians of \(trials) interleaved trials of \(fixed(seconds, places: 2)) s; ratios against \(baseline.rawValue) at the same scenario and frame size, measured side by side in this run")
        lines.append("driver ns/f: this thread's CPU time per frame; worker ns/f: the vhost worker's (none for the userspace path, whose whole cost is the driver's)")
        lines.append("pinning: worker \(workerCPU.map { "CPU \($0)" } ?? "not pinned"), driver \(driverCPU.map { "CPU \($0)" } ?? "not pinned")")
        return lines.joined(separator: "\n")
    }

    /// testpmd's "show port stats" shape, per combination (summed over the trials).
    func statisticsBlocks() -> String {
        combinations.indices.map { i in
            let c = combinations[i], r = results[i]
            let title = "  ######################## \(c.scenario.rawValue) \(c.backend.rawValue) \(c.frameSize) B ########################"
            return """
            \(title)
              RX-packets: \(r.map(\.received).reduce(0, +))    RX-missed: \(r.map(\.receiveTapDropped).reduce(0, +))    RX-bytes: \(r.map(\.received).reduce(0, +) * UInt64(c.frameSize))
              TX-packets: \(r.map(\.transmitted).reduce(0, +))    TX-errors: \(r.map(\.transmitSent).reduce(0, +) &- r.map(\.transmitted).reduce(0, +))    TX-bytes: \(r.map(\.transmitted).reduce(0, +) * UInt64(c.frameSize))
              Throughput (since last show)
              Rx-pps: \(c.scenario == .tx ? 0 : Int(pps(i).median))    Tx-pps: \(c.scenario == .rx ? 0 : Int(pps(i).median))
              \(String(repeating: "#", count: title.count - 2))
            """
        }.joined(separator: "\n")
    }

    func json() -> JSON {
        func double(_ value: Double) -> JSON { value.isFinite ? .raw(fixed(value, places: 3)) : .null }
        return .object([
            ("environment", .object([("kernel", .string(environment.kernel)), ("cpu_model", .string(environment.cpuModel)), ("cpus", .number(UInt64(environment.cpus))),
                                     ("emulated", .bool(environment.emulated)), ("rx_source", .string(environment.pktgen ? "pktgen" : "packet socket thread"))])),
            ("method", .object([("trials", .number(UInt64(trials))), ("seconds", double(seconds)), ("warmup_seconds", double(warmup)), ("interleaved", .bool(true)),
                                ("baseline", .string(baseline.rawValue)), ("xdp_drop", .bool(xdpDrop)),
                                ("worker_cpu", workerCPU.map { .number(UInt64($0)) } ?? .null), ("driver_cpu", driverCPU.map { .number(UInt64($0)) } ?? .null)])),
            ("results", .array(combinations.indices.map { i in
                let c = combinations[i], p = pps(i)
                return .object([
                    ("scenario", .string(c.scenario.rawValue)), ("backend", .string(c.backend.rawValue)), ("frame_size", .number(UInt64(c.frameSize))),
                    ("queue_size", .number(UInt64(c.queueSize))), ("mode", .string(c.mode.rawValue)), ("event_idx", .bool(c.eventIndex)),
                    ("pps", .object([("median", double(p.median)), ("min", double(p.min)), ("max", double(p.max))])),
                    ("gbps_median", double(Summary(results[i].map(\.gigabitsPerSecond)).median)),
                    ("ratio_to_baseline", ratio(i).map(double) ?? .null),
                    ("driver_ns_per_frame_median", double(driverCost(i).median)),
                    ("worker_ns_per_frame_median", workerCost(i).map { double($0.median) } ?? .null),
                    ("trials", .array(results[i].map { r in
                        .object([("frames", .number(r.frames)), ("seconds", double(r.seconds)), ("pps", double(r.framesPerSecond)),
                                 ("tx_sent", .number(r.transmitSent)), ("tx_counted_by_tap", .number(r.transmitted)), ("tx_dropped_at_tap", .number(r.transmitDroppedAtTap)),
                                 ("rx_received", .number(r.received)), ("rx_tap_passed", .number(r.receiveTapPassed)), ("rx_tap_dropped", .number(r.receiveTapDropped)),
                                 ("rx_source", .string(r.receiveSource)),
                                 ("driver_cpu_ns", .number(r.cpu.driverNanoseconds)), ("worker_cpu_ns", r.cpu.workerNanoseconds.map { .number($0) } ?? .null),
                                 ("kicks", .number(r.kicks)), ("calls", .number(r.calls))])
                    })),
                ])
            })),
        ])
    }

    func csv() -> String {
        var rows = ["scenario,backend,frame_size,queue_size,mode,event_idx,trial,seconds,frames,pps,gbps,tx_sent,tx_counted_by_tap,rx_received,rx_tap_passed,rx_tap_dropped,rx_source,driver_cpu_ns,worker_cpu_ns,driver_ns_per_frame,worker_ns_per_frame,kicks,calls"]
        for i in combinations.indices {
            let c = combinations[i]
            for (t, r) in results[i].enumerated() {
                var fields: [String] = [c.scenario.rawValue, c.backend.rawValue, String(c.frameSize), String(c.queueSize), c.mode.rawValue]
                fields.append(c.eventIndex ? "on" : "off")
                fields += [String(t + 1), fixed(r.seconds, places: 4), String(r.frames), fixed(r.framesPerSecond, places: 1), fixed(r.gigabitsPerSecond, places: 4)]
                fields += [String(r.transmitSent), String(r.transmitted), String(r.received), String(r.receiveTapPassed), String(r.receiveTapDropped), r.receiveSource]
                fields += [String(r.cpu.driverNanoseconds), r.cpu.workerNanoseconds.map { String($0) } ?? "", fixed(r.driverNanosecondsPerFrame, places: 1)]
                fields += [r.workerNanosecondsPerFrame.map { fixed($0, places: 1) } ?? "", String(r.kicks), String(r.calls)]
                rows.append(fields.joined(separator: ","))
            }
        }
        return rows.joined(separator: "\n") + "\n"
    }

    /// Charts per scenario: pps by frame size per backend, and CPU per frame per backend (the
    /// driver's and, for vhost, the worker's).
    func svg() -> String {
        var charts: [BarChart] = []
        let sizes = Array(Set(combinations.map(\.frameSize))).sorted()
        for scenario in BenchScenario.allCases where combinations.contains(where: { $0.scenario == scenario }) {
            // One series per distinct backend setting, in the order they ran.
            var keys: [String] = []
            for c in combinations where c.scenario == scenario {
                let key = BenchReport.seriesName(c)
                if !keys.contains(key) { keys.append(key) }
            }
            func index(_ key: String, _ size: Int) -> Int? {
                combinations.indices.first { combinations[$0].scenario == scenario && combinations[$0].frameSize == size && BenchReport.seriesName(combinations[$0]) == key }
            }
            charts.append(BarChart(title: "\(scenario.rawValue.uppercased()): frames per second by frame size", valueLabel: "frames/s (median, min–max)",
                                   categories: sizes.map { "\($0) B" },
                                   series: keys.map { key in
                                       BarChart.Series(name: key, values: sizes.map { size in index(key, size).map { let p = pps($0); return (p.median, p.min, p.max) } })
                                   }))
            var cpuSeries: [BarChart.Series] = []
            for key in keys {
                cpuSeries.append(BarChart.Series(name: "\(key): driver", values: sizes.map { size in index(key, size).map { let d = driverCost($0); return (d.median, d.min, d.max) } }))
                if sizes.contains(where: { size in index(key, size).flatMap(workerCost) != nil }) {
                    cpuSeries.append(BarChart.Series(name: "\(key): worker", values: sizes.map { size in index(key, size).flatMap(workerCost).map { ($0.median, $0.min, $0.max) } }))
                }
            }
            charts.append(BarChart(title: "\(scenario.rawValue.uppercased()): CPU per frame", valueLabel: "ns of CPU per frame", categories: sizes.map { "\($0) B" }, series: cpuSeries))
        }
        let caption = "kernel \(environment.kernel), \(environment.cpuModel) × \(environment.cpus)\(environment.emulated ? " (emulated: ratios within this run only)" : ""); medians of \(trials) interleaved trials of \(fixed(seconds, places: 2)) s\(xdpDrop ? "; XDP drop on the tap" : "")"
        return BarChart.document(charts, caption: caption)
    }

    static func seriesName(_ c: BenchSettings) -> String {
        switch c.backend {
        case .vhost: "vhost \(c.mode.rawValue)\(c.eventIndex ? "" : " no-evidx") ring \(c.queueSize)"
        case .tap: "tap (userspace, poll(2))"
        case .tapPoll: "tap (userspace, spinning)"
        }
    }
}
