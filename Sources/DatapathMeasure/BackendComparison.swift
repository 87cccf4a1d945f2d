import CVhost
import Glibc
import HostNetwork
import NetFormats
import Synchronization
import SystemPackage
import Vhost
import VhostNet
import Virtio

/// What moves the frames between the driver's side and the tap.
public enum BenchBackend: String, CaseIterable, Sendable {
    /// The kernel's vhost worker moves them between our rings and the tap.
    case vhost
    /// This process reads and writes the tap fd itself (QEMU without vhost), sleeping in poll(2)
    /// when there is nothing to read.
    case tap
    /// The same, spinning on a non-blocking fd instead of sleeping.
    case tapPoll = "tap-poll"
}

/// Which way the frames go.
public enum BenchScenario: String, CaseIterable, Sendable {
    /// From the driver's side into the tap (counted by the tap's statistics).
    case tx
    /// From the host into the driver's side (pktgen, or a packet socket on another thread).
    case rx
    /// Both at once.
    case bidir
    /// ICMP echo round trips with the host's stack, one at a time (latency).
    case ping
    /// UDP request/response with an echo socket on the host, one at a time (latency; netperf's UDP_RR).
    case udpRR = "udp-rr"

    /// A latency scenario: one request in flight, measured per round trip.
    public var isRoundTrip: Bool { self == .ping || self == .udpRR }
}

/// One measurement's settings.
public struct BenchSettings: Sendable, Equatable {
    public var backend: BenchBackend
    public var scenario: BenchScenario
    public var frameSize: Int
    public var queueSize: UInt16 = 256
    public var mode: NotificationMode = .interrupt
    public var eventIndex = true
    public var seconds: Double = 1
    /// TX frames end in an XDP program that drops them (the host stack out of the measurement).
    public var xdpDrop = false
    /// Pin the vhost worker to this CPU.
    public var workerCPU: Int? = nil
    /// Frames handed over per burst: added to the ring before one publish (vhost), or written
    /// and read per loop (the userspace path).
    public var batch: Int = 64
    /// `VHOST_SET_VRING_BUSYLOOP_TIMEOUT` on both vrings, in microseconds (0: off).
    public var busyloopMicroseconds: UInt32 = 0
    public init(backend: BenchBackend, scenario: BenchScenario, frameSize: Int) {
        self.backend = backend; self.scenario = scenario; self.frameSize = frameSize
    }
}

/// One measurement's result. Rates count what the far side saw.
public struct BenchResult: Sendable {
    public var settings: BenchSettings
    /// TX frames the tap counted (rx_packets, plus rx_dropped under XDP drop).
    public var transmitted: UInt64 = 0
    /// Of those, the ones the tap dropped (rx_dropped): under XDP drop, every one.
    public var transmitDroppedAtTap: UInt64 = 0
    /// TX frames the driver side handed over.
    public var transmitSent: UInt64 = 0
    /// RX frames the driver side received.
    public var received: UInt64 = 0
    /// RX frames the tap passed on (its tx_packets) and dropped (tx_dropped: the receiver was full).
    public var receiveTapPassed: UInt64 = 0
    public var receiveTapDropped: UInt64 = 0
    /// What fed RX: "pktgen" or "packet socket thread".
    public var receiveSource: String = ""
    public var seconds: Double = 0
    public var cpu = CPUCost(driverNanoseconds: 0, workerNanoseconds: nil)
    public var kicks: UInt64 = 0
    public var calls: UInt64 = 0
    /// The round trips of a latency scenario.
    public var roundTrips: RoundTrips.Outcome? = nil

    /// Frames the far side saw; in a latency scenario, completed round trips.
    public var frames: UInt64 { roundTrips?.completed ?? (transmitted + received) }
    public var framesPerSecond: Double { seconds > 0 ? Double(frames) / seconds : 0 }
    public var gigabitsPerSecond: Double { framesPerSecond * Double(settings.frameSize * 8) / 1e9 }
    public var driverNanosecondsPerFrame: Double { frames > 0 ? Double(cpu.driverNanoseconds) / Double(frames) : 0 }
    public var workerNanosecondsPerFrame: Double? { cpu.workerNanoseconds.map { frames > 0 ? Double($0) / Double(frames) : 0 } }
    public var kicksPerFrame: Double { frames > 0 ? Double(kicks) / Double(frames) : 0 }
    public var callsPerFrame: Double { frames > 0 ? Double(calls) / Double(frames) : 0 }
}

/// Runs one measurement of one backend, setting it up on a fresh tap and tearing it down.
public enum BackendComparison {
    /// The source address of the frames this side sends; RX frames go to `receiverMAC`.
    public static let senderMAC = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)
    public static let receiverMAC = MACAddress(0x52, 0x54, 0x00, 0xbe, 0x4c, 0x01)

    static func frame(size: Int, destination: MACAddress) -> [UInt8] {
        EthernetFrame.build(destination: destination, source: senderMAC, etherType: EthernetFrame.experimentalType,
                            payload: [UInt8](repeating: 0x5a, count: max(0, size - 14)))
    }

    public static func run(_ settings: BenchSettings, tapName: String) throws -> BenchResult {
        if settings.scenario.isRoundTrip { return try runRoundTrips(settings, tapName: tapName) }
        switch settings.backend {
        case .vhost: return try runVhost(settings, tapName: tapName)
        case .tap, .tapPoll: return try runUserspace(settings, tapName: tapName)
        }
    }

    // MARK: the RX source

    /// Feeds RX: pktgen where it is loaded, else a packet socket on its own thread.
    final class Source {
        let name: String
        private var pktgen: PacketGenerator?
        private var thread: WorkerThread?
        final class Flag: Sendable { let raised = Atomic<Bool>(false) }
        private let stopFlag = Flag()

        init(tapName: String, frameSize: Int) throws {
            if PacketGenerator.isAvailable {
                let generator = try PacketGenerator(device: tapName, frameSize: frameSize, destination: BackendComparison.receiverMAC)
                try generator.start()
                pktgen = generator
                name = "pktgen"
            } else {
                let index = try NetworkInterface(name: tapName).index()
                let frame = BackendComparison.frame(size: frameSize, destination: BackendComparison.receiverMAC)
                name = "packet socket thread"
                thread = WorkerThread { [stopFlag] in
                    guard let socket = try? PacketSocket(interfaceIndex: index) else { return }
                    while !stopFlag.raised.load(ordering: .relaxed) {
                        // ENOBUFS when the tap's queue is full: the receiver sets the pace.
                        for _ in 0..<64 { try? socket.send(frame) }
                    }
                }
            }
        }

        func stop() {
            pktgen?.stop()
            pktgen = nil
            stopFlag.raised.store(true, ordering: .relaxed)
            thread?.join()
            thread = nil
        }

        deinit { stop() }
    }

    static func statistic(_ tap: String, _ name: String) -> UInt64 { KernelInfo.interfaceStatistic(tap, name) ?? 0 }

    struct TapCounters {
        let tap: String
        let rxPackets, rxDropped, txPackets, txDropped: UInt64
        init(_ tap: String) {
            self.tap = tap
            rxPackets = statistic(tap, "rx_packets"); rxDropped = statistic(tap, "rx_dropped")
            txPackets = statistic(tap, "tx_packets"); txDropped = statistic(tap, "tx_dropped")
        }
        /// Fills the far side's counts into `result` (TX: what the tap took in; RX: what it passed on or dropped).
        func delta(into result: inout BenchResult, xdpDrop: Bool) {
            let now = TapCounters(tap)
            if result.settings.scenario != .rx {
                result.transmitDroppedAtTap = now.rxDropped &- rxDropped
                result.transmitted = (now.rxPackets &- rxPackets) + (xdpDrop ? result.transmitDroppedAtTap : 0)
            }
            if result.settings.scenario != .tx {
                result.receiveTapPassed = now.txPackets &- txPackets
                result.receiveTapDropped = now.txDropped &- txDropped
            }
        }
    }

    // MARK: vhost

    static func runVhost(_ settings: BenchSettings, tapName: String) throws -> BenchResult {
        let (pair, workers) = try openPair(settings, tapName: tapName)
        let xdp = settings.xdpDrop ? try XDPDropProgram(interface: tapName) : nil
        defer { _ = xdp }
        var result = BenchResult(settings: settings)
        let frame = frame(size: settings.frameSize, destination: .broadcast)
        // The tap's tx_packets grows when its reader (the vhost worker) takes a frame, which
        // can happen before we reap it: read the counters before the source starts, so that
        // every frame we count was also counted by the tap.
        let counters = TapCounters(tapName)
        let source = settings.scenario == .tx ? nil : try Source(tapName: tapName, frameSize: settings.frameSize)
        result.receiveSource = source?.name ?? ""
        let kicksBefore = pair.transmitCounters.kicks + pair.receiveCounters.kicks
        let callsBefore = pair.transmitCounters.calls + pair.receiveCounters.calls
        let meter = CPUCost.Meter(workers: workers)
        let start = MonotonicClock.seconds()
        var sent: UInt64 = 0, received: UInt64 = 0
        let chunk = min(settings.batch, Int(settings.queueSize))
        while MonotonicClock.seconds() - start < settings.seconds {
            if settings.scenario != .rx {
                // Keeps the ring full: as many as fit now, reaping what the device used.
                let added = try pair.post(count: chunk) { _, buffer in
                    buffer.copyBytes(from: frame)
                    return frame.count
                }
                sent += UInt64(added)
                if added == 0 && settings.scenario == .tx { _ = try pair.waitForTransmitRoom() }
            }
            if settings.scenario != .tx {
                received += UInt64(try pair.receive(limit: chunk, milliseconds: settings.scenario == .rx ? 20 : 0) { _ in })
            }
        }
        if settings.scenario != .rx { try pair.drainTransmit() }
        result.seconds = MonotonicClock.seconds() - start
        result.cpu = meter.read()
        source?.stop()
        counters.delta(into: &result, xdpDrop: settings.xdpDrop)
        result.transmitSent = sent
        result.received = received
        result.kicks = pair.transmitCounters.kicks + pair.receiveCounters.kicks - kicksBefore
        result.calls = pair.transmitCounters.calls + pair.receiveCounters.calls - callsBefore
        return result
    }

    /// A vhost pair on `tapName` with the settings' ring size, EVENT_IDX, notification mode,
    /// busyloop timeout and worker pinning; returned with its worker threads.
    static func openPair(_ settings: BenchSettings, tapName: String) throws -> (VhostNetQueuePair, [VhostWorkerThread]) {
        var config = VhostNetQueuePair.Configuration(tapName: tapName)
        config.queueSize = settings.queueSize
        config.features = settings.eventIndex ? [.version1, .eventIndex] : [.version1]
        config.notificationMode = settings.mode
        let pair = try VhostNetQueuePair(config)
        return (pair, try prepare(pair, settings))
    }

    /// Busyloop timeout and worker pinning for a fresh vhost pair; returns its workers.
    static func prepare(_ pair: borrowing VhostNetQueuePair, _ settings: BenchSettings) throws -> [VhostWorkerThread] {
        if settings.busyloopMicroseconds > 0 {
            for index: UInt32 in [0, 1] { try pair.device.setVringBusyloopTimeout(index: index, microseconds: settings.busyloopMicroseconds) }
        }
        let workers = VhostWorkerThread.findAll()
        if let cpu = settings.workerCPU { for worker in workers { try worker.pin(to: cpu) } }
        return workers
    }

    // MARK: round trips (latency)

    static func runRoundTrips(_ settings: BenchSettings, tapName: String) throws -> BenchResult {
        let kind: RoundTrips.Kind = settings.scenario == .ping ? .icmp : .udp
        var result = BenchResult(settings: settings)
        switch settings.backend {
        case .vhost:
            let (pair, workers) = try openPair(settings, tapName: tapName)
            try HostNetwork.setAddress(RoundTrips.hostInterface, on: tapName)
            let echo = kind == .udp ? try RoundTrips.Echo() : nil
            defer { echo?.stop() }
            guard let hostMAC = MACAddress(try pair.port.macAddress()) else { throw VhostError.invalidArgument("\(tapName) has no MAC address") }
            let trips = RoundTrips(kind: kind, frameSize: settings.frameSize, hostMAC: hostMAC, ourMAC: receiverMAC)
            let kicksBefore = pair.transmitCounters.kicks + pair.receiveCounters.kicks
            let callsBefore = pair.transmitCounters.calls + pair.receiveCounters.calls
            let meter = CPUCost.Meter(workers: workers)
            let start = MonotonicClock.seconds()
            result.roundTrips = try trips.run(seconds: settings.seconds, send: { try pair.transmit(frame: $0) }, receive: { milliseconds, handler in
                try pair.receive(limit: 64, milliseconds: milliseconds) { handler(Array($0.frame)) }
            })
            result.seconds = MonotonicClock.seconds() - start
            result.cpu = meter.read()
            result.kicks = pair.transmitCounters.kicks + pair.receiveCounters.kicks - kicksBefore
            result.calls = pair.transmitCounters.calls + pair.receiveCounters.calls - callsBefore
        case .tap, .tapPoll:
            let tap = try Tap(name: tapName)
            try tap.setVnetHeaderSize(12)
            try tap.setLinkUp(true)
            try HostNetwork.setAddress(RoundTrips.hostInterface, on: tapName)
            let echo = kind == .udp ? try RoundTrips.Echo() : nil
            defer { echo?.stop() }
            guard let hostMAC = MACAddress(try tap.macAddress()) else { throw VhostError.invalidArgument("\(tapName) has no MAC address") }
            let flags = fcntl(tap.fd, F_GETFL)
            _ = fcntl(tap.fd, F_SETFL, flags | O_NONBLOCK)
            let spin = settings.backend == .tapPoll
            let trips = RoundTrips(kind: kind, frameSize: settings.frameSize, hostMAC: hostMAC, ourMAC: receiverMAC)
            var buffer = [UInt8](repeating: 0, count: 65536 + 12)
            var poller = pollfd(fd: tap.fd, events: Int16(POLLIN), revents: 0)
            let meter = CPUCost.Meter(workers: [])
            let start = MonotonicClock.seconds()
            result.roundTrips = try trips.run(seconds: settings.seconds, send: { frame in
                // The same bytes the vhost path sends: a zeroed 12-byte virtio-net header, then the frame.
                let packet = [UInt8](repeating: 0, count: 12) + frame
                let n = packet.withUnsafeBytes { write(tap.fd, $0.baseAddress, $0.count) }
                guard n == packet.count else { throw VhostError.system(call: "write", detail: "a frame to \(tapName)", errno: Errno(rawValue: errno)) }
            }, receive: { milliseconds, handler in
                if !spin { _ = poll(&poller, 1, milliseconds) }
                for _ in 0..<settings.batch {
                    let n = buffer.withUnsafeMutableBytes { read(tap.fd, $0.baseAddress, $0.count) }
                    guard n > 12 else { break }
                    handler(Array(buffer[12..<n]))
                }
            })
            result.seconds = MonotonicClock.seconds() - start
            result.cpu = meter.read()
        }
        return result
    }

    // MARK: the userspace path

    static func runUserspace(_ settings: BenchSettings, tapName: String) throws -> BenchResult {
        let tap = try Tap(name: tapName)
        try tap.setVnetHeaderSize(12)
        try tap.setLinkUp(true)
        let xdp = settings.xdpDrop ? try XDPDropProgram(interface: tapName) : nil
        defer { _ = xdp }
        let spin = settings.backend == .tapPoll
        let flags = fcntl(tap.fd, F_GETFL)
        _ = fcntl(tap.fd, F_SETFL, flags | O_NONBLOCK)
        var result = BenchResult(settings: settings)
        // The same bytes the vhost path sends: a zeroed 12-byte virtio-net header, then the frame.
        let packet = [UInt8](repeating: 0, count: 12) + frame(size: settings.frameSize, destination: .broadcast)
        var buffer = [UInt8](repeating: 0, count: 65536 + 12)
        let counters = TapCounters(tapName)  // before the source starts, as in runVhost
        let source = settings.scenario == .tx ? nil : try Source(tapName: tapName, frameSize: settings.frameSize)
        result.receiveSource = source?.name ?? ""
        let meter = CPUCost.Meter(workers: [])
        let start = MonotonicClock.seconds()
        var sent: UInt64 = 0, received: UInt64 = 0
        var poller = pollfd(fd: tap.fd, events: Int16(POLLIN), revents: 0)
        while MonotonicClock.seconds() - start < settings.seconds {
            if settings.scenario != .rx {
                // tun takes one frame per write(2) (tun_chr_write_iter); there is no batched write.
                for _ in 0..<settings.batch {
                    let n = packet.withUnsafeBytes { write(tap.fd, $0.baseAddress, $0.count) }
                    if n == packet.count { sent += 1 } else { break }
                }
            }
            if settings.scenario != .tx {
                var got = 0
                while got < settings.batch {
                    let n = buffer.withUnsafeMutableBytes { read(tap.fd, $0.baseAddress, $0.count) }
                    if n > 12 { received += 1; got += 1 } else { break }
                }
                if got == 0 && !spin && settings.scenario == .rx { _ = poll(&poller, 1, 20) }
            }
        }
        result.seconds = MonotonicClock.seconds() - start
        result.cpu = meter.read()
        source?.stop()
        counters.delta(into: &result, xdpDrop: settings.xdpDrop)
        result.transmitSent = sent
        result.received = received
        return result
    }
}
