import DatapathSuite
import Glibc
import SystemPackage
import Vhost
import VhostModel

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
            say("  refusal checked: this kernel has no CONFIG_VHOST_CROSS_ENDIAN_LEGACY: \(name(kernel[3]))")
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
    KernelTest(name: "request: TUNSETQUEUE detaches a queue of a multiqueue tap (writes to it fail with EBADFD) and attaches it again (they pass); EINVAL on a single-queue tap") {
        let flags: Tap.Flags = [.tap, .noPacketInfo, .multiQueue]
        let first = try Tap(name: "vht-mq", flags: flags)
        let second = try Tap(name: "vht-mq", flags: flags)
        try first.setLinkUp(true)
        let frame = [UInt8](repeating: 0xff, count: 6) + [0x52, 0x54, 0, 0, 0, 9, 0x88, 0xb5] + [UInt8](repeating: 0, count: 46)
        let before = try statistic("vht-mq", "rx_packets")
        try second.perform(.setQueue(attach: false))
        var detachedWrite: Errno? = nil
        do { try second.writeFrame(frame) } catch let error as VhostError {
            if case .system(_, _, let errno) = error { detachedWrite = errno }
        }
        let afterDetached = try statistic("vht-mq", "rx_packets")
        try expectIoctlFailure("TUNSETQUEUE", .invalidArgument) { () throws(VhostError) in try second.perform(.setQueue(attach: false)) }
        try second.perform(.setQueue(attach: true))
        try second.writeFrame(frame)
        let afterAttached = try statistic("vht-mq", "rx_packets")
        say("  write to the detached queue: \(detachedWrite?.name ?? "accepted"); rx_packets \(before) → \(afterDetached) → \(afterAttached)")
        try expect(detachedWrite == Errno(rawValue: EBADFD), "a write to a detached queue answered \(detachedWrite?.name ?? "success")")
        try expect(afterDetached == before && afterAttached == before + 1, "the tap counted \(afterDetached - before) frames while detached, \(afterAttached - afterDetached) after attach")
        try expectIoctlFailure("TUNSETQUEUE", .invalidArgument) { () throws(VhostError) in try second.perform(.setQueue(attach: true)) }
        let single = try Tap(name: "vht-sq")
        try expectIoctlFailure("TUNSETQUEUE", .invalidArgument) { () throws(VhostError) in try single.perform(.setQueue(attach: false)) }
    },
]
