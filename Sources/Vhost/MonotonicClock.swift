import Glibc

/// CLOCK_MONOTONIC, for deadlines and rates.
public enum MonotonicClock {
    public static func seconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    public static func milliseconds() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
    }

    /// CLOCK_MONOTONIC_COARSE in milliseconds: the last tick (1–4 ms old), read in the vDSO
    /// without touching the clocksource. For deadlines on hot paths: under emulation the
    /// clocksource may be an emulated HPET, where each `clock_gettime` of CLOCK_MONOTONIC is a
    /// system call that reads a device (docs/benchmarks.md, the RX profile).
    public static func coarseMilliseconds() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
    }

    /// CLOCK_MONOTONIC_COARSE in seconds, as `coarseMilliseconds`.
    public static func coarseSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
