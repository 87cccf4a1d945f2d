import Glibc

/// CLOCK_MONOTONIC, for deadlines and rates.
public enum MonotonicClock {
    /// Seconds on CLOCK_MONOTONIC.
    public static func seconds() -> Double { seconds(read(CLOCK_MONOTONIC)) }

    /// Nanoseconds on CLOCK_MONOTONIC.
    public static func nanoseconds() -> UInt64 {
        let ts = read(CLOCK_MONOTONIC)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Milliseconds on CLOCK_MONOTONIC.
    public static func milliseconds() -> Int { milliseconds(read(CLOCK_MONOTONIC)) }

    /// CLOCK_MONOTONIC_COARSE in milliseconds: the last tick (1–4 ms old at HZ 250 to 1000, 10 ms
    /// at HZ 100), read in the vDSO without touching the clocksource. For deadlines on hot paths:
    /// under emulation the clocksource may be an emulated HPET, where each `clock_gettime` of
    /// CLOCK_MONOTONIC is a system call that reads a device (docs/benchmarks.md, the RX profile).
    public static func coarseMilliseconds() -> Int { milliseconds(read(CLOCK_MONOTONIC_COARSE)) }

    /// CLOCK_MONOTONIC_COARSE in seconds, as `coarseMilliseconds`.
    public static func coarseSeconds() -> Double { seconds(read(CLOCK_MONOTONIC_COARSE)) }

    private static func read(_ clock: clockid_t) -> timespec {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return ts
    }

    private static func seconds(_ ts: timespec) -> Double { Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9 }
    private static func milliseconds(_ ts: timespec) -> Int { Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000 }
}
