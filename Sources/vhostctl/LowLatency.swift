import Glibc
import Vhost

/// Where `--low-latency` puts its two spinners: the driver's thread on one CPU, the vhost workers
/// on others. Both busy-poll, and two spinners sharing a CPU are slower than one that sleeps:
/// on 7.2 an unpinned worker shared the polling driver's CPU and a ping took 320 µs at p50
/// against 37 µs apart (docs/benchmarks.md, "Latency").
struct LowLatencyPlacement: Equatable {
    /// The CPU the driver's thread is pinned to.
    var driverCPU: Int
    /// One CPU per worker, none of them the driver's (round robin over the others).
    var workerCPUs: [Int]

    /// The placement for `workers` workers among `allowed` CPUs (this process's affinity, in
    /// increasing order): the driver on the first, the workers on the rest. Nil with fewer than
    /// two CPUs: the spinners cannot be kept apart.
    static func choose(allowed: [Int], workers: Int) -> LowLatencyPlacement? {
        guard allowed.count >= 2, workers >= 0 else { return nil }
        let others = Array(allowed.dropFirst())
        return LowLatencyPlacement(driverCPU: allowed[0], workerCPUs: (0..<workers).map { others[$0 % others.count] })
    }

    /// The CPUs this thread may run on (sched_getaffinity), in increasing order; CPUs past 63
    /// are not seen (as `VhostWorkerThread.allowedCPUs`).
    static func allowedCPUs() -> [Int] {
        let mask = VhostWorkerThread.affinity(CurrentThread.id)
        return (0..<64).filter { mask >> UInt64($0) & 1 == 1 }
    }
}
