import DatapathSuite
import Glibc
import NetFormats
import Vhost
import VhostNet
import Virtio

/// The control plane beyond start: migration.
let controlPlaneTests: [KernelTest] = [
    KernelTest(name: "migrate: pre-copy rounds driven by the dirty log, stop-and-copy, resume on a fresh fd over the copy; the copy equals the source and no frame is lost or duplicated") {
        var config = VhostNetQueuePair.Configuration(tapName: "vht-mig")
        config.queueSize = 256
        config.features = [.version1, .eventIndex]
        let pair = try VhostNetQueuePair(config)
        let host = try KernelHostSide(pair)
        try transmitAndCompare(pair, host: host, frames: 200)
        try receiveAndCompare(pair, host: host, frames: 64)
        // TX chains in flight when migration starts, RX frames arriving in every pre-copy round.
        let posted = try pair.post(count: 128) { i, buffer in TestFrame.write(5_000 + i, into: buffer) }
        var nextRX = 10_000
        let report = try pair.migrate(to: try VhostNetDevice()) {
            for _ in 0..<16 { try host.send(TestFrame.bytes(nextRX)); nextRX += 1 }
            usleep(30_000)
        }
        say("  \(report)")
        try expect(report.identical, "the copy differs from the source at the switch-over: the dirty log missed a write")
        try expect(report.pagesPerRound.count >= 2 && report.pagesPerRound.dropFirst().contains { $0 > 0 }, "no round found a dirty page: \(report.pagesPerRound)")
        try expect(report.logSignals > 0, "the log eventfd (VHOST_SET_LOG_FD) was never signalled")
        // On the destination: the TX chains that were in flight, each once and in order…
        try pair.drainTransmit(milliseconds: 5000)
        for s in 5_000..<(5_000 + posted) {
            let frame = host.nextTestFrame(milliseconds: 5000)
            try expect(frame == TestFrame.bytes(s), "TX frame \(s) lost or out of order across the migration (got sequence \(frame.flatMap(TestFrame.sequence(of:)).map(String.init) ?? "none"))")
        }
        try expect(host.nextTestFrame(milliseconds: 100) == nil, "a TX frame arrived twice")
        // …the RX frames written into the source during pre-copy, read from the copy…
        var sequences: [Int] = []
        let deadline = MonotonicClock.seconds() + 10
        while sequences.count < nextRX - 10_000 && MonotonicClock.seconds() < deadline {
            try pair.receive(milliseconds: 200) { f in
                if let s = TestFrame.sequence(of: f.frame) {
                    sequences.append([UInt8](f.frame) == TestFrame.bytes(s) ? s : -s)
                }
            }
        }
        try expect(sequences == Array(10_000..<nextRX), "RX across the migration: \(sequences.count) frames, first differences at \(zip(sequences, 10_000..<nextRX).first { $0 != $1 }.map { "\($0) vs \($1)" } ?? "the end")")
        // …and traffic goes on.
        try transmitAndCompare(pair, host: host, frames: 300)
        try receiveAndCompare(pair, host: host, frames: 128)
    },
]

/// Worker control (vhost.c vhost_worker_create, vhost_dev_ioctl).
let workerTests: [KernelTest] = [
    KernelTest(name: "fork: worker mode control — VHOST_GET/SET_FORK_FROM_OWNER before SET_OWNER and EBUSY after (6.12, 7.x), a clear message where the kernel has none (6.1)") {
        let device = try VhostNetDevice()
        switch device.workerModeControl() {
        case .failure(let error):
            guard case .ioctl(let failure) = error, failure.errno == .notPermitted, error.description.contains("no worker-mode control") else {
                throw KernelTestFailure("unexpected answer to VHOST_GET_FORK_FROM_OWNER: \(error)")
            }
            try expect(kernelVersion() < (6, 12), "kernel \(kernelVersion()) should have worker-mode control")
            say("  this kernel has none: \(error)")
            try device.setOwner()
            let worker = VhostWorkerThread.find()
            try expect(worker?.mode == .kthread, "the 6.1 worker should be a kernel thread: \(String(describing: worker))")
            say("  its worker: \(worker!)")
        case .success(let mode):
            let parameter = KernelInfo.moduleParameter("vhost", "fork_from_owner_default")
            try expect(mode == (parameter == "N" ? .kthread : .task), "default mode \(mode), fork_from_owner_default=\(parameter ?? "?")")
            try device.setForkFromOwner(.kthread)
            let chosen = try device.forkFromOwner()
            try expect(chosen == .kthread, "GET after SET kthread gave \(chosen)")
            try device.setOwner()
            try expectIoctlFailure("VHOST_SET_FORK_FROM_OWNER", .resourceBusy) { () throws(VhostError) in try device.setForkFromOwner(.task) }
            let kthread = VhostWorkerThread.find()
            try expect(kthread?.mode == .kthread, "SET kthread gave \(String(describing: kthread))")
            let task = try VhostNetDevice()
            try task.setForkFromOwner(.task)
            try task.setOwner()
            let threads = VhostWorkerThread.findAll()
            try expect(threads.contains { $0.mode == .task } && threads.contains { $0.mode == .kthread }, "workers \(threads)")
            say("  default \(mode) (fork_from_owner_default=\(parameter ?? "?")); workers: \(threads.map(\.description).joined(separator: "; "))")
        }
    },
    KernelTest(name: "worker: the vhost worker thread is found (tid, CPU, mode) and pinned to one CPU while it carries traffic") {
        let p = try pair("vht-pin") { $0.queueSize = 256 }
        guard let worker = VhostWorkerThread.find() else { throw KernelTestFailure("no vhost-\(getpid()) thread") }
        let cpus = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        let target = cpus > 1 ? 1 : 0
        try worker.pin(to: target)
        try p.transmit(count: 20_000) { i, buffer in TestFrame.write(i, into: buffer) }
        guard let after = VhostWorkerThread.find() else { throw KernelTestFailure("the worker vanished") }
        try expect(after.allowedCPUs == UInt64(1) << UInt64(target), "allowed CPUs \(String(after.allowedCPUs, radix: 2))")
        try expect(after.cpu == target, "the worker last ran on CPU \(after.cpu), pinned to \(target)")
        say("  before: \(worker); after pinning and 20,000 frames: \(after)")
    },
    KernelTest(name: "worker: VHOST_NEW_WORKER is not routed by vhost-net — EPERM before SET_OWNER, ENOTTY (worker_id 0) and ENOBUFS (worker_id 5) after") {
        let device = try VhostNetDevice()
        try expectIoctlFailure("VHOST_NEW_WORKER", .notPermitted) { () throws(VhostError) in _ = try device.newWorker() }
        try device.setOwner()
        try expectIoctlFailure("VHOST_NEW_WORKER", .inappropriateIOCTLForDevice) { () throws(VhostError) in _ = try device.newWorker(workerID: 0) }
        try expectIoctlFailure("VHOST_NEW_WORKER", .noBufferSpace) { () throws(VhostError) in _ = try device.newWorker(workerID: 5) }
    },
]
