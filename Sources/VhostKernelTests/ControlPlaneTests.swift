import DatapathSuite
import Glibc
import HostNetwork
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
        let deadline = ContinuousClock.now + .seconds(10)
        while sequences.count < nextRX - 10_000 && ContinuousClock.now < deadline {
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

/// The dirty log follows the memory table (QEMU's vhost_dev_log_resize).
let dirtyLogResizeTests: [KernelTest] = [
    KernelTest(name: "migrate: the dirty log grows and shrinks with the memory table (a region hot-plugged at 8 GiB and removed) and keeps logging RX writes") {
        let p = try pair("vht-logsz") { $0.queueSize = 64 }
        let host = try KernelHostSide(p)
        try p.enableDirtyLog()
        let before = p.dirtyLog!.size
        try p.hotplugMemory(size: 2 << 20, at: 0x2_0000_0000)
        let grown = p.dirtyLog!.size
        try expect(grown >= Int((0x2_0000_0000 + (2 << 20)) / 4096 / 8), "the log (\(grown) bytes) does not cover a region at 8 GiB")
        _ = p.dirtyLog!.sync()
        try receiveAndCompare(p, host: host, frames: 64)
        let dirtyGrown = p.receiveBufferAddresses.filter { p.dirtyLog!.isDirty(guestAddress: $0) }.count
        try expect(dirtyGrown > 0, "after growing, the kernel logged no RX write into the new log")
        try p.unplugMemory(at: 0x2_0000_0000)
        let shrunk = p.dirtyLog!.size
        try expect(shrunk == before, "the log did not shrink back (\(shrunk) bytes, \(before) before)")
        _ = p.dirtyLog!.sync()
        try receiveAndCompare(p, host: host, frames: 64)
        let dirtyShrunk = p.receiveBufferAddresses.filter { p.dirtyLog!.isDirty(guestAddress: $0) }.count
        try expect(dirtyShrunk > 0, "after shrinking, the kernel logged no RX write")
        say("  log \(before) → \(grown) → \(shrunk) bytes; RX buffer pages logged: \(dirtyGrown) while grown, \(dirtyShrunk) after")
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
            refusalChecked("this kernel has no worker-mode control: \(error)")
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

/// A VXLAN (UDP port 4789) packet carrying a TCPv4 segment of `payload` bytes, and the 24-byte
/// header that asks for UDP-tunnel GSO of it (6.17 virtio_net_hdr_v1_hash_tunnel): outer
/// Ethernet, IPv4, UDP at 34, VXLAN; inner Ethernet, IPv4 at 64, TCP at 84.
func vxlanTCPFrame(payload: Int) -> (frame: [UInt8], header: VirtioNetHeader) {
    let (inner, _) = OffloadFrame.tcp(ipv6: false, payload: payload, seed: 5)
    let vxlan: [UInt8] = [0x08, 0, 0, 0, 0, 0, 42, 0]                      // I flag, VNI 42
    let udpLength = 8 + vxlan.count + inner.count
    let udp: [UInt8] = [0xc0, 0x00, 0x12, 0xb5, UInt8(udpLength >> 8), UInt8(udpLength & 0xff), 0, 0]  // 49152 → 4789, no checksum
    let frame = IPv4Packet.frame(destinationMAC: MACAddress(0x52, 0x54, 0, 0, 0, 1), sourceMAC: MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56),
                                 source: IPv4Address(10, 0, 11, 2), destination: IPv4Address(10, 0, 11, 1),
                                 protocolNumber: IPv4Packet.protocolUDP, payload: udp + vxlan + inner)
    var header = VirtioNetHeader(flags: .needsChecksum, gsoType: VirtioNetHeader.GSOType.tcpV4.rawValue | VirtioNetHeader.gsoUDPTunnelIPv4,
                                 headerLength: 104, gsoSize: 1400, checksumStart: 84, checksumOffset: 16)
    header.outerTransportOffset = 34
    header.innerNetworkOffset = 64
    return (frame, header)
}

/// Feature bits above 63 (Linux 6.17).
let extendedFeatureTests: [KernelTest] = [
    KernelTest(name: "features array: VHOST_GET_FEATURES_ARRAY offers bits 65 and 67 by name on 7.x; 6.1 and 6.12 answer EPERM before SET_OWNER and the 64-bit fallback stands") {
        let device = try VhostNetDevice()
        let low = try device.features()
        do {
            let words = try device.extendedFeatureWords(count: 2)
            try expect(words[0] == low.rawValue, "word 0 0x\(String(words[0], radix: 16)) differs from GET_FEATURES 0x\(String(low.rawValue, radix: 16))")
            let high = HighFeatures(rawValue: words[1])
            try expect(high.contains([.netGuestUDPTunnelGSO, .netHostUDPTunnelGSO]), "word 1: \(high)")
            let three = try device.extendedFeatureWords(count: 3)
            try expect(three == words + [0], "count 3 should zero-fill the third word: \(three)")
            say("  word 1: \(high)")
        } catch let error as VhostError {
            guard case .ioctl(let failure) = error, failure.errno == .notPermitted, error.description.contains("no feature array") else {
                throw KernelTestFailure("unexpected answer: \(error)")
            }
            try expect(kernelVersion() < (6, 17), "kernel \(kernelVersion()) should have the feature array")
            let words = try device.featureWords(count: 2)
            try expect(words == [low.rawValue, 0], "the fallback gave \(words)")
            refusalChecked("this kernel has no feature array: \(error); the 64-bit fallback gives \(words.map { "0x" + String($0, radix: 16) })")
        }
    },
    KernelTest(name: "tunnel: a VXLAN-encapsulated 64 KiB TCP frame goes out and comes in with the 24-byte header and its GSO fields, checked on the host side (UDP-tunnel GSO, 7.x); elsewhere a clear \"this kernel has no\" message") {
        do {
            let p = try pair("vht-tnl") {
                $0.features = [.version1, .eventIndex, .netMergeableRxBuffers]
                $0.highFeatures = [.netHostUDPTunnelGSO, .netGuestUDPTunnelGSO]
                $0.receiveOffloads = [.checksum, .tso4, .tso6, .udpTunnelGSO]
                $0.bufferSize = 65536 + 1024   // a TX buffer holds the whole GSO frame
                $0.queueSize = 16
            }
            let tapHeader = try p.tap.vnetHeaderSize()
            try expect(p.headerLength == 24 && tapHeader == 24, "header length \(p.headerLength), the tap's \(tapHeader)")
            // The host side: a second tap with the 24-byte header, bridged with ours. What it reads
            // carries the GSO fields the host stack kept; what it writes reaches ours as one GSO frame.
            let far = try Tap(name: "vht-tnlfar")
            try far.setVnetHeaderSize(24)
            try far.setOffloads([.checksum, .tso4, .tso6, .udpTunnelGSO])
            try far.setLinkUp(true)
            try RouteNetlink.createLink("vhbr0", kind: "bridge")
            defer { try? RouteNetlink.removeLink("vhbr0") }
            try RouteNetlink.setMaster(p.tap.name, bridge: "vhbr0")
            try RouteNetlink.setMaster("vht-tnlfar", bridge: "vhbr0")
            let errorsBefore = try statistic(p.tap.name, "rx_frame_errors")
            let (frame, header) = vxlanTCPFrame(payload: 60_000)
            try p.transmit(count: 1, header: header) { _, buffer in buffer.copyBytes(from: frame); return frame.count }
            var seen: [UInt8]? = nil
            let deadline = ContinuousClock.now + .seconds(5)
            while seen == nil && ContinuousClock.now < deadline {
                if let message = far.readFrame(milliseconds: 500), message.count > 60_000 { seen = message }
            }
            let errors = try statistic(p.tap.name, "rx_frame_errors") - errorsBefore
            try expect(errors == 0, "tun rejected the tunnel header (rx_frame_errors +\(errors))")
            guard let seen else { throw KernelTestFailure("no VXLAN frame over 60,000 bytes reached the host side") }
            let hostHeader = VirtioNetHeader(bytes: Array(seen.prefix(24)))
            let hostFrame = Array(seen.dropFirst(24))
            try expect(hostHeader.gsoType == 0x21 && hostHeader.gsoSize == 1400 && hostHeader.outerTransportOffset == 34 && hostHeader.innerNetworkOffset == 64,
                       "the host side saw GSO fields \(hostHeader)")
            try expect(hostFrame.count == frame.count && Array(hostFrame[104...]) == Array(frame[104...]), "the frame differs on the host side")
            say("  out: the host side read one \(hostFrame.count)-byte frame with gso_type 0x\(String(hostHeader.gsoType, radix: 16)), gso_size \(hostHeader.gsoSize), outer_th \(hostHeader.outerTransportOffset), inner_nh \(hostHeader.innerNetworkOffset)")
            // In: the host side sends the same GSO frame; it must arrive in our ring as one frame.
            try far.writeFrame(header.bytes(length: 24) + frame)
            var received: (VirtioNetHeader, [UInt8])? = nil
            let until = ContinuousClock.now + .seconds(5)
            while received == nil && ContinuousClock.now < until {
                try p.receive(milliseconds: 300) { f in if f.frame.count > 60_000 { received = (f.header, [UInt8](f.frame)) } }
            }
            guard let (inHeader, inFrame) = received else { throw KernelTestFailure("no VXLAN GSO frame arrived in the RX ring") }
            try expect(inHeader.gsoType == 0x21 && inHeader.gsoSize == 1400 && inHeader.outerTransportOffset == 34 && inHeader.innerNetworkOffset == 64,
                       "the ring's header: \(inHeader)")
            try expect(inFrame.count == frame.count && Array(inFrame[104...]) == Array(frame[104...]), "the received frame differs")
            say("  in: one \(inFrame.count)-byte frame in \(inHeader.numBuffers) buffers with gso_type 0x\(String(inHeader.gsoType, radix: 16)), outer_th \(inHeader.outerTransportOffset), inner_nh \(inHeader.innerNetworkOffset)")
        } catch let error as VhostError {
            guard case .unsupportedByKernel = error, error.description.contains("this kernel has no NET_F_") else {
                throw KernelTestFailure("unexpected error: \(error)")
            }
            try expect(kernelVersion() < (6, 17), "kernel \(kernelVersion()) should offer UDP-tunnel GSO")
            try expect(!Tap.exists(name: "vht-tnl"), "a refused pair left its tap behind")
            refusalChecked("this kernel has no UDP-tunnel GSO: \(error)")
        }
    },
]

/// Device IOTLB (VIRTIO_F_ACCESS_PLATFORM with VHOST_BACKEND_F_IOTLB_MSG_V2).
let iotlbTests: [KernelTest] = [
    KernelTest(name: "iotlb: traffic flows with IOVA ≠ GPA — ring and buffer addresses are IOVAs, every MISS answered with a page-granular UPDATE") {
        let offset: UInt64 = 0x40_0000_0000
        let p = try pair("vht-iotlb") { $0.features = [.version1, .eventIndex, .accessPlatform]; $0.iovaOffset = offset; $0.queueSize = 128 }
        let backend = try p.device.backendFeatures()
        try expect(backend.contains(.iotlbMessageV2), "GET_BACKEND_FEATURES 0x\(String(backend.rawValue, radix: 16)) lacks IOTLB_MSG_V2")
        let host = try KernelHostSide(p)
        try transmitAndCompare(p, host: host, frames: 500)
        try receiveAndCompare(p, host: host, frames: 200)
        guard let iommu = p.iommu else { throw KernelTestFailure("no IOMMU") }
        let address = p.withTransmitDriver { $0.ring.descriptor(0).address }
        try expect(address >= offset, "descriptor 0 carries 0x\(String(address, radix: 16)), not an IOVA above 0x\(String(offset, radix: 16))")
        try expect(iommu.misses.count > 0 && iommu.updates > 0 && iommu.failures.isEmpty,
                   "misses \(iommu.misses.count), updates \(iommu.updates), failures \(iommu.failures)")
        let pages = Set(iommu.misses.map { $0.iova & ~4095 })
        say("  \(iommu.misses.count) MISSes over \(pages.count) pages answered with \(iommu.updates) UPDATEs (+ the preloaded rings); descriptors at IOVA 0x\(String(address, radix: 16))")
        try expect(iommu.misses.allSatisfy { $0.iova >= offset }, "a MISS for an address below the IOVA offset: the kernel used a GPA")
    },
    KernelTest(name: "iotlb: an access without a mapping stalls the queue with a MISS for that IOVA and no ring error; answering it restarts the queue") {
        let offset: UInt64 = 0x40_0000_0000
        let p = try pair("vht-iomiss") { $0.features = [.version1, .eventIndex, .accessPlatform]; $0.iovaOffset = offset; $0.queueSize = 64 }
        let host = try KernelHostSide(p)
        try transmitAndCompare(p, host: host, frames: 100)
        guard let iommu = p.iommu, let fd = p.device.iotlbDescriptor else { throw KernelTestFailure("no IOMMU") }
        // The next TX chain's buffer: a page the kernel has not been given yet.
        let head = p.withTransmitDriver { $0.nextFreeHead } ?? 0
        let buffer = p.transmitQueue.queue.memory.buffers[Int(head)]
        let iova = iommu.iova(buffer.guestAddress)
        try iommu.setAccess(.read, pageOf: iova, fd: fd)      // drop the kernel's cached mapping
        iommu.withhold(pageOf: iova)
        let missesBefore = iommu.misses.count
        _ = try p.post(count: 1) { _, b in TestFrame.write(777, into: b) }
        var missed = false
        let deadline = ContinuousClock.now + .seconds(3)
        while !missed && ContinuousClock.now < deadline {
            missed = iommu.misses.dropFirst(missesBefore).contains { $0.iova & ~4095 == iova & ~4095 }
            usleep(5000)
        }
        try expect(missed, "no MISS for IOVA 0x\(String(iova, radix: 16))")
        try expect(host.nextTestFrame(milliseconds: 300) == nil, "the frame went out without a mapping")
        let errors = p.takeRingErrors()
        try expect(errors.isEmpty, "an unmapped page raised a ring error: \(errors)")
        try iommu.release(pageOf: iova, fd: fd)
        let frame = host.nextTestFrame(milliseconds: 3000)
        try expect(frame == TestFrame.bytes(777), "the stalled frame did not go out after the UPDATE")
        let miss = iommu.misses.last { $0.iova & ~4095 == iova & ~4095 }!
        say("  \(miss) → queue stalled, no ring error; UPDATE → frame sent")
    },
    KernelTest(name: "iotlb: a write into a read-only mapping is refused — 'Translation failure' on the error eventfd, the frame not delivered") {
        let offset: UInt64 = 0x40_0000_0000
        let p = try pair("vht-iorow") { $0.features = [.version1, .eventIndex, .accessPlatform]; $0.iovaOffset = offset; $0.queueSize = 64 }
        let host = try KernelHostSide(p)
        guard let iommu = p.iommu, let fd = p.device.iotlbDescriptor else { throw KernelTestFailure("no IOMMU") }
        // Every RX buffer read-only: the device cannot write a received frame anywhere. A sentinel
        // fills each buffer, so a write that got through anyway would show.
        let log = try KernelLog.vhost().get()
        let buffers = p.receiveQueue.queue.memory.buffers
        for buffer in buffers {
            // SAFETY: the RX buffers are the driver's memory; the device may only read them now.
            memset(buffer.host, 0xA5, buffer.length)
            try iommu.setAccess(.read, pageOf: iommu.iova(buffer.guestAddress), fd: fd)
        }
        try host.send(TestFrame.bytes(5))
        var events: [RingErrorEvent] = []
        let deadline = ContinuousClock.now + .seconds(3)
        while events.isEmpty && ContinuousClock.now < deadline { events = p.takeRingErrors(); usleep(5000) }
        try expect(events.first?.queue.direction == .receive, "no RX ring error for a write into a read-only page: \(events)")
        // The kernel's own words for it (vhost.c translate_desc, -EPERM for a write to a read-only IOTLB entry).
        let (message, seen) = log.waitForMessage(containing: "Translation failure", seconds: 2)
        try expect(message != nil, "the kernel logged no \"Translation failure\"; its vhost messages: \(seen.joined(separator: " | "))")
        var got = 0
        try p.receive(milliseconds: 200) { f in if TestFrame.sequence(of: f.frame) == 5 { got += 1 } }
        try expect(got == 0, "the frame was delivered through a read-only mapping")
        let touched = buffers.filter { buffer in UnsafeRawBufferPointer(start: buffer.host, count: buffer.length).contains { $0 != 0xA5 } }.count
        try expect(touched == 0, "\(touched) read-only RX buffers were written to")
        say("  \(events[0]); kernel: \"\(message!)\"; all \(buffers.count) read-only buffers still hold the sentinel")
    },
    KernelTest(name: "iotlb: beyond max_iotlb_entries the oldest mappings are evicted silently: a second pass over the same pages misses again") {
        let limit = Int(KernelInfo.moduleParameter("vhost", "max_iotlb_entries") ?? "") ?? 2048
        let offset: UInt64 = 0x40_0000_0000
        // 4096 TX buffers of 2 KiB: 2048 pages, more than the limit with the rings.
        let p = try pair("vht-ioevict") { $0.features = [.version1, .eventIndex, .accessPlatform]; $0.iovaOffset = offset; $0.queueSize = 4096 }
        guard let iommu = p.iommu else { throw KernelTestFailure("no IOMMU") }
        try p.transmit(count: 4096) { i, buffer in TestFrame.write(i, into: buffer) }
        let firstPass = iommu.misses.count
        try p.transmit(count: 4096) { i, buffer in TestFrame.write(i, into: buffer) }
        let secondPass = iommu.misses.count - firstPass
        let pages = Set(iommu.misses.map { $0.iova & ~4095 }).count
        say("  max_iotlb_entries = \(limit); first pass \(firstPass) MISSes over \(pages) pages, second pass over the same buffers \(secondPass) MISSes; no error")
        try expect(pages > limit, "only \(pages) pages were touched; the test needs more than \(limit)")
        try expect(secondPass > 0, "no MISS in the second pass: nothing was evicted")
        try expect(p.takeRingErrors().isEmpty && iommu.failures.isEmpty, "eviction raised an error")
    },
]
