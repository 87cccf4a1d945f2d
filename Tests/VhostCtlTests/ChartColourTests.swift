@testable import DatapathMeasure
import Testing
@testable import vhostctl

/// bench backends --svg: a series has one colour in every panel of the document.
@Suite struct ChartColourTests {
    /// A report of a vhost backend (with its worker's CPU) and the userspace tap path, at two
    /// frame sizes, as `bench backends` makes it.
    static func report() -> BenchReport {
        var combinations: [BenchSettings] = []
        var results: [[BenchResult]] = []
        for backend in [BenchBackend.vhost, .tap] {
            for size in [64, 1500] {
                let settings = BenchSettings(backend: backend, scenario: .tx, frameSize: size)
                var result = BenchResult(settings: settings)
                result.transmitted = 1_000_000
                result.seconds = 1
                result.cpu = CPUCost(driverNanoseconds: 100_000_000, workerNanoseconds: backend == .vhost ? 300_000_000 : nil)
                combinations.append(settings)
                results.append([result, result])
            }
        }
        return BenchReport(combinations: combinations, results: results, baseline: .tap,
                           environment: BenchEnvironment(kernel: "test", cpuModel: "test", cpus: 2, emulated: false, pktgen: false),
                           trials: 2, seconds: 1, warmup: 0, xdpDrop: false, driverCPU: nil)
    }

    /// (series name, fill colour) of every bar in the document, from each bar's
    /// `<rect … fill="C"><title>NAME SIZE: …` element.
    static func bars(_ svg: String) -> [(name: String, colour: String)] {
        svg.split(separator: "\n").map(String.init).compactMap { (line: String) -> (String, String)? in
            guard line.hasPrefix("<rect"), let fill = line.firstRange(of: "fill=\""), let title = line.firstRange(of: "<title>") else { return nil }
            let colour = line[fill.upperBound...].prefix { $0 != "\"" }
            let text = line[title.upperBound...].prefix { $0 != "<" }
            // The title is "NAME SIZE B: VALUE": the name is what comes before the frame size.
            guard let size = text.firstRange(of: " 64 B:") ?? text.firstRange(of: " 1500 B:") else { return nil }
            return (String(text[..<size.lowerBound]), String(colour))
        }
    }

    @Test func aSeriesKeepsItsColourInEveryPanel() {
        let bars = Self.bars(Self.report().svg())
        let names = Set(bars.map(\.name))
        #expect(names.count == 5, "vhost and tap, each as a rate series and as driver CPU, plus the vhost worker: \(names.sorted())")
        var colourOf: [String: String] = [:]
        for bar in bars {
            // A backend's rate bars and its driver-CPU bars are the same series.
            let series = bar.name.hasSuffix(": driver") ? String(bar.name.dropLast(": driver".count)) : bar.name
            if let known = colourOf[series] { #expect(known == bar.colour, "\(series) is \(known) in one panel and \(bar.colour) in another") }
            colourOf[series] = bar.colour
        }
        // No two series share a colour (the worker is a tint of its backend's colour, not the tap's).
        #expect(Set(colourOf.values).count == colourOf.count, "\(colourOf)")
        #expect(colourOf.keys.contains { $0.hasSuffix(": worker") })
    }

    @Test func tintMixesWithWhite() {
        #expect(SeriesColours.tint("#000000") == "#7f7f7f")
        #expect(SeriesColours.tint("#ff7f0e") == "#ffbf86")
        #expect(SeriesColours.tint("not a colour") == "not a colour")
    }
}
