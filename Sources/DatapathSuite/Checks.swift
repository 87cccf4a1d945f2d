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

/// Seconds on CLOCK_MONOTONIC.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
