import DatapathSuite
import Glibc
import HostNetwork
import SystemPackage
import Vhost
import NetFormats
import VhostModel
import VhostNet
import VhostScript

/// The requests added through the typed path (VhostRequest, TunRequest): each one's real answer
/// on this kernel, and its effect where it has one, seen from outside our own state.

/// The errno a request earns (nil for success).
private func answer(_ body: () throws(VhostError) -> Void) -> Errno? {
    do { try body(); return nil } catch .ioctl(let failure) { return failure.errno } catch { return .ioError }
}

private func name(_ errno: Errno?) -> String { errno?.name ?? "ok" }

let requestTests: [KernelTest] = [
    KernelTest(name: "request: VHOST_SET/GET_VRING_ENDIAN get the kernel's answer (EPERM before SET_OWNER, ENOBUFS for index 2, then the kernel's own), and the in-process model answers the same") {
        func sequence<B: VhostBackend & ~Copyable>(_ device: borrowing B) -> [Errno?] {
            [answer { () throws(VhostError) in try device.perform(.setVringEndian(0, 1)) },
             answer { () throws(VhostError) in try device.setOwner() },
             answer { () throws(VhostError) in try device.perform(.setVringEndian(2, 1)) },
             answer { () throws(VhostError) in try device.perform(.setVringEndian(0, 1)) },
             answer { () throws(VhostError) in try device.perform(.getVringEndian(0)) }]
        }
        let kernel = sequence(try VhostNetDevice())
        let model = sequence(try InProcessVhostNetDevice())
        say("  kernel: \(kernel.map(name)); model: \(model.map(name))")
        try expect(kernel[0] == .notPermitted && kernel[1] == nil && kernel[2] == .noBufferSpace,
                   "expected EPERM, ok, ENOBUFS before the endian rule, got \(kernel.map(name))")
        if kernel[3] == nil {
            // A kernel with CONFIG_VHOST_CROSS_ENDIAN_LEGACY: the value must read back.
            let device = try ownedDevice()
            try device.perform(.setVringEndian(0, 1))
            let value = try device.perform(.getVringEndian(0)).value
            say("  exercised: this kernel has cross-endian support; GET_VRING_ENDIAN answered \(value)")
            try expect(value == 1, "SET_VRING_ENDIAN big then GET answered \(value)")
        } else {
            refusalChecked("this kernel has no CONFIG_VHOST_CROSS_ENDIAN_LEGACY: \(name(kernel[3]))")
            try expect(kernel[3] == .inappropriateIOCTLForDevice && kernel[4] == .inappropriateIOCTLForDevice,
                       "expected ENOTTY from SET and GET_VRING_ENDIAN, got \(kernel.map(name))")
        }
        try expect(model == kernel, "the in-process model answered \(model.map(name)), the kernel \(kernel.map(name))")
    },
    KernelTest(name: "request: TUNSETSNDBUF then TUNGETSNDBUF reads the value back; 0 is EINVAL") {
        let tap = try Tap(name: "vht-sndbuf")
        try tap.perform(.setSendBuffer(65536))
        let value = try tap.perform(.getSendBuffer).value
        say("  TUNGETSNDBUF after TUNSETSNDBUF 65536: \(value)")
        try expect(value == 65536, "TUNGETSNDBUF answered \(value)")
        try tap.perform(.setSendBuffer(Int32.max))
        let maximum = try tap.perform(.getSendBuffer).value
        try expect(maximum == UInt64(Int32.max), "INT_MAX read back as \(maximum)")
        try expectIoctlFailure("TUNSETSNDBUF", .invalidArgument) { () throws(VhostError) in try tap.perform(.setSendBuffer(0)) }
    },
    KernelTest(name: "request: TUNSETCARRIER off and on, seen in /sys/class/net/NAME/carrier") {
        let tap = try Tap(name: "vht-carrier")
        try tap.setLinkUp(true)
        func carrier() -> String? { KernelInfo.readFile("/sys/class/net/vht-carrier/carrier")?.split(separator: "\n").first.map(String.init) }
        try tap.perform(.setCarrier(false))
        let off = carrier()
        try tap.perform(.setCarrier(true))
        let on = carrier()
        say("  carrier after off: \(off ?? "?"), after on: \(on ?? "?")")
        try expect(off == "0" && on == "1", "carrier read \(off ?? "nothing") after off and \(on ?? "nothing") after on")
    },
    KernelTest(name: "request: TUNSETQUEUE detaches a queue of a multiqueue tap (the frames the interface sends reach only the attached queue) and attaches it again; EINVAL twice and on a single-queue tap") {
        let flags: Tap.Flags = [.tap, .noPacketInfo, .multiQueue]
        let first = try Tap(name: "vht-mq", flags: flags)
        let second = try Tap(name: "vht-mq", flags: flags)
        try first.setLinkUp(true)
        let host = try PacketSocket(interfaceIndex: try first.interfaceIndex())
        /// Sends `count` frames out of the interface (tun_net_xmit picks an attached queue for
        /// each, by flow) and counts what each queue's fd reads.
        func spread(_ count: Int) throws -> (first: Int, second: Int) {
            for i in 0..<count {
                // Distinct flows (source MAC and sequence differ), so a second queue would get some.
                var frame = TestFrame.bytes(i)
                frame[11] = UInt8(truncatingIfNeeded: i)
                try host.send(frame)
            }
            var counts = (first: 0, second: 0)
            // Only our test frames count: the host stack sends its own (IPv6 neighbour discovery).
            while let frame = first.readFrame(milliseconds: 100) { if TestFrame.sequence(of: frame) != nil { counts.first += 1 } }
            while let frame = second.readFrame(milliseconds: 100) { if TestFrame.sequence(of: frame) != nil { counts.second += 1 } }
            return counts
        }
        let both = try spread(64)
        try second.perform(.setQueue(attach: false))
        let detached = try spread(64)
        try expectIoctlFailure("TUNSETQUEUE", .invalidArgument) { () throws(VhostError) in try second.perform(.setQueue(attach: false)) }
        try second.perform(.setQueue(attach: true))
        try first.perform(.setQueue(attach: false))
        let swapped = try spread(64)
        try first.perform(.setQueue(attach: true))
        try expectIoctlFailure("TUNSETQUEUE", .invalidArgument) { () throws(VhostError) in try first.perform(.setQueue(attach: true)) }
        say("  frames read per queue (first, second): both attached \(both), second detached \(detached), first detached \(swapped)")
        try expect(detached.first == 64 && detached.second == 0, "with the second queue detached the queues read \(detached)")
        try expect(swapped.first == 0 && swapped.second == 64, "with the first queue detached the queues read \(swapped)")
        try expect(both.first + both.second == 64, "with both attached the queues read \(both) of 64")
        let single = try Tap(name: "vht-sq")
        try expectIoctlFailure("TUNSETQUEUE", .invalidArgument) { () throws(VhostError) in try single.perform(.setQueue(attach: false)) }
    },
]

/// The vhost command lines of a recorded script, without expectations (answers differ where the
/// model offers other features), comments, and the port's own requests (a tap's TUNSET* lines;
/// the frame pipe takes none): what the same sequence must make the same on both backends.
func vhostCommandLines(_ script: String) -> [String] {
    let vhostCommands = Set(VhostRequest.syntax.map(\.name) + ["send", "post", "memory", "close"])
    return script.split(separator: "\n").compactMap { line -> String? in
        let code = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map { $0.trimmingCharacters(in: " ") } ?? ""
        guard let first = code.split(separator: " ").first, vhostCommands.contains(String(first)) else { return nil }
        return code
    }
}

extension StringProtocol {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        String(drop { $0 == set }.reversed().drop { $0 == set }.reversed())
    }
}

let recordParityTests: [KernelTest] = [
    KernelTest(name: "request: --record on the in-process device and the kernel record the same vhost commands for the same bring-up (RX buffers posted), 16 TX frames and stop") {
        func configure(_ config: inout VhostNetQueuePair.Configuration, _ recorder: ScriptRecorder) {
            config.queueSize = 64
            config.features = [.version1, .eventIndex, .netMergeableRxBuffers, .indirectDescriptors]
            config.observer = recorder.ioctlObserver
            config.ringObserver = recorder.ringObserver
        }
        let frames = (0..<16).map { TestFrame.bytes($0) }
        let kernelRecorder = ScriptRecorder()
        do {
            var config = VhostNetQueuePair.Configuration(tapName: "vht-rec")
            configure(&config, kernelRecorder)
            let pair = try VhostNetQueuePair(config)
            for frame in frames { try pair.transmit(frame: frame) }
            try pair.drainTransmit()
            _ = try pair.stop()
        }
        let modelRecorder = ScriptRecorder()
        do {
            var config = VhostNetQueuePair.Configuration(tapName: "vht-rec")
            configure(&config, modelRecorder)
            var pipe = try FramePipe(name: "vht-rec")
            let host = pipe.takeHostEnd()!
            let pair = try InProcessQueuePair(config, device: try InProcessVhostNetDevice(observer: config.observer), port: pipe.takeDeviceEnd()!)
            for frame in frames { try pair.transmit(frame: frame) }
            try pair.drainTransmit()
            _ = try pair.stop()
            _ = consume host
        }
        let kernel = vhostCommandLines(kernelRecorder.script(header: "kernel"))
        let model = vhostCommandLines(modelRecorder.script(header: "model"))
        say("  \(kernel.count) vhost command lines on the kernel, \(model.count) on the in-process device")
        try expect(kernel.count > 20, "the kernel recording has only \(kernel.count) vhost lines")
        if let first = zip(kernel, model).enumerated().first(where: { $0.element.0 != $0.element.1 }) {
            throw KernelTestFailure("line \(first.offset + 1) differs: kernel `\(first.element.0)`, in-process `\(first.element.1)`")
        }
        try expect(kernel.count == model.count, "the kernel recorded \(kernel.count) lines, the in-process device \(model.count)")
    },
]
