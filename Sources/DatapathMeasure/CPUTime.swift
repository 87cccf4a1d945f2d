import Glibc
import Vhost

/// CPU time of threads, for the CPU cost per frame: the scheduler's own account of the time a
/// thread ran (the first field of /proc/<tid>/schedstat, in nanoseconds), the same source for
/// this driver's thread and for the vhost worker, whether that is a thread of this process
/// (6.4 on) or a kernel thread.
public enum ThreadCPUTime {
    /// Nanoseconds thread `tid` has run, or nil when the kernel has no schedstat for it.
    public static func nanoseconds(tid: Int32) -> UInt64? {
        guard let text = KernelInfo.readFile("/proc/\(tid)/schedstat"), let first = text.split(separator: " ").first else { return nil }
        return UInt64(first)
    }

    /// The calling thread's CPU time, user and system: CLOCK_THREAD_CPUTIME_ID, the nanosecond
    /// clock behind getrusage(RUSAGE_THREAD).
    public static func currentThread() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}

/// CPU used by the driver (this thread) and the vhost workers over a measurement.
public struct CPUCost: Sendable, Equatable {
    public var driverNanoseconds: UInt64
    /// Nil when there is no kernel worker (the userspace tap path) or it could not be read.
    public var workerNanoseconds: UInt64?

    /// Starts a measurement: reads both clocks now.
    public struct Meter {
        let driverStart: UInt64
        let workers: [Int32]
        let workerStart: [UInt64?]

        public init(workers: [VhostWorkerThread]) {
            self.workers = workers.map(\.tid)
            workerStart = self.workers.map(ThreadCPUTime.nanoseconds(tid:))
            driverStart = ThreadCPUTime.currentThread()
        }

        /// The CPU used since `init`.
        public func read() -> CPUCost {
            let driver = ThreadCPUTime.currentThread() &- driverStart
            guard !workers.isEmpty else { return CPUCost(driverNanoseconds: driver, workerNanoseconds: nil) }
            var total: UInt64 = 0
            for (tid, start) in zip(workers, workerStart) {
                guard let start, let now = ThreadCPUTime.nanoseconds(tid: tid) else { return CPUCost(driverNanoseconds: driver, workerNanoseconds: nil) }
                total += now &- start
            }
            return CPUCost(driverNanoseconds: driver, workerNanoseconds: total)
        }
    }
}
