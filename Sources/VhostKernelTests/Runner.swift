import DatapathSuite
import Glibc
import Vhost

struct KernelTest: Sendable {
    let name: String
    let body: @Sendable () throws -> Void
}

/// Failures of the kernel tier are the suite's `TestFailure`s.
typealias KernelTestFailure = TestFailure

enum KernelTestRunner {
    /// Runs the kernel tier's own tests, then the datapath suite against the kernel; prints
    /// each one's closing line, and exits non-zero when anything failed.
    static func main(tests: [KernelTest]) {
        let args = CommandLine.arguments.dropFirst()
        let filter = args.first { !$0.hasPrefix("-") }
        if args.contains("--list") {
            for test in tests { print(test.name) }
            for test in DatapathSuite.cases(KernelHarness()) { print("datapath: \(test.name)") }
            exit(0)
        }
        var info = utsname()
        uname(&info)
        say("  kernel release: " + withUnsafeBytes(of: info.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) })
        var passed = 0, failed = 0, refusals = 0
        var failures: [String] = []
        for test in tests where filter == nil || test.name.contains(filter!) {
            let start = ContinuousClock.now
            _ = takeRefusalMark()
            do {
                try test.body()
                passed += 1
                let refusal = takeRefusalMark()
                if refusal { refusals += 1 }
                say("PASS\(refusal ? " (refusal checked)" : "") \(test.name) (\(formatted(start.duration(to: .now).inSeconds)) s)")
            } catch {
                failed += 1
                failures.append(test.name)
                say("FAIL \(test.name) (\(formatted(start.duration(to: .now).inSeconds)) s): \(error)")
            }
        }
        let suite = args.contains("--no-datapath-suite") ? (passed: 0, failed: 0, failures: []) : DatapathSuite.run(KernelHarness(), filter: filter)
        if !failures.isEmpty { say("failed: \(failures.joined(separator: ", "))") }
        sayDetail("kernel tier", exercised: passed - refusals, refusals: refusals)
        say("kernel tier: \(passed) passed, \(failed) failed")
        exit(failed == 0 && suite.failed == 0 && passed + suite.passed > 0 ? 0 : 1)
    }

    static func formatted(_ seconds: Double) -> String {
        let tenths = Int((seconds * 100).rounded())
        return "\(tenths / 100).\(tenths % 100 < 10 ? "0" : "")\(tenths % 100)"
    }
}
