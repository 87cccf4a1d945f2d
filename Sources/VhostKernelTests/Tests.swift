import DatapathMeasure
import DatapathSuite
import Glibc
import HostNetwork
import KernelTierScripts
import NetFormats
import SystemPackage
import Vhost
import VhostNet
import VhostScript
import Virtio

let allKernelTests: [KernelTest] = deviceTests + datapathTests + featureTests + scriptTests + shippedScriptTests + inlineScriptTests + commandScriptTests + backendTests + controlPlaneTests + workerTests + extendedFeatureTests + iotlbTests + dirtyLogResizeTests + faultTests + teardownTests + crashScriptTests + requestTests + recordParityTests + soakTests
    + scriptCoverageTests  // last: it reads what every script before it ran

// MARK: helpers

/// Runs `body` and expects it to throw `VhostError.ioctl` for `name` with `errno`; returns the failure.
@discardableResult
func expectIoctlFailure(_ name: String, _ errno: Errno, file: StaticString = #fileID, line: UInt = #line,
                        _ body: () throws(VhostError) -> Void) throws -> IoctlFailure {
    do {
        try body()
    } catch .ioctl(let failure) {
        try expect(failure.name == name && failure.errno == errno,
                   "expected \(name) to fail with \(errno.name), got: \(failure)", file: file, line: line)
        try expect(failure.description.contains(name) && failure.description.contains(errno.name),
                   "the error does not name the ioctl and errno: \(failure)", file: file, line: line)
        return failure
    } catch {
        throw KernelTestFailure("expected \(name) to fail with \(errno.name), got: \(error)", file: file, line: line)
    }
    throw KernelTestFailure("expected \(name) to fail with \(errno.name), but it succeeded", file: file, line: line)
}

func ownedDevice() throws -> VhostNetDevice {
    let device = try VhostNetDevice()
    try device.setOwner()
    return device
}

func statistic(_ tap: String, _ counter: String) throws -> UInt64 {
    guard let value = KernelInfo.interfaceStatistic(tap, counter) else {
        throw KernelTestFailure("cannot read /sys/class/net/\(tap)/statistics/\(counter)")
    }
    return value
}

// MARK: device rules (drivers/vhost/vhost.c, net.c)

let deviceTests: [KernelTest] = [
    KernelTest(name: "device: GET_FEATURES offers VERSION_1, MRG_RXBUF and EVENT_IDX, decoded") {
        let device = try VhostNetDevice()
        let features = try device.features()
        say("  offered: \(features)")
        try expect(features.isSuperset(of: [.version1, .netMergeableRxBuffers, .eventIndex, .indirectDescriptors]),
                   "unexpected feature set \(features)")
        try expect(!features.contains(.ringPacked), "vhost-net should not offer the packed ring")
    },
    KernelTest(name: "device: second SET_OWNER is EBUSY") {
        let device = try ownedDevice()
        try expectIoctlFailure("VHOST_SET_OWNER", .resourceBusy) { () throws(VhostError) in try device.setOwner() }
    },
    KernelTest(name: "device: vring ioctl before SET_OWNER is EPERM") {
        let device = try VhostNetDevice()
        try expectIoctlFailure("VHOST_SET_VRING_NUM", .notPermitted) { () throws(VhostError) in try device.setVringNum(index: 0, num: 256) }
    },
    KernelTest(name: "vring: SET_VRING_NUM 3 is EINVAL, named as such") {
        let device = try ownedDevice()
        let failure = try expectIoctlFailure("VHOST_SET_VRING_NUM", .invalidArgument) { () throws(VhostError) in
            try device.setVringNum(index: 0, num: 3)
        }
        say("  error: \(failure)")
        try expect(failure.arguments.contains("num: 3"), "the error does not carry the arguments: \(failure)")
        try device.setVringNum(index: 0, num: 32768)
        try expectIoctlFailure("VHOST_SET_VRING_NUM", .invalidArgument) { () throws(VhostError) in try device.setVringNum(index: 0, num: 65536) }
    },
    KernelTest(name: "features: SET_FEATURES with RING_PACKED is EOPNOTSUPP") {
        let device = try ownedDevice()
        try expectIoctlFailure("VHOST_SET_FEATURES", .notSupported) { () throws(VhostError) in
            try device.setFeatures([.version1, .ringPacked])
        }
    },
    KernelTest(name: "backend: NET_SET_BACKEND index 2 is ENOBUFS") {
        let device = try ownedDevice()
        try expectIoctlFailure("VHOST_NET_SET_BACKEND", .noBufferSpace) { () throws(VhostError) in try device.setBackend(index: 2, fd: -1) }
    },
    KernelTest(name: "backend: an eventfd as backend is ENOTSOCK") {
        // net.c vhost_net_set_backend checks the ring (EFAULT) before the fd, so use a set-up pair.
        var config = VhostNetQueuePair.Configuration(tapName: "vht-sock")
        config.queueSize = 64
        let pair = try VhostNetQueuePair(config)
        try pair.stop()
        let notASocket = try EventFD()
        try expectIoctlFailure("VHOST_NET_SET_BACKEND", .notSocket) { () throws(VhostError) in try pair.device.setBackend(index: 0, fd: notASocket.fd) }
    },
    KernelTest(name: "memory: a table above max_mem_regions is E2BIG and names the parameter") {
        let device = try ownedDevice()
        let limit = KernelInfo.maxMemoryRegions() ?? 64
        let regions = (0...limit).map { i in
            MemoryTable.Region(guestAddress: UInt64(i) << 21, size: 1 << 21, userspaceAddress: 0x7000_0000_0000 + (UInt64(i) << 21))
        }
        let failure = try expectIoctlFailure("VHOST_SET_MEM_TABLE", .argListTooLong) { () throws(VhostError) in
            try device.setMemoryTable(MemoryTable(regions: regions))
        }
        try expect(failure.description.contains("max_mem_regions"), "E2BIG does not name max_mem_regions: \(failure)")
    },
    KernelTest(name: "vring: SET_VRING_NUM while a backend is attached is EBUSY") {
        var config = VhostNetQueuePair.Configuration(tapName: "vht-busy")
        config.queueSize = 64
        let pair = try VhostNetQueuePair(config)
        try expectIoctlFailure("VHOST_SET_VRING_NUM", .resourceBusy) { () throws(VhostError) in try pair.device.setVringNum(index: 1, num: 64) }
        try pair.stop()
        try pair.device.setVringNum(index: 1, num: 64)
    },
]

// MARK: ioctl scripts and the memory the kernel keeps using

let scriptTests: [KernelTest] = [
    KernelTest(name: "script: mapping memory again with a backend attached keeps the old mapping alive; the kernel writes there, never into the new one") {
        // Part 1: a full set-up with RX's base at 7, so that the kernel's next handle_rx, finding
        // no buffers, writes avail_event = 7 into vring 0's used ring (vhost.c vhost_enable_notify
        // with EVENT_IDX): a write we can see. The avail index is 7 before the backend is attached:
        // the host stack's own frames (IPv6 ND when the tap comes up) reach handle_rx at once, and an
        // avail index behind the base is "Guest moved used index" (a ring error, nothing written).
        let setup = try Script(parsing: KernelTierScripts.remapSetup.text, name: KernelTierScripts.remapSetup.name)
        var output: [String] = []
        let runner = scriptRunner { output.append($0) }
        try runner.run(setup)
        guard let oldRing = runner.ring(0), let oldRegion = runner.memoryRegions.first else { throw KernelTestFailure("no ring 0 after set-up") }
        // Part 2: map memory again while the kernel still holds vring 0's addresses in the old one.
        try runner.run(Script(parsing: KernelTierScripts.remapMemory.text, name: KernelTierScripts.remapMemory.name))
        try expect(runner.retiredMappings == [oldRegion], "the old mapping was not kept: \(runner.retiredMappings)")
        try expect(output.contains { $0.contains("stays mapped") }, "the runner did not say it keeps the old mapping: \(output.suffix(2))")
        guard let newRegion = runner.memoryRegions.first else { throw KernelTestFailure("no new memory") }
        let maps = KernelInfo.readFile("/proc/self/maps") ?? ""
        let oldStart = String(oldRegion.hostAddress.rawValue, radix: 16)
        try expect(maps.split(separator: "\n").contains { $0.hasPrefix(oldStart + "-") }, "the old mapping at 0x\(oldStart) is gone from /proc/self/maps")
        // Host-stack frames may have made the kernel write avail_event already (6.1 does, right
        // after SET_BACKEND, when IPv6 ND leaves on the new tap): clear it, so that only a write
        // after the new mapping counts.
        oldRing.availEvent.pointee.store(0, ordering: .releasing)
        // The host sends a frame into the tap, and we kick vring 0: the kernel's handle_rx reads
        // vring 0 (old memory). The kick is needed: net.c handle_rx leaves the socket unpolled when
        // it found frames but no buffers (it re-arms only when the socket is empty), so after that
        // first time only a kick runs it again.
        let socket = try PacketSocket(interfaceIndex: try NetworkInterface(name: "vht-remap").index())
        let kick = try Script(parsing: KernelTierScripts.kickReceive.text, name: KernelTierScripts.kickReceive.name)
        let deadline = ContinuousClock.now + .seconds(5)
        while oldRing.availEvent.pointee.load(ordering: .acquiring) != 7 && ContinuousClock.now < deadline {
            try socket.send(TestFrame.bytes(1))
            try runner.run(kick)
            usleep(20_000)
        }
        let seen = oldRing.availEvent.pointee.load(ordering: .acquiring)
        let (sent, dropped) = (try statistic("vht-remap", "tx_packets"), try statistic("vht-remap", "tx_dropped"))
        try expect(seen == 7, "the kernel never wrote avail_event into the old used ring (it holds \(seen); used flags \(oldRing.usedFlags.rawValue), "
                   + "used idx \(oldRing.usedIndex.pointee.load(ordering: .acquiring)); tap tx_packets \(sent), tx_dropped \(dropped))")
        let written = UnsafeRawBufferPointer(start: newRegion.host, count: newRegion.size).contains { $0 != 0 }
        try expect(!written, "the new mapping was written by the kernel")
        say("  old mapping at 0x\(oldStart) kept and written by the kernel (avail_event 7); new mapping at 0x\(String(newRegion.hostAddress.rawValue, radix: 16)) untouched")
    },
]

// MARK: the datapath through the kernel worker and a tap

let datapathTests: [KernelTest] = [
    KernelTest(name: "tx: 100,000 frames, each counted on the tap") {
        var config = VhostNetQueuePair.Configuration(tapName: "vht-tx")
        config.features = [.version1, .eventIndex]
        let pair = try VhostNetQueuePair(config)
        let total = 100_000
        let rate = try DatapathRate.transmit(pair, count: total) { i, buffer in TestFrame.write(i, into: buffer) }
        let counters = pair.transmitCounters
        say("  \(total) frames in \(KernelTestRunner.formatted(rate.seconds)) s; kicks \(counters.kicks), suppressed \(counters.suppressedKicks), calls \(counters.calls)")
        try expect(rate.counted == UInt64(total), "the tap counted \(rate.counted) frames, not \(total)")
        try expect(counters.frames == UInt64(total), "the driver counted \(counters.frames) frames")
        // Fewer kicks than frames holds for any batching driver; what EVENT_IDX adds is that the
        // kernel's avail_event told the driver to skip kicks: publishes it skipped are counted
        // only when driver.publish() said the device did not ask (vring_need_event).
        try expect(counters.kicks < UInt64(total), "EVENT_IDX should kick fewer times than frames (\(counters.kicks))")
        try expect(counters.suppressedKicks > 0, "the kernel's avail_event never let the driver skip a kick (\(counters.kicks) kicks, 0 suppressed)")
        let bases = try pair.stop()
        try expect(bases.transmitBase == UInt32(UInt16(truncatingIfNeeded: total)),
                   "GET_VRING_BASE(TX) = \(bases.transmitBase), expected \(UInt16(truncatingIfNeeded: total))")
    },
]
