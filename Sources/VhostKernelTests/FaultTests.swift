import DatapathSuite
import Glibc
import HostNetwork
import NetFormats
import SystemPackage
import Vhost
import VhostNet
import Virtio
import VhostTestSupport

// The kernel's rules as a fault-injection suite: one test per case, each printing its answer as
// a `RULE case: answer` line, from which Scripts/test writes docs/kernel-rules.md per kernel.
// After each case the process is alive, and a queue pair carries traffic again.

func rule(_ name: String, _ answer: String) { say("RULE \(name): \(answer)") }

/// The kernel's answer to `body`: "ok", or the errno's name.
func answer(_ body: () throws -> Void) -> String {
    do { try body(); return "ok" } catch VhostError.ioctl(let failure) { return failure.errno.name } catch { return "\(error)" }
}

/// A fresh pair carries traffic both ways: the kernel and the process are fine after a fault.
func trafficAgain(_ tap: String) throws {
    let p = try pair(tap) { $0.queueSize = 64 }
    try transmitAndCompare(p, frames: 50)
    try receiveAndCompare(p, frames: 20)
}

/// What the kernel logs for each injected fault (`vq_err`'s text in drivers/vhost/vhost.c and
/// net.c): any one of these parts. The avail-index jump is "Invalid available index change" on
/// 6.1.0-57, 6.12.117 and 7.2.13 and "Guest moved used index" on older kernels.
func kernelWords(for fault: RingFault, onTransmit: Bool) -> [String] {
    switch fault {
    case .addressOutsideMemory, .lengthOverflow: ["Translation failure"]
    case .headOutOfRange: ["Guest says index"]
    case .chainLoop: ["Loop detected"]
    case .availIndexJump: ["Invalid available index change", "Guest moved"]
    case .indirectLengthNotMultipleOf16: ["Invalid length in indirect descriptor"]
    case .nestedIndirect: ["Nested indirect descriptor"]
    case .wrongDirection: [onTransmit ? "Unexpected descriptor format for TX" : "unexpected descriptor format for RX"]
    }
}

/// Whether the frame on the broken chain goes through once the chain is repaired and kicked:
/// after every fault but one the kernel left the chain unused and takes it again (vhost.c
/// vhost_discard_vq_desc, or an error before the head was taken); a device-writable descriptor
/// on TX is consumed without a used entry (net.c handle_tx: get_tx_bufs returns -EFAULT after
/// vhost_get_vq_desc took the head), on every kernel of the matrix.
func frameGoesThroughAfterRepair(_ fault: RingFault, onTransmit: Bool) -> Bool {
    !(fault == .wrongDirection && onTransmit)
}

func ringFaultTest(_ name: String, _ fault: RingFault, onTransmit: Bool, _ configure: @escaping @Sendable (inout QueuePairConfiguration) -> Void = { _ in }) -> KernelTest {
    KernelTest(name: "fault: \(name): the kernel's own message, the queue, the error eventfd and what happens after repair") {
        let log = try KernelLog.vhost().get()
        let p = try pair("vhf-ring") { $0.queueSize = 64; configure(&$0) }
        let host = try KernelHostSide(p)
        try transmitAndCompare(p, host: host, frames: 20)
        _ = log.newMessages()
        let injected = onTransmit ? p.injectTransmitFault(fault, frame: TestFrame.bytes(900)) : p.injectReceiveFault(fault)
        guard let injected else { throw KernelTestFailure("nothing to break") }
        if !onTransmit { try host.send(TestFrame.bytes(901)) }
        // The error eventfd (our view) and the kernel log (the kernel's words), both.
        let event = try waitForRingError(p, seconds: 2)
        let words = kernelWords(for: fault, onTransmit: onTransmit)
        let (message, seen) = log.waitForMessage(containingAnyOf: words, seconds: 2)
        p.repair(injected, onTransmit: onTransmit)
        var delivered = false
        if onTransmit {
            delivered = host.nextTestFrame(milliseconds: 1500) == TestFrame.bytes(900)
        } else {
            let until = ContinuousClock.now + .seconds(1.5)
            while !delivered && ContinuousClock.now < until {
                try p.receive(milliseconds: 100) { f in if TestFrame.sequence(of: f.frame) == 901 { delivered = true } }
            }
        }
        let afterRepair = delivered ? "repaired and kicked, the frame goes through" : "after the repair the frame never went through (the chain was consumed without a used entry)"
        rule(name, "kernel: \"\(message ?? "nothing")\"; ring error on \(event.queue); our diagnosis: \(event.likelyCause); \(afterRepair)")
        try expect(message != nil, "the kernel logged none of \(words) for \(name); its messages: \(seen.isEmpty ? "none" : seen.joined(separator: " | "))")
        try expect(event.queue.direction == (onTransmit ? .transmit : .receive), "the ring error came on \(event.queue)")
        try expect(event.likelyCause.kernelWords.contains { message!.contains($0) },
                   "our diagnosis (\(event.likelyCause)) is not what the kernel said: \(message!)")
        try expect(delivered == frameGoesThroughAfterRepair(fault, onTransmit: onTransmit),
                   "after the repair: \(afterRepair), where the kernel \(frameGoesThroughAfterRepair(fault, onTransmit: onTransmit) ? "takes the chain again" : "consumed the chain")")
        try trafficAgain("vhf-again")
    }
}

let faultTests: [KernelTest] = [
    ringFaultTest("a descriptor address outside the memory table (TX)", .addressOutsideMemory, onTransmit: true),
    ringFaultTest("a descriptor address outside the memory table (RX)", .addressOutsideMemory, onTransmit: false),
    ringFaultTest("a descriptor length running past its region (TX)", .lengthOverflow, onTransmit: true),
    ringFaultTest("a chain loop (TX)", .chainLoop, onTransmit: true),
    ringFaultTest("an avail entry naming a head ≥ num (TX)", .headOutOfRange, onTransmit: true),
    ringFaultTest("avail->idx moved more than num (TX)", .availIndexJump, onTransmit: true),
    ringFaultTest("an indirect table whose length is not a multiple of 16 (TX)", .indirectLengthNotMultipleOf16, onTransmit: true) {
        $0.features = [.version1, .eventIndex, .indirectDescriptors]; $0.descriptorLayout = .indirect
    },
    ringFaultTest("a nested indirect table (TX)", .nestedIndirect, onTransmit: true) {
        $0.features = [.version1, .eventIndex, .indirectDescriptors]; $0.descriptorLayout = .indirect
    },
    ringFaultTest("a device-writable descriptor on TX", .wrongDirection, onTransmit: true),
    ringFaultTest("a device-readable descriptor on RX", .wrongDirection, onTransmit: false),
    KernelTest(name: "fault: ring sizes 0, 3 and 65536") {
        let device = try ownedDevice()
        let answers = [0, 3, 65536].map { n in "\(n) → \(answer { try device.setVringNum(index: 0, num: UInt32(n)) })" }
        rule("SET_VRING_NUM of 0, 3, 65536", answers.joined(separator: ", "))
        try expect(answers.allSatisfy { $0.hasSuffix("EINVAL") }, "\(answers)")
        try trafficAgain("vhf-again")
    },
    KernelTest(name: "fault: misaligned avail and used rings") {
        let device = try ownedDevice()
        var memory = try GuestMemory(size: 1 << 20)
        let block = try memory.allocate(16 * 64 + 4096, alignment: 4096)
        try device.setMemoryTable(memory.map.memoryTable)
        try device.setVringNum(index: 0, num: 64)
        let base = HostAddress(block.host).rawValue
        let avail = answer { try device.setVringAddress(index: 0, VringAddresses(descriptors: HostAddress(block.host), avail: HostAddress(unchecked: base + 1025), used: HostAddress(unchecked: base + 2048))) }
        let used = answer { try device.setVringAddress(index: 0, VringAddresses(descriptors: HostAddress(block.host), avail: HostAddress(unchecked: base + 1024), used: HostAddress(unchecked: base + 2050))) }
        rule("SET_VRING_ADDR with avail at an odd address, used 2- but not 4-aligned", "avail → \(avail), used → \(used)")
        try expect(avail == "EINVAL" && used == "EINVAL", "avail \(avail), used \(used)")
        try trafficAgain("vhf-again")
    },
    KernelTest(name: "fault: overlapping and zero-sized memory regions") {
        let device = try ownedDevice()
        let overlap = answer { try device.setMemoryTable(MemoryTable(regions: [
            .init(guestAddress: 0x4000_0000, size: 2 << 20, userspaceAddress: 0x7000_0000_0000),
            .init(guestAddress: 0x4010_0000, size: 2 << 20, userspaceAddress: 0x7000_1000_0000)])) }
        let empty = answer { try device.setMemoryTable(MemoryTable(regions: [.init(guestAddress: 0x4000_0000, size: 0, userspaceAddress: 0x7000_0000_0000)])) }
        rule("SET_MEM_TABLE with overlapping regions; with a zero-sized region", "overlapping → \(overlap), zero-sized → \(empty)")
        // vhost.c vhost_set_memory: regions may overlap; an empty one fails vhost_iotlb_add_range,
        // which vhost_set_memory answers with EFAULT.
        try expect(overlap == "ok" && empty == "EFAULT", "overlapping → \(overlap) (want ok), zero-sized → \(empty) (want EFAULT)")
        try trafficAgain("vhf-again")
    },
    KernelTest(name: "fault: ioctls before SET_OWNER, from a process that is not the owner, and a second SET_OWNER") {
        let device = try VhostNetDevice()
        let before = answer { try device.setVringNum(index: 0, num: 64) }
        try device.setOwner()
        let twice = answer { try device.setOwner() }
        // A child process shares the fd but not the memory: vhost_dev_check_owner (dev->mm) refuses.
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw KernelTestFailure("pipe failed") }
        let child = fork()
        if child == 0 {
            var code: Int32 = 0
            do { try device.setVringNum(index: 0, num: 64) } catch VhostError.ioctl(let failure) { code = failure.errno.rawValue } catch { code = -1 }
            _ = write(fds[1], &code, 4)
            _exit(0)
        }
        var code: Int32 = 0
        _ = read(fds[0], &code, 4)
        var status: Int32 = 0
        waitpid(child, &status, 0)
        close(fds[0]); close(fds[1])
        let other = code == 0 ? "ok" : Errno(rawValue: code).name
        rule("a vring ioctl before SET_OWNER; from a child process; a second SET_OWNER", "before → \(before), child → \(other), second SET_OWNER → \(twice)")
        try expect(before == "EPERM" && other == "EPERM" && twice == "EBUSY", "before \(before), child \(other), twice \(twice)")
        try trafficAgain("vhf-again")
    },
    KernelTest(name: "fault: a closed fd and a regular file as kick, call and backend") {
        var config = VhostNetQueuePair.Configuration(tapName: "vhf-fds")
        config.queueSize = 64
        let p = try VhostNetQueuePair(config)
        try p.stop()
        let file = open("/tmp/vhf-regular", O_RDWR | O_CREAT, 0o600)
        defer { close(file); unlink("/tmp/vhf-regular") }
        let closed = dup(file)
        close(closed)
        var answers: [String] = []
        for (label, fd) in [("closed fd", closed), ("regular file", file)] {
            let kick = answer { try p.device.setVringKick(index: 1, rawFD: fd) }
            let call = answer { try p.device.setVringCall(index: 1, rawFD: fd) }
            let backend = answer { try p.device.setBackend(index: 1, fd: fd) }
            answers.append("\(label): kick → \(kick), call → \(call), backend → \(backend)")
        }
        rule("a closed fd and a regular file as SET_VRING_KICK, SET_VRING_CALL and NET_SET_BACKEND", answers.joined(separator: "; "))
        // eventfd_ctx_fdget: EBADF for no file, EINVAL for a file that is not an eventfd; net.c
        // get_socket: ENOTSOCK for anything that is not a tap, macvtap or packet socket.
        try expect(answers == ["closed fd: kick → EBADF, call → EBADF, backend → ENOTSOCK", "regular file: kick → EINVAL, call → EINVAL, backend → ENOTSOCK"],
                   "the kernel answered \(answers)")
        try trafficAgain("vhf-again")
    },
    KernelTest(name: "fault: the memory table changed while traffic runs") {
        var config = VhostNetQueuePair.Configuration(tapName: "vhf-mem")
        config.queueSize = 64
        let p = try VhostNetQueuePair(config)
        let host = try KernelHostSide(p)
        _ = try p.post(count: 64) { i, buffer in TestFrame.write(i, into: buffer) }
        let added = answer { try p.hotplugMemory(size: 2 << 20, at: 0x3_0000_0000) }
        try p.drainTransmit(milliseconds: 5000)
        var arrived = 0
        while host.nextTestFrame(milliseconds: 500) != nil { arrived += 1 }
        let removed = answer { try p.unplugMemory(at: 0x3_0000_0000) }
        try transmitAndCompare(p, host: host, frames: 100)
        rule("SET_MEM_TABLE while 64 TX frames are in flight (a region added, then removed)", "add → \(added), remove → \(removed); \(arrived) of 64 frames arrived, traffic goes on")
        try expect(added == "ok" && removed == "ok" && arrived == 64, "add \(added), remove \(removed), \(arrived) of 64")
    },
]
