import ArgumentParser
import Glibc
import Vhost
import VhostNet
import Virtio

/// `attach`'s options for a multiqueue NIC as a hypervisor sets one up: RSS steering, the tap's
/// send buffer, the emulated IOMMU, and the worker CPUs (`WorkerCPUList`).
struct TuningOptions: ParsableArguments {
    @Flag(help: "Spread the flows the host sends over the queue pairs with an eBPF steering program (TUNSETSTEERINGEBPF, as QEMU's RSS): a hash of the IPv4/IPv6 addresses and TCP/UDP ports, documented in docs/rss.md. Needs --tap and --queue-pairs 2 or more.")
    var rss = false

    @Option(help: "The tap's send buffer in bytes, on every queue (TUNSETSNDBUF). Default 2147483647 (INT_MAX), which turns on vhost-net's batched TX; a smaller one turns it off.")
    var sndbuf: Int32?

    @Option(name: .customLong("rx-queue-size"), help: "Descriptors in the RX ring (vring 0), a power of 2 from 2 to 32768. Default: --queue-size.")
    var rxQueueSize: Int?

    @Option(name: .customLong("tx-queue-size"), help: "Descriptors in the TX ring (vring 1), a power of 2 from 2 to 32768. Default: --queue-size.")
    var txQueueSize: Int?

    @Flag(help: "Negotiate VIRTIO_F_ACCESS_PLATFORM: the device reaches guest memory through the library's emulated IOMMU (IOVA = GPA + 1 TiB), answering its IOTLB misses; --trace shows them.")
    var iommu = false

    /// The IOVA offset of `--iommu`: 1 TiB, so that no IOVA equals a GPA.
    static let iovaOffset: UInt64 = 1 << 40

    /// Checks against `attach`'s other options; `backend` is nil for a tap, else the option
    /// that named the backend (`--macvtap`, `--packet-socket`).
    func validate() throws {
        for (option, size) in [("--rx-queue-size", rxQueueSize), ("--tx-queue-size", txQueueSize)] {
            if let size, size < 2 || !SplitRingLayout.isValidQueueSize(size) {
                throw ValidationError("\(option) \(size): it must be a power of 2 from 2 to 32768 (vhost.c vhost_vring_set_num)")
            }
        }
    }

    func check(queuePairs: Int, backend: String?) throws {
        if rss {
            if let backend { throw ValidationError("--rss steers a tap's queues (TUNSETSTEERINGEBPF); \(backend) has none: use --tap") }
            if queuePairs < 2 { throw ValidationError("--rss spreads flows over queue pairs: add --queue-pairs 2 or more") }
        }
        if let sndbuf {
            if let backend { throw ValidationError("--sndbuf sets a tap's send buffer (TUNSETSNDBUF); it is not offered with \(backend): use --tap") }
            // tun.c __tun_chr_ioctl TUNSETSNDBUF: EINVAL for 0 or less.
            guard sndbuf > 0 else { throw ValidationError("--sndbuf \(sndbuf): use 1 to 2147483647 bytes") }
        }
    }

    /// What is set on the configuration before the endpoint is made: the IOMMU.
    func apply(to config: inout VhostNetQueuePair.Configuration, trace: IoctlObserver?) {
        // validate() has checked both sizes: powers of 2 up to 32768 fit a UInt16.
        if let rxQueueSize, let size = UInt16(exactly: rxQueueSize) {
            // The TX ring keeps --queue-size when only RX is given.
            if config.transmitQueueSize == nil { config.transmitQueueSize = config.queueSize }
            config.queueSize = size
        }
        if let txQueueSize, let size = UInt16(exactly: txQueueSize) { config.transmitQueueSize = size }
        // Set by Tap.prepare at start and at every resume (tun.c TUNSETSNDBUF, on each queue).
        config.sendBuffer = sndbuf
        if iommu {
            config.features.insert(.accessPlatform)
            config.iovaOffset = TuningOptions.iovaOffset
            // The IOTLB messages go to --trace only (a --record script issues no IOTLB traffic of its own).
            config.iotlbObserver = trace
        }
    }

    /// What is set once a tap endpoint exists, while attach still runs as root: the steering
    /// program (loading BPF needs root) and the send buffer. Prints what it did.
    func finishSetup(_ endpoint: VhostNetEndpoint, queuePairs: Int) throws {
        if rxQueueSize != nil || txQueueSize != nil, let pair = endpoint.pairs.first {
            print("rings: RX \(pair.configuration.queueSize), TX \(pair.configuration.transmitQueueSize ?? pair.configuration.queueSize) descriptors")
        }
        if let sndbuf {
            // Tap.prepare set it on every queue (config.sendBuffer, as QEMU sets it per queue):
            // read back what the kernel keeps.
            var kept: Set<UInt64> = []
            for pair in endpoint.pairs { kept.insert(try pair.tap.perform(.getSendBuffer).value) }
            print("sndbuf: \(sndbuf) bytes set on \(queuePairs) queue(s); TUNGETSNDBUF reads \(kept.sorted().map(String.init).joined(separator: ", "))\(sndbuf == Int32.max ? "" : " (vhost-net's batched TX is off below INT_MAX)")")
        }
        if rss {
            let program = try SteeringProgram.load()
            // The program belongs to the whole tap; the tap keeps its own reference, so our fd
            // closes when `program` goes away.
            try endpoint.pairs[0].tap.setSteeringProgram(program)
            print("rss: a steering program of \(SteeringProgram.instructions.count) eBPF instructions spreads flows over \(queuePairs) queues (hash of addresses and ports, modulo \(queuePairs))")
        }
    }
}

/// `--worker-cpu LIST`: one CPU for every queue pair's worker, or one CPU per queue pair, in the
/// kernel's list format (`0,1`, `0-3`).
struct WorkerCPUList: ExpressibleByArgument, CustomStringConvertible {
    var cpus: [Int]

    init?(argument: String) {
        guard let cpus = CompletionHints.parseCPUList(argument), !cpus.isEmpty else { return nil }
        self.cpus = cpus
    }

    init(cpus: [Int]) { self.cpus = cpus }

    var description: String { cpus.map(String.init).joined(separator: ",") }

    /// The online CPUs (/sys/devices/system/cpu/online), nil when unreadable.
    static func onlineCPUs() -> [Int]? {
        let online = CompletionHints.onlineCPUs()
        return online.isEmpty ? nil : online
    }

    /// Why this list does not fit `queuePairs` queue pairs on a machine with `online` CPUs online,
    /// as one line; nil when it fits.
    func problem(queuePairs: Int, online: [Int]) -> String? {
        if cpus.count != 1 && cpus.count != queuePairs {
            return "--worker-cpu \(self): \(cpus.count) CPUs for \(queuePairs) queue pair(s); give one CPU for all, or one per queue pair"
        }
        if let offline = cpus.first(where: { !online.contains($0) }) {
            return "--worker-cpu \(self): CPU \(offline) is not online (online: \(online.map(String.init).joined(separator: ",")))"
        }
        return nil
    }

    /// The CPU of queue pair `index`.
    func cpu(forQueuePair index: Int) -> Int { cpus.count == 1 ? cpus[0] : cpus[index] }
}

/// Which vhost worker belongs to which queue pair: an ioctl observer that, right after each
/// successful `VHOST_SET_OWNER` (where vhost.c vhost_dev_set_owner creates the device's worker),
/// notes the worker threads that appeared. The queue pairs are set up one after the other, so
/// the n-th owner is queue pair n.
final class WorkerTracker: Sendable {
    let workers = Locked<[[Int32]]>([])

    /// `observer`, with the tracking added.
    func observer(wrapping observer: IoctlObserver?) -> IoctlObserver {
        { [workers] event in
            observer?(event)
            guard event.request == .vhost(.setOwner), case .success = event.result else { return }
            // SET_OWNER is issued on the thread the workers are named after (vhost-<tid>).
            let found = VhostWorkerThread.findAll().map(\.tid)
            workers.withLock { known in
                let seen = Set(known.joined())
                known.append(found.filter { !seen.contains($0) })
            }
        }
    }

    /// Pins each queue pair's worker to its CPU, and says which is which.
    func pin(_ list: WorkerCPUList, queuePairs: Int) throws {
        let owners = workers.withLock { $0 }
        let all = VhostWorkerThread.findAll()
        for index in 0..<queuePairs {
            let cpu = list.cpu(forQueuePair: index)
            let tids = index < owners.count ? owners[index] : []
            guard !tids.isEmpty else {
                throw CLIError(message: "--worker-cpu: no vhost worker thread appeared after queue pair \(index)'s VHOST_SET_OWNER, so it cannot be pinned", status: ExitStatus.failure)
            }
            for worker in all where tids.contains(worker.tid) {
                try worker.pin(to: cpu)
                print("worker of queue pair \(index): \(worker.name) tid \(worker.tid) pinned to CPU \(cpu)")
            }
        }
    }
}
