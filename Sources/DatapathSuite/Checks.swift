import Glibc
import NetFormats

/// A failed check, with the place it was made.
public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String, file: StaticString = #fileID, line: UInt = #line) {
        description = "\(message) (\(file):\(line))"
    }
}

/// Throws a `TestFailure` with `message` unless `condition` holds.
public func expect(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                   file: StaticString = #fileID, line: UInt = #line) throws {
    if !condition() { throw TestFailure(message(), file: file, line: line) }
}

/// Prints a line and flushes, so that a crash or a VM timeout loses no output.
public func say(_ line: String) {
    print(line)
    fflush(nil)
}

/// Whether the test now running checked only a refusal: set by `refusalChecked(_:)`, read and
/// cleared by the runners, so that a summary counts "exercised" and "refusal checked" apart.
private let refusalFlag = RefusalFlag()
private final class RefusalFlag: @unchecked Sendable {
    // The runners run one test at a time on one thread; the lock keeps TSan's view honest.
    private var lock = pthread_mutex_t()
    private var value = false
    init() { pthread_mutex_init(&lock, nil) }
    func set(_ v: Bool) { pthread_mutex_lock(&lock); value = v; pthread_mutex_unlock(&lock) }
    func take() -> Bool { pthread_mutex_lock(&lock); defer { value = false; pthread_mutex_unlock(&lock) }; return value }
}

/// Says that this kernel cannot do what the test is about, and that the test checked the
/// kernel's real refusal instead: the test counts as "refusal checked", not "exercised".
public func refusalChecked(_ reason: String) {
    refusalFlag.set(true)
    say("  refusal checked: \(reason)")
}

/// Whether the test that just ran only checked a refusal (and clears the mark), for runners.
public func takeRefusalMark() -> Bool { refusalFlag.take() }

/// The closing detail line of a tier: `NAME detail: E exercised, R refusal checked`.
public func sayDetail(_ tier: String, exercised: Int, refusals: Int) {
    say("\(tier) detail: \(exercised) exercised, \(refusals) refusal checked")
}

/// Seconds on CLOCK_MONOTONIC.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
