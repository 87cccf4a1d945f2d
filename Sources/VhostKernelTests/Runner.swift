import Glibc
import Vhost

struct KernelTest: Sendable {
    let name: String
    let body: @Sendable () throws -> Void
}

struct KernelTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ message: String, file: StaticString = #fileID, line: UInt = #line) {
        description = "\(message) (\(file):\(line))"
    }
}

func expect(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
            file: StaticString = #fileID, line: UInt = #line) throws {
    if !condition() { throw KernelTestFailure(message(), file: file, line: line) }
}

enum KernelTestRunner {
    static func main(tests: [KernelTest]) {
        let args = CommandLine.arguments.dropFirst()
        let filter = args.first { !$0.hasPrefix("-") }
        if args.contains("--list") {
            for test in tests { print(test.name) }
            exit(0)
        }
        var info = utsname()
        uname(&info)
        say("  kernel release: " + withUnsafeBytes(of: info.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) })
        var passed = 0, failed = 0
        var failures: [String] = []
        for test in tests where filter == nil || test.name.contains(filter!) {
            let start = MonotonicClock.seconds()
            do {
                try test.body()
                passed += 1
                say("PASS \(test.name) (\(formatted(MonotonicClock.seconds() - start)) s)")
            } catch {
                failed += 1
                failures.append(test.name)
                say("FAIL \(test.name) (\(formatted(MonotonicClock.seconds() - start)) s): \(error)")
            }
        }
        if !failures.isEmpty { say("failed: \(failures.joined(separator: ", "))") }
        say("kernel tier: \(passed) passed, \(failed) failed")
        exit(failed == 0 && passed > 0 ? 0 : 1)
    }

    static func formatted(_ seconds: Double) -> String {
        let tenths = Int((seconds * 100).rounded())
        return "\(tenths / 100).\(tenths % 100 < 10 ? "0" : "")\(tenths % 100)"
    }
}

/// Prints a line and flushes, so that a crash or a VM timeout loses no output.
func say(_ line: String) {
    print(line)
    fflush(nil)
}
