import Glibc
import NetFormats
import Vhost

/// The kernel's packet generator (net/core/pktgen.c) as an RX source: its kernel thread sends
/// into the tap as fast as the tap takes them, so the receiver, not the sender, sets the rate.
/// Controlled through /proc/net/pktgen; `Scripts/vm` loads the module.
public final class PacketGenerator {
    /// Whether the pktgen module is loaded (its control file exists and we may write it).
    public static var isAvailable: Bool { access("/proc/net/pktgen/pgctrl", W_OK) == 0 }

    public let device: String
    private var runner: WorkerThread?

    /// Configures kpktgend_0 to send `frameSize`-byte UDP frames to `destination` on `device`
    /// (10.79.0.1 → 10.79.0.2, to `udpPort`), without end, until `stop`. With `queues` above 1
    /// each frame goes to one of the tap's first `queues` queues at random. With
    /// `packetsPerSecond` pktgen paces itself to that rate (`ratep`) instead of sending as fast
    /// as the tap takes them.
    public init(device: String, frameSize: Int, destination: MACAddress, queues: Int = 1, udpPort: UInt16 = 9,
                packetsPerSecond: Int? = nil) throws(VhostError) {
        self.device = device
        func write(_ file: String, _ command: String) throws(VhostError) {
            // pktgen answers a bad command by failing the write; its reason is in the file.
            guard PacketGenerator.write(file, command) else {
                let reason = KernelInfo.readFile(file)?.split(separator: "\n").first { $0.hasPrefix("Result:") } ?? ""
                throw .system(call: "write", detail: "\(file) ← \"\(command)\" \(reason)", errno: .invalidArgument)
            }
        }
        let thread = "/proc/net/pktgen/kpktgend_0"
        try write(thread, "rem_device_all")
        try write(thread, "add_device \(device)")
        let control = "/proc/net/pktgen/\(device)"
        // clone_skb 0: a tap consumes each skb, so pktgen must build every one (pktgen refuses
        // cloning on devices without IFF_TX_SKB_SHARING).
        for command in ["count 0", "clone_skb 0", "delay 0", "pkt_size \(frameSize)", "dst_mac \(destination)", "src_min 10.79.0.1", "src_max 10.79.0.1",
                        "dst_min 10.79.0.2", "dst_max 10.79.0.2", "udp_dst_min \(udpPort)", "udp_dst_max \(udpPort)"] {
            try write(control, command)
        }
        if let packetsPerSecond { try write(control, "ratep \(packetsPerSecond)") }
        if queues > 1 {
            // pktgen calls ndo_start_xmit itself with the queue it chose (pktgen.c pktgen_xmit:
            // skb_get_queue_mapping), so the tap's own queue selection never runs; without a
            // queue map every frame lands on queue 0.
            for command in ["queue_map_min 0", "queue_map_max \(queues - 1)", "flag QUEUE_MAP_RND"] { try write(control, command) }
        }
    }

    /// Starts sending (pktgen's `start` blocks its writer until it stops, so it runs on a
    /// thread), and waits until kpktgend_0 lists the device as running.
    public func start() throws(VhostError) {
        runner = WorkerThread { _ = PacketGenerator.write("/proc/net/pktgen/pgctrl", "start") }
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline {
            let state = KernelInfo.readFile("/proc/net/pktgen/kpktgend_0") ?? ""
            if state.split(separator: "\n").contains(where: { $0.hasPrefix("Running:") && $0.split(separator: " ").contains { $0 == device } }) { return }
            usleep(10_000)
        }
        stop()
        throw .system(call: "write", detail: "/proc/net/pktgen/pgctrl ← \"start\": pktgen did not start sending on \(device)", errno: .timedOut)
    }

    /// Stops sending and waits for pktgen to return.
    public func stop() {
        _ = PacketGenerator.write("/proc/net/pktgen/pgctrl", "stop")
        runner?.join()
        runner = nil
    }

    /// Packets pktgen sent so far on this run (`pkts-sofar` of its device file), or nil.
    public var sent: UInt64? {
        guard let text = KernelInfo.readFile("/proc/net/pktgen/\(device)") else { return nil }
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ")
            if let at = words.firstIndex(of: "pkts-sofar:"), at + 1 < words.count { return UInt64(words[at + 1]) }
        }
        return nil
    }

    deinit {
        if runner != nil { stop() }
        _ = PacketGenerator.write("/proc/net/pktgen/kpktgend_0", "rem_device_all")
    }

    /// One unbuffered write of a command, newline-terminated: pktgen reports a bad command by
    /// failing the write(2). The newline matters: pgctrl_write (pktgen.c) on 6.1 and 6.12 drops the
    /// last byte as the newline, so a bare "start" reads as "star" and fails (7.2 takes either).
    static func write(_ path: String, _ command: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array((command + "\n").utf8)
        return bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
    }
}
