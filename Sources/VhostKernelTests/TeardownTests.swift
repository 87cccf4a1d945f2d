import DatapathSuite
import Glibc
import NetFormats
import SystemPackage
import Vhost
import VhostNet
import Virtio

/// A kernel device that fails its `failAt`-th call with EIO: fault injection at each step of
/// QEMU's start sequence, through the backend interface.
struct FailingDevice: ~Copyable, VhostBackend {
    let device: VhostNetDevice
    let calls: CallCounter
    let failAt: Int
    final class CallCounter: @unchecked Sendable { var count = 0 }

    init(failAt: Int, calls: CallCounter) throws(VhostError) {
        device = try VhostNetDevice()
        self.failAt = failAt
        self.calls = calls
    }

    var backendName: String { "failing \(device.path)" }
    var iotlbDescriptor: Int32? { device.iotlbDescriptor }

    private func step(_ name: String) throws(VhostError) {
        calls.count += 1
        if calls.count == failAt { throw .system(call: name, detail: "(injected failure at step \(failAt))", errno: .ioError) }
    }

    /// Every request is one step but the busyloop pair and the detach (teardown must not fail
    /// on them); the step's name is the request's.
    @discardableResult
    func perform(_ request: VhostRequest) throws(VhostError) -> VhostAnswer {
        switch request {
        case .setVringBusyloopTimeout, .getVringBusyloopTimeout: break
        case .netSetBackend(_, let fd) where fd < 0: break
        default: try step(String(request.kind.name.dropFirst("VHOST_".count)))
        }
        return try device.perform(request)
    }
}

/// The fds and the shared anonymous mappings (guest memory shows as "/dev/zero (deleted)") of this process.
func resourceSnapshot() -> (fds: Int, sharedMappings: Int) {
    var fds = 0
    if let dir = opendir("/proc/self/fd") {
        while readdir(dir) != nil { fds += 1 }
        closedir(dir)
    }
    let maps = KernelInfo.readFile("/proc/self/maps") ?? ""
    return (fds, maps.split(separator: "\n").filter { $0.contains("/dev/zero") || $0.contains("memfd:swift-vhost") }.count)
}

let teardownTests: [KernelTest] = [
    KernelTest(name: "teardown: a failure injected at every step of the start sequence releases what was taken — no fd, no mapping, no tap") {
        let baseline = resourceSnapshot()
        var step = 1, steps: [String] = []
        while true {
            let calls = FailingDevice.CallCounter()
            var config = VhostNetQueuePair.Configuration(tapName: "vht-fail")
            config.queueSize = 64
            do {
                let tap = try Tap(name: "vht-fail")
                let pair = try VirtioNetQueuePair(config, device: try FailingDevice(failAt: step, calls: calls), port: tap)
                // No step failed: the whole sequence is covered.
                try pair.stop()
                break
            } catch let error as VhostError {
                guard error.description.contains("injected failure at step \(step)") else { throw KernelTestFailure("step \(step): \(error)") }
                steps.append(error.description.split(separator: " ").first.map(String.init) ?? "?")
            }
            let after = resourceSnapshot()
            try expect(after.fds == baseline.fds, "after a failure at step \(step) (\(steps.last!)): \(after.fds) fds open, \(baseline.fds) before")
            try expect(after.sharedMappings == baseline.sharedMappings, "after a failure at step \(step): \(after.sharedMappings) guest mappings, \(baseline.sharedMappings) before")
            try expect(!Tap.exists(name: "vht-fail"), "after a failure at step \(step): the tap is still there")
            step += 1
            try expect(step < 64, "the start sequence never completed")
        }
        say("  a failure at each of \(steps.count) steps (\(steps.joined(separator: " "))) left \(baseline.fds) fds and \(baseline.sharedMappings) guest mappings, as before")
    },
    KernelTest(name: "teardown: a queue pair that goes away closes every fd and unmaps its guest memory") {
        let baseline = resourceSnapshot()
        do {
            let p = try pair("vht-gone") { $0.queueSize = 64 }
            try transmitAndCompare(p, frames: 50)
            let during = resourceSnapshot()
            try expect(during.fds > baseline.fds && during.sharedMappings > baseline.sharedMappings, "the pair holds no fd or mapping? \(during)")
        }
        let after = resourceSnapshot()
        try expect(after == baseline, "after the pair went away: \(after), before: \(baseline)")
        try expect(!Tap.exists(name: "vht-gone"), "the tap is still there")
    },
]
