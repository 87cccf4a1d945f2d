import DatapathMeasure
import FoundationEssentials
import Histogram
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

    /// The round trips of combination `i` over all its trials (nil for throughput scenarios).
    func latency(_ i: Int) -> (histogram: Histogram<UInt64>, lost: UInt64, completed: UInt64)? {
        let outcomes = results[i].compactMap(\.roundTrips)
        guard var merged = outcomes.first?.histogram else { return nil }
        for outcome in outcomes.dropFirst() { merged.add(outcome.histogram) }
        return (merged, outcomes.map(\.lost).reduce(0, +), outcomes.map(\.completed).reduce(0, +))
    }

    static let reportedPercentiles: [(name: String, percentile: Double)] = [("p50", 50), ("p99", 99), ("p99_9", 99.9)]

    /// "p50 … µs, p99 …, p99.9 …, max …".
    static func describe(_ histogram: Histogram<UInt64>) -> String {
        let us = { (ns: UInt64) in fixed(Double(ns) / 1000, places: 1) }
        return "p50 \(us(histogram.valueAtPercentile(50))) µs, p99 \(us(histogram.valueAtPercentile(99))), p99.9 \(us(histogram.valueAtPercentile(99.9))), max \(us(histogram.maxRecorded))"
    }

    /// The baseline combination for `i`: the baseline backend in the same scenario, frame size
    /// and queue pair count (its first ring size, mode and EVENT_IDX setting).
    func baselineIndex(for i: Int) -> Int? {
        let c = combinations[i]
        return combinations.firstIndex { $0.backend == baseline && $0.scenario == c.scenario && $0.frameSize == c.frameSize && $0.queuePairs == c.queuePairs }
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
        lines.append(pad("scenario", 9) + pad("backend", 9) + pad("size", 6) + pad("pairs", 6) + pad("ring", 6) + pad("mode", 10) + pad("evidx", 6)
                     + pad("pps median", 12) + pad("(min–max)", 22) + pad("Gbit/s", 8) + pad("ratio", 7)
                     + pad("driver ns/f", 12) + pad("worker ns/f", 12) + pad("kicks/f", 8) + pad("calls/f", 8) + "far side")
        for i in combinations.indices {
            let c = combinations[i], p = pps(i)
            let vhost = c.backend == .vhost
            let farSide: String
            let r = results[i]
            switch c.scenario {
            case .tx: farSide = "tap counted \(r.map(\.transmitted).reduce(0, +)) of \(r.map(\.transmitSent).reduce(0, +)) sent\(c.xdpDrop ? " (XDP drop)" : "")\(c.segmentationOffload ? " TSO superframes, \(r.map(\.transmittedBytes).reduce(0, +)) bytes; host stack: \(r.first?.segmentationSeen ?? "")" : "")"
            case .rx: farSide = "\(r.first?.receiveSource ?? ""); tap passed \(r.map(\.receiveTapPassed).reduce(0, +)), dropped \(r.map(\.receiveTapDropped).reduce(0, +))"
            case .bidir: farSide = "tap counted \(r.map(\.transmitted).reduce(0, +)) TX; \(r.first?.receiveSource ?? "") RX, tap dropped \(r.map(\.receiveTapDropped).reduce(0, +))"
            case .ping, .udpRR:
                let l = latency(i)
                farSide = "round trips: " + (l.map { BenchReport.describe($0.histogram) + "; \($0.lost) lost" } ?? "none")
            }
            let gbps = Summary(r.map(\.gigabitsPerSecond)).median
            lines.append(pad(c.scenario.rawValue, 9) + pad(c.backend.rawValue + (c.batch != 64 && !c.scenario.isRoundTrip ? "×\(c.batch)" : ""), 9) + pad(String(c.frameSize), 6) + pad(String(c.queuePairs), 6) + pad(vhost ? String(c.queueSize) : "-", 6)
                         + pad(vhost ? c.mode.rawValue : (c.backend == .tapPoll ? "spin" : "poll(2)"), 10) + pad(vhost ? (c.eventIndex ? "on" : "off") : "-", 6)
                         + pad(String(Int(p.median)), 12) + pad("(\(Int(p.min))–\(Int(p.max)))", 22) + pad(c.scenario.isRoundTrip ? "-" : fixed(gbps, places: 3), 8)
                         + pad(ratio(i).map { fixed($0, places: 3) } ?? "-", 7)
                         + pad(ns(driverCost(i).median), 12) + pad(workerCost(i).map { ns($0.median) } ?? "-", 12)
                         + pad(vhost ? fixed(Summary(r.map(\.kicksPerFrame)).median, places: 3) : "-", 8)
                         + pad(vhost ? fixed(Summary(r.map(\.callsPerFrame)).median, places: 3) : "-", 8)
                         + (vhost && !BenchReport.variation(c).isEmpty ? "[\(BenchReport.variation(c).trimmingCharacters(in: " "))] " : "") + farSide)
        }
        lines.append("medians of \(trials) interleaved trials of \(fixed(seconds, places: 2)) s; ratios against \(baseline.rawValue) at the same scenario and frame size, measured side by side in this run")
        lines.append("driver ns/f: this thread's CPU time per frame; worker ns/f: the vhost worker's (none for the userspace path, whose whole cost is the driver's)")
        if combinations.contains(where: \.scenario.isRoundTrip) {
            lines.append("ping, udp-rr: pps is round trips per second and CPU is per round trip; latencies are over every trial (hdrhistogram), the first \(RoundTrips.unrecorded) round trips of each left out")
        }
        let variations = combinations.compactMap { c in c.backend == .vhost ? BenchReport.variation(c) : nil }
        if variations.contains(where: { !$0.isEmpty }) { lines.append("vhost settings beyond the columns: " + Set(variations.filter { !$0.isEmpty }).sorted().joined(separator: "; ")) }
        lines.append("pinning: worker \(Set(combinations.map { $0.workerCPU.map { "CPU \($0)" } ?? "not pinned" }).sorted().joined(separator: " / ")), driver \(driverCPU.map { "CPU \($0)" } ?? "not pinned")")
        return lines.joined(separator: "\n")
    }

    /// testpmd's "show port stats" shape, per combination (summed over the trials).
    func statisticsBlocks() -> String {
        combinations.indices.map { i in
            let c = combinations[i], r = results[i]
            let title = "  ######################## \(c.scenario.rawValue) \(c.backend.rawValue) \(c.frameSize) B\(c.queuePairs > 1 ? ", \(c.queuePairs) queue pairs" : "") ########################"
            if let l = latency(i) {
                return """
                \(title)
                  Requests: \(l.completed + l.lost)    Replies: \(l.completed)    Lost: \(l.lost)
                  Round trips/s: \(Int(pps(i).median))    \(BenchReport.describe(l.histogram))
                  \(String(repeating: "#", count: title.count - 2))
                """
            }
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

    /// The `--json` document: every setting, the medians and spreads, and every trial's raw counts.
    struct JSONDocument: Encodable {
        struct Environment: Encodable { var kernel: String, cpuModel: String, cpus: Int, emulated: Bool, rxSource: String }
        struct Method: Encodable {
            var trials: Int, seconds: Double, warmupSeconds: Double, interleaved: Bool
            var baseline: String, xdpDrop: Bool, driverCpu: Int?
        }
        struct Spread: Encodable { var median: Double, min: Double, max: Double }
        struct Latency: Encodable {
            /// Round trips recorded; `completed`: all that got their reply (the first ones too).
            var count: UInt64, completed: UInt64, p50: UInt64, p99: UInt64, p99_9: UInt64, max: UInt64, lost: UInt64
            init(_ histogram: Histogram<UInt64>, lost: UInt64, completed: UInt64) {
                count = histogram.totalCount; self.completed = completed; self.lost = lost
                p50 = histogram.valueAtPercentile(50); p99 = histogram.valueAtPercentile(99); p99_9 = histogram.valueAtPercentile(99.9)
                max = histogram.maxRecorded
            }
        }
        struct Trial: Encodable {
            var frames: UInt64, seconds: Double, pps: Double
            var txSent: UInt64, txCountedByTap: UInt64, txBytesCountedByTap: UInt64, txDroppedAtTap: UInt64
            var rxReceived: UInt64, rxTapPassed: UInt64, rxTapDropped: UInt64, rxSource: String
            /// Per queue pair, in order.
            var queueTxSent: [UInt64], queueRxReceived: [UInt64]
            /// TSO: what the host stack saw of a first superframe, and whether it was one GSO packet as sent.
            var tsoSeen: String?, tsoVerified: Bool?
            var driverCpuNs: UInt64, workerCpuNs: UInt64?
            var kicks: UInt64, calls: UInt64
            var latencyNs: Latency?
        }
        struct Result: Encodable {
            var scenario: String, backend: String, frameSize: Int, tso: Bool, queuePairs: Int
            var queueSize: Int, mode: String, eventIdx: Bool, batch: Int, busyloopUs: UInt32, workerCpu: Int?, rxCoalesce: String, rxCoalesceDelayMs: Int32?
            /// The vhost driver's choices (vhost runs; the userspace path has none).
            var layout: String?, mrgRxbuf: Bool?, inOrder: Bool?, hugePages: Bool?, bufferSize: Int?, netHeader: String?
            var latencyNs: Latency?
            var pps: Spread, gbpsMedian: Double, ratioToBaseline: Double?
            var driverNsPerFrameMedian: Double, workerNsPerFrameMedian: Double?
            var kicksPerFrameMedian: Double?, callsPerFrameMedian: Double?
            var trials: [Trial]
        }
        var environment: Environment
        var method: Method
        var results: [Result]
    }

    func jsonDocument() -> JSONDocument {
        let environment = JSONDocument.Environment(kernel: environment.kernel, cpuModel: environment.cpuModel, cpus: environment.cpus,
                                                   emulated: environment.emulated, rxSource: environment.pktgen ? "pktgen" : "packet socket thread")
        let method = JSONDocument.Method(trials: trials, seconds: seconds, warmupSeconds: warmup, interleaved: true,
                                         baseline: baseline.rawValue, xdpDrop: xdpDrop, driverCpu: driverCPU)
        return JSONDocument(environment: environment, method: method, results: combinations.indices.map(resultJSON))
    }

    func resultJSON(_ i: Int) -> JSONDocument.Result {
        let c = combinations[i], p = pps(i), r = results[i], vhost = c.backend == .vhost
        let coalesces = !BenchBackends.coalescingLabel(c).isEmpty
        return JSONDocument.Result(
            scenario: c.scenario.rawValue, backend: c.backend.rawValue, frameSize: c.frameSize, tso: c.segmentationOffload, queuePairs: c.queuePairs,
            queueSize: Int(c.queueSize), mode: c.mode.rawValue, eventIdx: c.eventIndex, batch: c.batch, busyloopUs: c.busyloopMicroseconds,
            workerCpu: c.workerCPU, rxCoalesce: coalesces ? c.receiveCoalescing.description : "0",
            rxCoalesceDelayMs: coalesces ? c.receiveCoalescingDelayMilliseconds : nil,
            layout: vhost ? c.descriptorLayout.rawValue : nil, mrgRxbuf: vhost ? c.mergeableReceiveBuffers : nil, inOrder: vhost ? c.inOrder : nil,
            hugePages: vhost ? c.hugePages : nil, bufferSize: vhost ? BackendComparison.configuration(c, tapName: "").bufferSize : nil,
            netHeader: vhost ? c.effectiveNetHeader.rawValue : nil, latencyNs: latency(i).map { JSONDocument.Latency($0.histogram, lost: $0.lost, completed: $0.completed) },
            pps: JSONDocument.Spread(median: p.median, min: p.min, max: p.max), gbpsMedian: Summary(r.map(\.gigabitsPerSecond)).median,
            ratioToBaseline: ratio(i), driverNsPerFrameMedian: driverCost(i).median, workerNsPerFrameMedian: workerCost(i)?.median,
            kicksPerFrameMedian: vhost ? Summary(r.map(\.kicksPerFrame)).median : nil, callsPerFrameMedian: vhost ? Summary(r.map(\.callsPerFrame)).median : nil,
            trials: r.map { t in
                JSONDocument.Trial(frames: t.frames, seconds: t.seconds, pps: t.framesPerSecond,
                                   txSent: t.transmitSent, txCountedByTap: t.transmitted, txBytesCountedByTap: t.transmittedBytes, txDroppedAtTap: t.transmitDroppedAtTap,
                                   rxReceived: t.received, rxTapPassed: t.receiveTapPassed, rxTapDropped: t.receiveTapDropped, rxSource: t.receiveSource,
                                   queueTxSent: t.queueSent, queueRxReceived: t.queueReceived,
                                   tsoSeen: t.segmentationSeen, tsoVerified: t.segmentationVerified,
                                   driverCpuNs: t.cpu.driverNanoseconds, workerCpuNs: t.cpu.workerNanoseconds, kicks: t.kicks, calls: t.calls,
                                   latencyNs: t.roundTrips.map { JSONDocument.Latency($0.histogram, lost: $0.lost, completed: $0.completed) })
            })
    }

    func csv() -> String {
        var rows = ["scenario,backend,frame_size,queue_pairs,queue_size,mode,event_idx,trial,seconds,frames,pps,gbps,tx_sent,tx_counted_by_tap,rx_received,rx_tap_passed,rx_tap_dropped,rx_source,driver_cpu_ns,worker_cpu_ns,driver_ns_per_frame,worker_ns_per_frame,kicks,calls,batch,busyloop_us,worker_cpu,p50_ns,p99_ns,p99_9_ns,max_ns,round_trips_lost,layout,mrg_rxbuf,in_order,huge_pages,buffer_size,net_header"]
        for i in combinations.indices {
            let c = combinations[i]
            for (t, r) in results[i].enumerated() {
                var fields: [String] = [c.scenario.rawValue, c.backend.rawValue, String(c.frameSize), String(c.queuePairs), String(c.queueSize), c.mode.rawValue]
                fields.append(c.eventIndex ? "on" : "off")
                fields += [String(t + 1), fixed(r.seconds, places: 4), String(r.frames), fixed(r.framesPerSecond, places: 1), fixed(r.gigabitsPerSecond, places: 4)]
                fields += [String(r.transmitSent), String(r.transmitted), String(r.received), String(r.receiveTapPassed), String(r.receiveTapDropped), r.receiveSource]
                fields += [String(r.cpu.driverNanoseconds), r.cpu.workerNanoseconds.map { String($0) } ?? "", fixed(r.driverNanosecondsPerFrame, places: 1)]
                fields += [r.workerNanosecondsPerFrame.map { fixed($0, places: 1) } ?? "", String(r.kicks), String(r.calls)]
                fields += [String(c.batch), String(c.busyloopMicroseconds), c.workerCPU.map { String($0) } ?? ""]
                if let trips = r.roundTrips {
                    fields += BenchReport.reportedPercentiles.map { String(trips.histogram.valueAtPercentile($0.percentile)) }
                    fields += [String(trips.histogram.maxRecorded), String(trips.lost)]
                } else {
                    fields += ["", "", "", "", ""]
                }
                if c.backend == .vhost {
                    fields += [c.descriptorLayout.rawValue, c.mergeableReceiveBuffers ? "on" : "off", c.inOrder ? "on" : "off", c.hugePages ? "on" : "off",
                               String(BackendComparison.configuration(c, tapName: "").bufferSize), c.effectiveNetHeader.rawValue]
                } else {
                    fields += ["", "", "", "", "", ""]
                }
                rows.append(CSV.row(fields))
            }
        }
        return rows.joined(separator: "\n") + "\n"
    }

    /// Charts per scenario: pps by frame size per backend, and CPU per frame per backend (the
    /// driver's and, for vhost, the worker's).
    func svg() -> String {
        var charts: [any Chart] = []
        // A series has one colour in every panel of the document.
        var colours = SeriesColours()
        let sizes = Array(Set(combinations.map(\.frameSize))).sorted()
        for scenario in BenchScenario.allCases where combinations.contains(where: { $0.scenario == scenario }) {
            // One series per distinct backend setting, in the order they ran.
            var keys: [String] = []
            for c in combinations where c.scenario == scenario {
                let key = seriesName(c)
                if !keys.contains(key) { keys.append(key) }
            }
            func index(_ key: String, _ size: Int) -> Int? {
                combinations.indices.first { combinations[$0].scenario == scenario && combinations[$0].frameSize == size && seriesName(combinations[$0]) == key }
            }
            let unit = scenario.isRoundTrip ? "round trip" : "frame"
            charts.append(BarChart(title: "\(scenario.rawValue.uppercased()): \(unit)s per second by frame size", valueLabel: "\(unit)s/s (median, min–max)",
                                   categories: sizes.map { "\($0) B" },
                                   series: keys.map { key in
                                       BarChart.Series(name: key, values: sizes.map { size in index(key, size).map { let p = pps($0); return (p.median, p.min, p.max) } }, colour: colours.colour(for: key))
                                   }))
            if sizes.count > 1 && !scenario.isRoundTrip {
                // Frames per second hide the big frames; bits per second compare every size.
                charts.append(BarChart(title: "\(scenario.rawValue.uppercased()): Gbit/s by frame size", valueLabel: "Gbit/s of frames (median, min–max)",
                                       categories: sizes.map { "\($0) B" },
                                       series: keys.map { key in
                                           BarChart.Series(name: key, values: sizes.map { size in index(key, size).map { let g = Summary(results[$0].map(\.gigabitsPerSecond)); return (g.median, g.min, g.max) } }, colour: colours.colour(for: key))
                                       }))
            }
            var cpuSeries: [BarChart.Series] = []
            for key in keys {
                // The driver in the backend's colour, its worker in a tint of it.
                let colour = colours.colour(for: key)
                cpuSeries.append(BarChart.Series(name: "\(key): driver", values: sizes.map { size in index(key, size).map { let d = driverCost($0); return (d.median, d.min, d.max) } }, colour: colour))
                if sizes.contains(where: { size in index(key, size).flatMap(workerCost) != nil }) {
                    cpuSeries.append(BarChart.Series(name: "\(key): worker", values: sizes.map { size in index(key, size).flatMap(workerCost).map { ($0.median, $0.min, $0.max) } }, colour: SeriesColours.tint(colour)))
                }
            }
            charts.append(BarChart(title: "\(scenario.rawValue.uppercased()): CPU per \(unit)", valueLabel: "ns of CPU per \(unit)", categories: sizes.map { "\($0) B" }, series: cpuSeries))
            let pairCounts = Array(Set(combinations.filter { $0.scenario == scenario }.map(\.queuePairs))).sorted()
            if pairCounts.count > 1 {
                // Aggregate rate against queue pairs: one series per backend setting and frame size.
                var scaling: [(name: String, indices: [Int?])] = []
                for c in combinations where c.scenario == scenario {
                    let name = seriesBase(c) + (sizes.count > 1 ? ", \(c.frameSize) B" : "")
                    guard !scaling.contains(where: { $0.name == name }) else { continue }
                    scaling.append((name, pairCounts.map { pairs in
                        combinations.indices.first { let o = combinations[$0]; return o.scenario == scenario && o.frameSize == c.frameSize && o.queuePairs == pairs && seriesBase(o) == seriesBase(c) }
                    }))
                }
                charts.append(BarChart(title: "\(scenario.rawValue.uppercased()): scaling with queue pairs", valueLabel: "frames/s, all queues (median, min–max)",
                                       categories: pairCounts.map { "\($0) pair\($0 == 1 ? "" : "s")" },
                                       series: scaling.map { entry in BarChart.Series(name: entry.name, values: entry.indices.map { $0.map { let p = pps($0); return (p.median, p.min, p.max) } }, colour: colours.colour(for: entry.name)) }))
            }
            if scenario.isRoundTrip {
                // The latency CDF, one line per backend setting and frame size, up to p99.9 (the
                // max alone would squash the curve; it is in the table).
                var lines: [DistributionChart.Series] = []
                for key in keys {
                    for size in sizes {
                        guard let i = index(key, size), let l = latency(i), l.histogram.totalCount > 0 else { continue }
                        let percentiles = Array(stride(from: 0.0, through: 99.0, by: 1.0)) + [99.5, 99.9]
                        let name = sizes.count > 1 ? "\(key), \(size) B" : key
                        lines.append(DistributionChart.Series(name: name, points: percentiles.map { (Double(l.histogram.valueAtPercentile($0)) / 1000, $0) },
                                                              colour: colours.colour(for: name)))
                    }
                }
                charts.append(DistributionChart(title: "\(scenario.rawValue.uppercased()): round-trip latency, cumulative", valueLabel: "round trip (µs, logarithmic), up to p99.9", series: lines))
            }
        }
        let caption = "kernel \(environment.kernel), \(environment.cpuModel) × \(environment.cpus)\(environment.emulated ? " (emulated: ratios within this run only)" : ""); medians of \(trials) interleaved trials of \(fixed(seconds, places: 2)) s\(xdpDrop ? "; XDP drop on the tap" : "")"
        return BarChart.document(charts, caption: caption)
    }

    /// The chart series a combination belongs to: its backend and every setting that varies.
    func seriesName(_ c: BenchSettings, withPairs: Bool = true) -> String {
        let pairs = withPairs && Set(combinations.map(\.queuePairs)).count > 1 ? " ×\(c.queuePairs) pair\(c.queuePairs == 1 ? "" : "s")" : ""
        return seriesBase(c) + pairs
    }

    func seriesBase(_ c: BenchSettings) -> String {
        let batch = Set(combinations.map(\.batch)).count > 1 && !c.scenario.isRoundTrip ? " batch \(c.batch)" : ""
        switch c.backend {
        case .vhost: return "vhost \(c.mode.rawValue)\(c.eventIndex ? "" : " no-evidx") ring \(c.queueSize)\(batch)" + BenchReport.variation(c)
        case .tap: return "tap (userspace, poll(2))\(batch)"
        case .tapPoll: return "tap (userspace, spinning)\(batch)"
        }
    }

    /// The vhost settings that are not table columns, when not at their defaults.
    static func variation(_ c: BenchSettings) -> String {
        (c.busyloopMicroseconds > 0 ? " busyloop \(c.busyloopMicroseconds) µs" : "") + (c.workerCPU.map { " worker CPU \($0)" } ?? "")
            + BenchBackends.coalescingLabel(c) + BenchBackends.driverLabel(c)
    }
}
