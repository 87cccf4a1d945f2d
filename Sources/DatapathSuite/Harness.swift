import Glibc
import HostNetwork
import NetFormats
import Synchronization
import Vhost
import VhostModel
import VhostNet
import Virtio
import VhostTestSupport

/// The far side of a queue pair: what the host network sees and does. For the kernel it is the
/// tap's host stack (a packet socket and the tap's statistics); for the in-process device, the
/// host end of its frame pipe.
public protocol HostSide: AnyObject {
    /// Sends a frame (without virtio-net header) into the device's RX path, as the host would.
    func send(_ frame: [UInt8]) throws
    /// The next test frame (experimental EtherType) the driver transmitted, waiting up to `milliseconds`.
    func nextTestFrame(milliseconds: Int32) -> [UInt8]?
    /// The host side's own count of frames that reached it from the driver (the tap's
    /// rx_packets, or the pipe reader's count), waiting up to `milliseconds` for it to reach `expected`.
    func transmittedCount(waitingFor expected: UInt64, milliseconds: Int) throws -> UInt64
}

/// A world a datapath test runs in: queue pairs on some backend, and their host sides.
public protocol DatapathHarness: Sendable {
    associatedtype Pair: QueuePairDatapath & RingFaultInjecting
    associatedtype Host: HostSide
    /// For the suite's summary line: `in-process device`, `kernel 6.1.0-…`.
    var name: String { get }
    /// What the backend offers (GET_FEATURES).
    func offeredFeatures() throws -> VirtioFeatures
    /// Sets up and starts a queue pair named `name`, with `configure` applied to the defaults,
    /// and its host side.
    func makePair(_ name: String, _ configure: (inout QueuePairConfiguration) -> Void) throws -> (Pair, Host)
    /// Resumes a stopped pair on a fresh device of the same kind (a new `/dev/vhost-net` fd).
    func resumeOnFreshDevice(_ pair: Pair) throws
}

extension DatapathHarness {
    /// A started queue pair and its host side, with `configure` applied to the defaults.
    func pair(_ name: String, _ configure: (inout QueuePairConfiguration) -> Void = { _ in }) throws -> (Pair, Host) {
        try makePair(name, configure)
    }
}

// MARK: the kernel

/// `/dev/vhost-net` and a tap, with the host stack on the other side.
public struct KernelHarness: DatapathHarness {
    public typealias Pair = VhostNetQueuePair
    public typealias Host = KernelHostSide
    public init() {}
    public var name: String { "kernel \(KernelInfo.release())" }
    public func offeredFeatures() throws -> VirtioFeatures { try VhostNetDevice().features() }
    public func makePair(_ name: String, _ configure: (inout QueuePairConfiguration) -> Void) throws -> (VhostNetQueuePair, KernelHostSide) {
        var config = QueuePairConfiguration(tapName: name)
        configure(&config)
        let pair = try VhostNetQueuePair(config)
        return (pair, try KernelHostSide(pair))
    }
    public func resumeOnFreshDevice(_ pair: VhostNetQueuePair) throws {
        try pair.resume(on: try VhostNetDevice(path: pair.configuration.devicePath, observer: pair.configuration.observer))
    }
}

/// The host stack's side of any interface: a packet socket bound to it (for backends other than
/// a tap: a macvtap's sibling, a packet socket's interface).
public class KernelHostSideOnInterface: HostSide {
    let socket: PacketSocket

    /// Opens the packet socket on `interface` before any frame is sent, so none is missed.
    public init(interface: String) throws {
        socket = try PacketSocket(interfaceIndex: try NetworkInterface(name: interface).index())
        socket.setBuffers(bytes: 8 << 20)
    }

    public func send(_ frame: [UInt8]) throws { try socket.send(frame) }

    public func nextTestFrame(milliseconds: Int32) -> [UInt8]? {
        let deadline = now() + Double(milliseconds) / 1000
        repeat {
            // 0 ms is one look without waiting (a soak polls so between bursts).
            guard let frame = socket.receive(milliseconds: milliseconds == 0 ? 0 : max(1, Int32((deadline - now()) * 1000))) else { return nil }
            if EthernetFrame.etherType(of: frame) == EthernetFrame.experimentalType { return frame }
        } while milliseconds == 0 || now() < deadline
        return nil
    }

    public func transmittedCount(waitingFor expected: UInt64, milliseconds: Int) throws -> UInt64 {
        throw TestFailure("an interface's host side counts frames with nextTestFrame, not with statistics")
    }
}

/// The tap's host side: a packet socket bound to it, and its statistics.
public final class KernelHostSide: KernelHostSideOnInterface {
    let tapName: String
    let baseline: UInt64

    public init(_ pair: VhostNetQueuePair) throws {
        tapName = pair.tap.name
        baseline = KernelInfo.interfaceStatistic(tapName, "rx_packets") ?? 0
        try super.init(interface: tapName)
    }

    /// The tap counts a frame from vhost in rx_packets before vhost marks it used (tun_sendmsg),
    /// so the count is complete once `transmit` returned: no wait.
    public override func transmittedCount(waitingFor expected: UInt64, milliseconds: Int) throws -> UInt64 {
        guard let value = KernelInfo.interfaceStatistic(tapName, "rx_packets") else {
            throw TestFailure("cannot read /sys/class/net/\(tapName)/statistics/rx_packets")
        }
        return value - baseline
    }
}

// MARK: the in-process device

/// The in-process device, with the host end of its frame pipe on the other side.
public struct InProcessHarness: DatapathHarness {
    public typealias Pair = InProcessQueuePair
    public typealias Host = PipeHostSide
    public var features: VirtioFeatures
    public init(features: VirtioFeatures = InProcessVhostNetDevice.defaultFeatures) { self.features = features }
    public var name: String { "in-process device" }
    public func offeredFeatures() throws -> VirtioFeatures { features }
    public func makePair(_ name: String, _ configure: (inout QueuePairConfiguration) -> Void) throws -> (InProcessQueuePair, PipeHostSide) {
        var config = QueuePairConfiguration(tapName: name)
        configure(&config)
        var pipe = try FramePipe(name: name)
        let hostEnd = pipe.takeHostEnd()!
        let pair = try InProcessQueuePair(config, device: try InProcessVhostNetDevice(features: features, observer: config.observer),
                                          port: pipe.takeDeviceEnd()!)
        // The host end carries what the port does: the session's socket header (none when vhost adds it).
        let host = PipeHostSide(hostEnd, headerLength: pair.session.socketHeaderLength ?? 0)
        return (pair, host)
    }
    public func resumeOnFreshDevice(_ pair: InProcessQueuePair) throws {
        try pair.resume(on: try InProcessVhostNetDevice(features: features, observer: pair.configuration.observer))
    }
}

/// A queue pair on the in-process device.
public typealias InProcessQueuePair = VirtioNetQueuePair<InProcessVhostNetDevice, FramePipeEnd>

/// The host end of a frame pipe, read by its own thread as a host stack reads a tap: every frame
/// is counted, and test frames are queued for `nextTestFrame`.
public final class PipeHostSide: HostSide, @unchecked Sendable {
    private struct Received { var count: UInt64 = 0; var frames: [[UInt8]] = []; var next = 0 }

    /// What the reader thread uses, kept apart from the host side so that the thread does not
    /// keep it alive: when the test drops the host side, `deinit` stops and joins the thread.
    private final class Reader: @unchecked Sendable {
        let end: FramePipeEnd
        /// The socket-side header length (sock_hlen): 0 when vhost adds the header itself.
        let headerLength: Int
        let received = Locked(Received())
        let stopping = Atomic<Bool>(false)

        init(_ end: consuming FramePipeEnd, headerLength: Int) {
            self.end = end
            self.headerLength = headerLength
        }

        func run() {
            while !stopping.load(ordering: .acquiring) {
                guard let message = end.receive(milliseconds: 50) else { continue }
                // An empty read is the end of the SEQPACKET stream: the device end was closed
                // (its queue pair is gone), and poll would report that at once, forever.
                guard !message.isEmpty else { return }
                let frame = Array(message.dropFirst(headerLength))
                received.withLock { r in
                    r.count += 1
                    if EthernetFrame.etherType(of: frame) == EthernetFrame.experimentalType { r.frames.append(frame) }
                }
            }
        }
    }

    private let state: Reader
    private var reader: WorkerThread?
    var headerLength: Int { state.headerLength }
    private var received: Locked<Received> { state.received }

    init(_ end: consuming FramePipeEnd, headerLength: Int) {
        let state = Reader(end, headerLength: headerLength)
        self.state = state
        reader = WorkerThread { state.run() }
    }

    deinit {
        state.stopping.store(true, ordering: .releasing)
        reader?.join()
    }

    public func send(_ frame: [UInt8]) throws { try state.end.send([UInt8](repeating: 0, count: headerLength) + frame) }

    public func nextTestFrame(milliseconds: Int32) -> [UInt8]? {
        let deadline = now() + Double(milliseconds) / 1000
        while true {
            let frame = received.withLock { r -> [UInt8]? in
                guard r.next < r.frames.count else { return nil }
                defer { r.next += 1; if r.next > 4096 { r.frames.removeFirst(r.next); r.next = 0 } }
                return r.frames[r.next]
            }
            if let frame { return frame }
            if now() >= deadline { return nil }
            usleep(200)
        }
    }

    /// The device hands a frame to the pipe before it marks it used, but this side's reader
    /// thread may not have read it yet: wait up to `milliseconds` for `expected`.
    public func transmittedCount(waitingFor expected: UInt64, milliseconds: Int) throws -> UInt64 {
        let deadline = now() + Double(milliseconds) / 1000
        while true {
            let count = received.withLock { $0.count }
            if count >= expected || now() >= deadline { return count }
            usleep(500)
        }
    }
}
