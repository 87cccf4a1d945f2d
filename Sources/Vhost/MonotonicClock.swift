import Glibc

/// A wait of `total` milliseconds (0: one look, -1: for ever) timed by the coarse clock, which is
/// read at the start only when the wait has an end, and again only to go on after EINTR or a
/// ring error (then the wait may end up to a tick early or late). The event-fd and ring waits
/// share it: every RX wake-up pays for what is here (docs/benchmarks.md, the profile).
public struct CoarseWait: Sendable {
    /// The whole wait in milliseconds, as given.
    public let total: Int32
    let start: Int

    /// A wait of `milliseconds` starting now.
    public init(milliseconds: Int32) {
        total = milliseconds
        start = milliseconds > 0 ? MonotonicClock.coarseMilliseconds() : 0
    }

    /// What is left of the wait (0 and -1 stay as they are).
    public var left: Int32 {
        total > 0 ? Int32(clamping: max(0, start + Int(total) - MonotonicClock.coarseMilliseconds())) : total
    }
}

/// The coarse monotonic clock, for the ring loops only. Everything else measures time with the
/// standard library's `ContinuousClock` and `Duration` (see the extension below).
///
/// Why the ring loops keep their own: CLOCK_MONOTONIC_COARSE is the last tick (1–4 ms old at
/// HZ 250 to 1000, 10 ms at HZ 100), read in the vDSO without touching the clocksource. Under
/// emulation the clocksource may be an emulated HPET, where each precise `clock_gettime` — which
/// `ContinuousClock.now` is — becomes a system call that reads a device; measured in the RX
/// profile of docs/benchmarks.md. A deadline checked once per reaped batch does not need better
/// than a tick.
public enum MonotonicClock {
    /// CLOCK_MONOTONIC_COARSE in milliseconds, for deadlines on the hot paths (the ring loops:
    /// NetQueue, TransmitQueue, EventFD waits).
    public static func coarseMilliseconds() -> Int { milliseconds(read(CLOCK_MONOTONIC_COARSE)) }

    /// CLOCK_MONOTONIC_COARSE in seconds, as `coarseMilliseconds` (the benchmark's per-queue loop).
    public static func coarseSeconds() -> Double { seconds(read(CLOCK_MONOTONIC_COARSE)) }

    private static func read(_ clock: clockid_t) -> timespec {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return ts
    }

    private static func seconds(_ ts: timespec) -> Double { Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9 }
    private static func milliseconds(_ ts: timespec) -> Int { Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000 }
}

/// `Duration` in the units the reports and loops use. On Linux `ContinuousClock` is
/// CLOCK_BOOTTIME: it differs from CLOCK_MONOTONIC only by time the system spent suspended.
extension Duration {
    /// The duration in seconds (rates, reports).
    public var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }

    /// Whole milliseconds, toward zero; saturates at Int's bounds (poll timeouts).
    public var inMilliseconds: Int {
        let (seconds, attoseconds) = components
        let (milliseconds, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        if overflow { return seconds < 0 ? .min : .max }
        return Int(clamping: milliseconds) &+ Int(attoseconds / 1_000_000_000_000_000)
    }

    /// Whole nanoseconds, toward zero; 0 for a negative duration, UInt64.max above it (latency histograms).
    public var inNanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 || seconds > 0 else { return 0 }
        let (nanoseconds, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        let (total, carry) = nanoseconds.addingReportingOverflow(UInt64(clamping: attoseconds / 1_000_000_000))
        return carry ? .max : total
    }

    /// `seconds` as a duration that never traps: NaN and negatives are zero, and anything above
    /// a billion seconds (about 32 years) is a billion seconds.
    public static func clampedSeconds(_ seconds: Double) -> Duration {
        guard seconds > 0 else { return .zero }
        return .seconds(min(seconds, 1e9))
    }
}
