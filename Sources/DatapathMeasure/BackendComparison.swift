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
    /// 512, not QEMU's 256: half of it is adaptive RX coalescing's limit, which the worker's
    /// bursts then seldom reach within the delay, and TX sleeps for 3/4 of it (docs/benchmarks.md,
    /// "Why the rings hold 512": the driver's CPU per frame against the worker's, per kernel).
    public var queueSize: UInt16 = 512
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
    /// `VHOST_SET_VRING_BUSYLOOP_TIMEOUT` on both vrings, in microseconds (0: off). `bench`
    /// starts from `defaultBusyloopMicroseconds`.
    public var busyloopMicroseconds: UInt32 = 0

    /// `bench`'s busy-loop where none is asked for: 50 µs before Linux 6.4, where the vhost worker
    /// is a kernel thread, 0 from 6.4 (a task of the owner). In two boots of 6.1 (TCG, the worker
    /// beside pktgen) the loop took the worker's CPU per RX frame to 0.78× and 0.86–0.90×, and
    /// the RX rate to 1.16–1.27×, TX 1.02–1.05×; in one boot each of 6.12 and 7.2 it raised the
    /// worker's RX cost to 1.20× and 1.09× (docs/benchmarks.md, "The driver's choices").
    public static var defaultBusyloopMicroseconds: UInt32 { KernelInfo.version < (6, 4) ? 50 : 0 }
    /// Queue pairs, each on its own queue of an IFF_MULTI_QUEUE tap and driven by its own
    /// thread: a vhost device (and worker) per pair, or a tap fd per pair on the userspace path.
    public var queuePairs: Int = 1
    /// RX interrupt coalescing on vhost (interrupt mode).
    public var receiveCoalescing: ReceiveCoalescingSetting = .off
    /// The longest RX coalescing holds a frame, in milliseconds (`ReceiveCoalescing.maxDelayMilliseconds`).
    public var receiveCoalescingDelayMilliseconds: Int32 = BenchSettings.defaultReceiveCoalescingDelay
    /// `bench`'s coalescing delay: 4 ms, where `attach` holds a frame 1 ms at most. A stream that
    /// brings fewer than half the ring per delay wakes the driver once per delay, and under
    /// emulation the worker's RX rate is that slow: in one boot each, 4 ms instead of 1 took the
    /// driver's CPU per frame from 0.21× the worker's to 0.09× on 6.1 and from 0.23× to 0.16× on
    /// 7.2, the rate unchanged (docs/benchmarks.md, "The coalescing delay"). A throughput
    /// measurement holds no frame that anyone waits for; round trips do not coalesce.
    public static let defaultReceiveCoalescingDelay: Int32 = 4
    /// How the vhost driver lays out a frame's descriptors (`indirect` negotiates INDIRECT_DESC).
    public var descriptorLayout: DescriptorLayout = .inline
    /// VIRTIO_NET_F_MRG_RXBUF on vhost.
    public var mergeableReceiveBuffers = false
    /// Guest memory on 2 MiB huge pages (memfd MFD_HUGETLB) for vhost.
    public var hugePages = false
    /// Who adds and strips the virtio-net header of a vhost run; nil: `effectiveNetHeader`.
    public var netHeader: NetHeaderOwner? = nil
    /// The header's owner in effect: as asked, or vhost, except for TSO superframes (whose GSO
    /// fields only the tap's header carries) and for anything that transmits on a kernel before
    /// 6.9 (`NetHeaderOwner.vhostHeaderTransmitsCleanly`). With vhost's header the worker costs
    /// less per 64-byte frame on every kernel measured (0.90–0.95× on TX, 0.88–0.98× on RX;
    /// docs/benchmarks.md, "Whose virtio-net header").
    public var effectiveNetHeader: NetHeaderOwner {
        if let netHeader { return netHeader }
        if segmentationOffload || (scenario != .rx && !NetHeaderOwner.vhostHeaderTransmitsCleanly) { return .tap }
        return .vhost
    }
    /// VIRTIO_F_IN_ORDER on vhost (offered by vhost-net from Linux 6.17: `GET_FEATURES` bit 35):
    /// the worker may write one used entry for a batch of chains.
    public var inOrder = false
    /// Bytes per vhost frame buffer, the virtio-net header inline; nil: 2,048, or the header and
    /// the frame where that is more. A smaller buffer packs the ring's frames into fewer pages.
    public var bufferSize: Int? = nil
    /// Round-trip scenarios: stop after this many requests (before `seconds` is up); nil: none.
    public var roundTripLimit: Int? = nil

    /// The largest frame sent as one plain Ethernet frame (a jumbo frame; the tap's MTU is
    /// raised to carry it). Larger sizes are TCP superframes for TSO.
    public static let largestPlainFrame = 9000
    /// The largest TSO superframe: an Ethernet header and an IPv4 packet of at most 65535 bytes.
    public static let largestSegmentationFrame = 14 + 65535

    /// TX frames are TCPv4 superframes of `frameSize` bytes with a GSO header (gso_size
    /// `OffloadFrame.tcpSegmentSize`), which the host stack segments: 64 KiB TSO.
    public var segmentationOffload: Bool { frameSize > BenchSettings.largestPlainFrame }

    public init(backend: BenchBackend, scenario: BenchScenario, frameSize: Int) {
        self.backend = backend; self.scenario = scenario; self.frameSize = frameSize
    }
}

/// What a vhost measurement reports to, beside its settings: the device node and the observers
/// that `--record` and `--trace` hand in. Not part of `BenchSettings`, which is a value compared
/// and swept; these only watch.
public struct BenchHooks {
    /// The vhost-net device node to open (`--device`).
    public var devicePath: String = VhostNetDevice.defaultPath
    /// Told of every ioctl (`--trace`, `--record`).
    public var observer: IoctlObserver? = nil
    /// Told of every publish and kick (`--record`).
    public var ringObserver: RingObserver? = nil
    /// Hooks with the given device node and observers (by default: the default node, no observer).
    public init(devicePath: String = VhostNetDevice.defaultPath, observer: IoctlObserver? = nil, ringObserver: RingObserver? = nil) {
        self.devicePath = devicePath; self.observer = observer; self.ringObserver = ringObserver
    }
}

/// One measurement's result. Rates count what the far side saw.
public struct BenchResult: Sendable {
    public var settings: BenchSettings
    /// TX frames the tap counted (rx_packets, plus rx_dropped under XDP drop).
    public var transmitted: UInt64 = 0
    /// Of those, the ones the tap dropped (rx_dropped): under XDP drop, every one.
    public var transmitDroppedAtTap: UInt64 = 0
    /// Bytes of TX frames the tap counted (its rx_bytes): for TSO superframes, whole frames.
    public var transmittedBytes: UInt64 = 0
    /// For TSO superframes: what the host stack saw of a first one, sent before the measurement
    /// (a PACKET_VNET_HDR socket on the tap reads the skb's own GSO fields), e.g. "one 65536-byte
    /// GSO packet, gso_type 1, gso_size 1448"; nil for plain frames.
    public var segmentationSeen: String? = nil
    /// Whether that first superframe reached the host stack as one GSO packet of the type and
    /// segment size sent.
    public var segmentationVerified: Bool? = nil
    /// TX frames the driver side handed over.
    public var transmitSent: UInt64 = 0
    /// Per queue pair: the TX frames it handed over and the RX frames it received.
    public var queueSent: [UInt64] = []
    public var queueReceived: [UInt64] = []
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

    /// An empty result for `settings`; `BackendComparison.run` fills it in (reports and their
    /// tests build them too).
    public init(settings: BenchSettings) { self.settings = settings }

    mutating func record(_ outcomes: [BackendComparison.QueueOutcome]) {
        queueSent = outcomes.map(\.sent)
        queueReceived = outcomes.map(\.received)
        transmitSent = queueSent.reduce(0, +)
        received = queueReceived.reduce(0, +)
    }
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

    /// The TX frame of `settings` and the virtio-net header before it: a broadcast frame with a
    /// zeroed header, or for sizes above a jumbo frame a TCPv4 superframe whose header asks for TSO.
    static func transmitFrame(_ settings: BenchSettings) -> (frame: [UInt8], header: VirtioNetHeader) {
        guard settings.segmentationOffload else { return (frame(size: settings.frameSize, destination: .broadcast), VirtioNetHeader()) }
        return OffloadFrame.tcp(ipv6: false, payload: settings.frameSize - 14 - 20 - 20, seed: 1)
    }

    /// Sends one TSO superframe with `send` and reads it on the host side of the tap through a
    /// PACKET_VNET_HDR socket, whose header carries the skb's own GSO fields: proof that the
    /// host stack got one GSO packet to segment, not an oversized frame (which the tap would
    /// count the same way). Records what it saw in `result`.
    static func verifySegmentation(_ settings: BenchSettings, frameLength: Int, tapName: String, into result: inout BenchResult,
                                   send: () throws -> Void) throws {
        guard settings.segmentationOffload && settings.scenario != .rx else { return }
        let socket = try PacketSocket(interfaceIndex: try NetworkInterface(name: tapName).index())
        try socket.enableVnetHeader()
        socket.setBuffers(bytes: 16 << 20)
        try send()
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            guard let seen = socket.receive(milliseconds: 500, capacity: frameLength + 64), seen.count > 10 + 1514 else { continue }
            let host = VirtioNetHeader(bytes: Array(seen.prefix(10)))
            result.segmentationSeen = "one \(seen.count - 10)-byte GSO packet on the host side, gso_type \(host.gsoType), gso_size \(host.gsoSize)"
            // Against what TSO of a TCPv4 superframe must look like, not against the header we
            // built: a header that lost its GSO fields must fail here.
            result.segmentationVerified = seen.count - 10 == frameLength && host.gsoType & ~VirtioNetHeader.gsoECN == VirtioNetHeader.GSOType.tcpV4.rawValue
                && host.gsoSize == OffloadFrame.tcpSegmentSize
            return
        }
        result.segmentationSeen = "no frame over 1514 bytes reached the host side in 5 s"
        result.segmentationVerified = false
    }

    /// RX of jumbo frames needs a tap MTU that lets them through (the host side drops larger ones).
    static func raiseMTUForReceive(_ settings: BenchSettings, on tap: borrowing Tap) throws {
        if settings.scenario != .tx && settings.frameSize > 1514 { try tap.setMTU(settings.frameSize - 14) }
    }

    public static func run(_ settings: BenchSettings, tapName: String, hooks: BenchHooks = BenchHooks()) throws -> BenchResult {
        if settings.scenario.isRoundTrip { return try runRoundTrips(settings, tapName: tapName, hooks: hooks) }
        switch settings.backend {
        case .vhost: return try runVhost(settings, tapName: tapName, hooks: hooks)
        case .tap, .tapPoll: return try runUserspace(settings, tapName: tapName)
        }
    }

    /// The one benchmark engine behind `bench backends` and `bench configs`: a warm-up run of
    /// each combination (discarded, when `warmup` > 0), then `trials` rounds that each run every
    /// combination once, rotated one place per round so that none always runs first or last.
    /// Returns the results per combination, in trial order. `progress` is told of each run.
    public static func interleavedTrials(_ combinations: [BenchSettings], trials: Int, warmup: Double, tapName: String,
                                         hooks: BenchHooks = BenchHooks(),
                                         progress: (_ phase: String, _ index: Int, _ result: BenchResult?) -> Void = { _, _, _ in }) throws -> [[BenchResult]] {
        if warmup > 0 {
            for (i, combination) in combinations.enumerated() {
                var warm = combination
                warm.seconds = warmup
                progress("warm-up \(i + 1)/\(combinations.count)", i, nil)
                _ = try run(warm, tapName: tapName, hooks: hooks)
            }
        }
        var results = [[BenchResult]](repeating: [], count: combinations.count)
        for trial in 0..<trials {
            for step in 0..<combinations.count {
                let i = (step + trial) % combinations.count
                let result = try run(combinations[i], tapName: tapName, hooks: hooks)
                results[i].append(result)
                progress("trial \(trial + 1)/\(trials), \(step + 1)/\(combinations.count)", i, result)
            }
        }
        return results
    }

    // MARK: the RX source

    /// Feeds RX: pktgen where it is loaded, else a packet socket on its own thread.
    final class Source {
        let name: String
        private var pktgen: PacketGenerator?
        private var thread: WorkerThread?
        final class Flag: Sendable { let raised = Atomic<Bool>(false) }
        private let stopFlag = Flag()

        /// `queues`: how many of the tap's queues pktgen spreads its frames over (the packet
        /// socket sends one flow, which the tap steers to one queue).
        init(tapName: String, frameSize: Int, queues: Int = 1) throws {
            if PacketGenerator.isAvailable {
                let generator = try PacketGenerator(device: tapName, frameSize: frameSize, destination: BackendComparison.receiverMAC, queues: queues)
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
        let rxPackets, rxDropped, rxBytes, txPackets, txDropped: UInt64
        init(_ tap: String) {
            self.tap = tap
            rxPackets = statistic(tap, "rx_packets"); rxDropped = statistic(tap, "rx_dropped"); rxBytes = statistic(tap, "rx_bytes")
            txPackets = statistic(tap, "tx_packets"); txDropped = statistic(tap, "tx_dropped")
        }
        /// Fills the far side's counts into `result` (TX: what the tap took in; RX: what it passed on or dropped).
        func delta(into result: inout BenchResult, xdpDrop: Bool) {
            let now = TapCounters(tap)
            if result.settings.scenario != .rx {
                result.transmitDroppedAtTap = now.rxDropped &- rxDropped
                result.transmitted = (now.rxPackets &- rxPackets) + (xdpDrop ? result.transmitDroppedAtTap : 0)
                result.transmittedBytes = now.rxBytes &- rxBytes
            }
            if result.settings.scenario != .tx {
                result.receiveTapPassed = now.txPackets &- txPackets
                result.receiveTapDropped = now.txDropped &- txDropped
            }
        }
    }

    // MARK: vhost

    static func runVhost(_ settings: BenchSettings, tapName: String, hooks: BenchHooks) throws -> BenchResult {
        let (pairs, workers) = try openPairs(settings, tapName: tapName, hooks: hooks)
        var result = BenchResult(settings: settings)
        let (frame, header) = transmitFrame(settings)
        // As a guest's driver sends packets it built in place (DPDK's txonly builds each in its
        // mbuf): the frame goes into every TX buffer once, not into one per transmit.
        if settings.scenario != .rx { for pair in pairs { try pair.fillEveryTransmitBuffer { $0.copyBytes(from: frame) } } }
        try verifySegmentation(settings, frameLength: frame.count, tapName: tapName, into: &result) {
            _ = try pairs[0].post(count: 1, header: header) { _, _ in frame.count }
            try pairs[0].drainTransmit()
        }
        // After the TSO check: the XDP program would drop the frame the check looks for.
        let xdp = settings.xdpDrop ? try XDPDropProgram(interface: tapName) : nil
        defer { _ = xdp }
        // The tap's tx_packets grows when its reader (the vhost worker) takes a frame, which
        // can happen before we reap it: read the counters before the source starts, so that
        // every frame we count was also counted by the tap.
        let counters = TapCounters(tapName)
        let source = settings.scenario == .tx ? nil : try Source(tapName: tapName, frameSize: settings.frameSize, queues: settings.queuePairs)
        result.receiveSource = source?.name ?? ""
        let kicksBefore = pairs.map { $0.transmitCounters.kicks + $0.receiveCounters.kicks }.reduce(0, +)
        let callsBefore = pairs.map { $0.transmitCounters.calls + $0.receiveCounters.calls }.reduce(0, +)
        let meter = CPUCost.Meter(workers: workers)
        let start = ContinuousClock.now
        // SAFETY: each queue's thread is the only one to touch its pair until QueueThreads.run
        // has joined them all; this thread touches none of them meanwhile.
        let handedOver = HandedOver(pairs)
        let outcomes = try QueueThreads.run(count: pairs.count) { queue, ready in
            let pair = handedOver.value[queue]
            let chunk = min(settings.batch, Int(settings.queueSize))
            ready()
            let cpuStart = ThreadCPUTime.currentThread()
            // The coarse clock (vDSO, no clocksource read) for the deadline checked every round:
            // under TCG each precise read is a system call to an emulated HPET. The rate's
            // seconds are measured with the precise clock around the whole run.
            let deadline = MonotonicClock.coarseSeconds() + settings.seconds
            var outcome = QueueOutcome()
            while MonotonicClock.coarseSeconds() < deadline {
                if settings.scenario != .rx {
                    // Keeps the ring full: as many as fit now, reaping what the device used.
                    // The frame is in every buffer already: only the length is set per frame.
                    let added = try pair.post(count: chunk, header: header) { _, _ in frame.count }
                    outcome.sent += UInt64(added)
                    if added == 0 && settings.scenario == .tx { _ = try pair.waitForTransmitRoom() }
                }
                if settings.scenario != .tx {
                    outcome.received += UInt64(try pair.receive(limit: chunk, milliseconds: settings.scenario == .rx ? 20 : 0) { _ in })
                }
            }
            if settings.scenario != .rx { try pair.drainTransmit() }
            outcome.driverNanoseconds = ThreadCPUTime.currentThread() &- cpuStart
            return outcome
        }
        result.seconds = start.duration(to: .now).inSeconds
        result.cpu = CPUCost(driverNanoseconds: outcomes.map(\.driverNanoseconds).reduce(0, +), workerNanoseconds: meter.read().workerNanoseconds)
        source?.stop()
        counters.delta(into: &result, xdpDrop: settings.xdpDrop)
        result.record(outcomes)
        result.kicks = pairs.map { $0.transmitCounters.kicks + $0.receiveCounters.kicks }.reduce(0, +) - kicksBefore
        result.calls = pairs.map { $0.transmitCounters.calls + $0.receiveCounters.calls }.reduce(0, +) - callsBefore
        return result
    }

    /// What one queue pair's thread moved, and the CPU time it used.
    struct QueueOutcome: Sendable {
        var sent: UInt64 = 0, received: UInt64 = 0, driverNanoseconds: UInt64 = 0
    }

    /// A value handed from one thread to others that the caller guarantees not to share at once.
    final class HandedOver<Value>: @unchecked Sendable {
        let value: Value
        init(_ value: Value) { self.value = value }
    }

    /// Runs one body per queue pair at once: queue 0 on this thread, every other on a thread of
    /// its own. Each body calls its `ready` closure once it is set up, and none goes past that
    /// call until all have, so the measurements overlap. Rethrows the first error, after joining.
    enum QueueThreads {
        final class Barrier: Sendable {
            let count: Int
            let arrived = Atomic<Int>(0)
            init(count: Int) { self.count = count }
            func arrive() {
                arrived.add(1, ordering: .acquiringAndReleasing)
                while arrived.load(ordering: .acquiring) < count { sched_yield() }
            }
            /// A body that failed before it was ready still lets the others go.
            func abandon() { arrived.add(1, ordering: .acquiringAndReleasing) }
        }

        static func run(count: Int, _ body: @escaping (_ queue: Int, _ ready: () -> Void) throws -> QueueOutcome) throws -> [QueueOutcome] {
            let barrier = Barrier(count: count)
            let results = Locked([Result<QueueOutcome, any Error>?](repeating: nil, count: count))
            // SAFETY: the body is called once per queue, and each call touches only its queue's state.
            let shared = HandedOver(body)
            @Sendable func runOne(_ queue: Int) {
                var arrived = false
                let outcome = Result { try shared.value(queue) { arrived = true; barrier.arrive() } }
                if !arrived { barrier.abandon() }
                results.withLock { $0[queue] = outcome }
            }
            let threads = (1..<max(count, 1)).map { queue in WorkerThread { runOne(queue) } }
            runOne(0)
            for thread in threads { thread.join() }
            return try results.withLock { $0 }.map { try $0!.get() }
        }
    }

    /// `settings.queuePairs` vhost pairs on `tapName` (an IFF_MULTI_QUEUE tap when more than
    /// one) with the settings' ring size, EVENT_IDX, notification mode, busyloop timeout and
    /// worker pinning, buffers that hold the frame, and an MTU that lets RX frames through;
    /// returned with their worker threads.
    static func openPairs(_ settings: BenchSettings, tapName: String, hooks: BenchHooks = BenchHooks()) throws -> ([VhostNetQueuePair], [VhostWorkerThread]) {
        var config = configuration(settings, tapName: tapName, hooks: hooks)
        var pairs: [VhostNetQueuePair] = []
        for index in 0..<settings.queuePairs {
            // The first pair makes the tap, never taking one someone else made (IFF_TUN_EXCL); the
            // others open its further queues.
            config.exclusiveTapCreation = index == 0
            pairs.append(try VhostNetQueuePair(config))
        }
        try raiseMTUForReceive(settings, on: pairs[0].tap)
        for pair in pairs where settings.busyloopMicroseconds > 0 {
            for index: UInt32 in [0, 1] { try pair.device.setVringBusyloopTimeout(index: index, microseconds: settings.busyloopMicroseconds) }
        }
        return (pairs, try workers(settings))
    }

    /// The queue pair configuration of a vhost measurement: the settings' ring size, EVENT_IDX,
    /// notification mode and RX coalescing, descriptor layout, MRG_RXBUF and huge pages, buffers
    /// that hold the frame, and a multiqueue tap for several pairs. Its `validate()` is what
    /// `bench backends` and `bench configs` check their options against.
    public static func configuration(_ settings: BenchSettings, tapName: String, hooks: BenchHooks = BenchHooks()) -> VhostNetQueuePair.Configuration {
        var config = VhostNetQueuePair.Configuration(tapName: tapName)
        config.queueSize = settings.queueSize
        config.features = settings.eventIndex ? [.version1, .eventIndex] : [.version1]
        if settings.descriptorLayout == .indirect { config.features.insert(.indirectDescriptors) }
        if settings.mergeableReceiveBuffers { config.features.insert(.netMergeableRxBuffers) }
        if settings.inOrder { config.features.insert(.inOrder) }
        if settings.effectiveNetHeader == .vhost { config.features.insert(.vhostNetVirtioNetHeader) }
        config.descriptorLayout = settings.descriptorLayout
        if settings.hugePages { config.memoryBacking = .memfd(hugePages: true) }
        config.devicePath = hooks.devicePath
        config.observer = hooks.observer
        config.ringObserver = hooks.ringObserver
        config.notificationMode = settings.mode
        config.bufferSize = settings.bufferSize ?? max(config.bufferSize, config.headerLength + settings.frameSize)
        config.multiQueueTap = settings.queuePairs > 1
        config.receiveCoalescing = settings.receiveCoalescing.coalescing(queueSize: settings.queueSize, eventIndex: settings.eventIndex, mode: settings.mode,
                                                                          delayMilliseconds: settings.receiveCoalescingDelayMilliseconds)
        return config
    }

    /// A vhost pair for one-at-a-time round trips (queue pair 1).
    static func openPair(_ settings: BenchSettings, tapName: String, hooks: BenchHooks = BenchHooks()) throws -> (VhostNetQueuePair, [VhostWorkerThread]) {
        var single = settings
        single.queuePairs = 1
        let (pairs, workers) = try openPairs(single, tapName: tapName, hooks: hooks)
        return (pairs[0], workers)
    }

    /// This thread's vhost workers, pinned as the settings ask.
    static func workers(_ settings: BenchSettings) throws -> [VhostWorkerThread] {
        let workers = VhostWorkerThread.findAll()
        if let cpu = settings.workerCPU { for worker in workers { try worker.pin(to: cpu) } }
        return workers
    }

    // MARK: round trips (latency)

    static func runRoundTrips(_ settings: BenchSettings, tapName: String, hooks: BenchHooks) throws -> BenchResult {
        let kind: RoundTrips.Kind = settings.scenario == .ping ? .icmp : .udp
        var result = BenchResult(settings: settings)
        switch settings.backend {
        case .vhost:
            let (pair, workers) = try openPair(settings, tapName: tapName, hooks: hooks)
            try HostNetwork.setAddress(RoundTrips.hostInterface, on: tapName)
            let echo = kind == .udp ? try RoundTrips.Echo() : nil
            defer { echo?.stop() }
            guard let hostMAC = MACAddress(try pair.port.macAddress()) else { throw VhostError.invalidState("\(tapName) has no MAC address") }
            let trips = RoundTrips(kind: kind, frameSize: settings.frameSize, hostMAC: hostMAC, ourMAC: receiverMAC)
            let kicksBefore = pair.transmitCounters.kicks + pair.receiveCounters.kicks
            let callsBefore = pair.transmitCounters.calls + pair.receiveCounters.calls
            let meter = CPUCost.Meter(workers: workers)
            let start = ContinuousClock.now
            result.roundTrips = try trips.run(seconds: settings.seconds, limit: settings.roundTripLimit, send: { try pair.transmit(frame: $0) }, receive: { milliseconds, handler in
                try pair.receive(limit: 64, milliseconds: milliseconds) { handler(Array($0.frame)) }
            })
            result.seconds = start.duration(to: .now).inSeconds
            result.cpu = meter.read()
            result.kicks = pair.transmitCounters.kicks + pair.receiveCounters.kicks - kicksBefore
            result.calls = pair.transmitCounters.calls + pair.receiveCounters.calls - callsBefore
        case .tap, .tapPoll:
            let tap = try Tap(name: tapName, flags: [.tap, .noPacketInfo, .vnetHeader, .exclusive])
            try tap.setVnetHeaderSize(12)
            try tap.setLinkUp(true)
            try HostNetwork.setAddress(RoundTrips.hostInterface, on: tapName)
            let echo = kind == .udp ? try RoundTrips.Echo() : nil
            defer { echo?.stop() }
            guard let hostMAC = MACAddress(try tap.macAddress()) else { throw VhostError.invalidState("\(tapName) has no MAC address") }
            let flags = fcntl(tap.fd, F_GETFL)
            _ = fcntl(tap.fd, F_SETFL, flags | O_NONBLOCK)
            let spin = settings.backend == .tapPoll
            let trips = RoundTrips(kind: kind, frameSize: settings.frameSize, hostMAC: hostMAC, ourMAC: receiverMAC)
            var buffer = [UInt8](repeating: 0, count: 65536 + 12)
            var poller = pollfd(fd: tap.fd, events: Int16(POLLIN), revents: 0)
            let meter = CPUCost.Meter(workers: [])
            let start = ContinuousClock.now
            result.roundTrips = try trips.run(seconds: settings.seconds, limit: settings.roundTripLimit, send: { frame in
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
            result.seconds = start.duration(to: .now).inSeconds
            result.cpu = meter.read()
        }
        return result
    }

    // MARK: the userspace path

    static func runUserspace(_ settings: BenchSettings, tapName: String) throws -> BenchResult {
        let flags: Tap.Flags = settings.queuePairs > 1 ? [.tap, .noPacketInfo, .vnetHeader, .multiQueue] : [.tap, .noPacketInfo, .vnetHeader]
        let tap = try Tap(name: tapName, flags: flags.union(.exclusive))  // the first queue makes it: never one someone else made
        try prepareUserspaceQueue(tap)
        // Every queue is attached before the source starts (pktgen picks among the queues the tap has then).
        let extraQueues = try (1..<settings.queuePairs).map { _ in
            let queue = try Tap(name: tapName, flags: flags)
            try prepareUserspaceQueue(queue)
            return TapQueue(queue)
        }
        // Only their fds are used below: keep the queues (and so the fds) open to the end.
        defer { withExtendedLifetime(extraQueues) {} }
        try tap.setLinkUp(true)
        try raiseMTUForReceive(settings, on: tap)
        var result = BenchResult(settings: settings)
        // The same bytes the vhost path sends: the 12-byte virtio-net header, then the frame.
        let (frame, header) = transmitFrame(settings)
        let packet = header.bytes(length: 12) + frame
        try verifySegmentation(settings, frameLength: frame.count, tapName: tapName, into: &result) {
            let n = packet.withUnsafeBytes { write(tap.fd, $0.baseAddress, $0.count) }
            guard n == packet.count else { throw VhostError.system(call: "write", detail: "a TSO superframe to \(tapName)", errno: Errno(rawValue: errno)) }
        }
        // After the TSO check: the XDP program would drop the frame the check looks for.
        let xdp = settings.xdpDrop ? try XDPDropProgram(interface: tapName) : nil
        defer { _ = xdp }
        let counters = TapCounters(tapName)  // before the source starts, as in runVhost
        let source = settings.scenario == .tx ? nil : try Source(tapName: tapName, frameSize: settings.frameSize, queues: settings.queuePairs)
        result.receiveSource = source?.name ?? ""
        let start = ContinuousClock.now
        let queues = [tap.fd] + extraQueues.map { $0.tap.fd }
        let outcomes = try QueueThreads.run(count: settings.queuePairs) { queue, ready in
            ready()
            return userspaceLoop(fd: queues[queue], packet: packet, settings: settings)
        }
        result.seconds = start.duration(to: .now).inSeconds
        result.cpu = CPUCost(driverNanoseconds: outcomes.map(\.driverNanoseconds).reduce(0, +), workerNanoseconds: nil)
        source?.stop()
        counters.delta(into: &result, xdpDrop: settings.xdpDrop)
        result.record(outcomes)
        return result
    }

    /// One more queue of a multiqueue tap, held open for the measurement.
    final class TapQueue {
        let tap: Tap
        init(_ tap: consuming Tap) { self.tap = tap }
    }

    /// A userspace queue: the 12-byte header QEMU uses, and non-blocking reads and writes.
    static func prepareUserspaceQueue(_ tap: borrowing Tap) throws {
        try tap.setVnetHeaderSize(12)
        let flags = fcntl(tap.fd, F_GETFL)
        _ = fcntl(tap.fd, F_SETFL, flags | O_NONBLOCK)
    }

    /// One userspace queue's loop, as QEMU's tap backend without vhost moves frames: write(2)
    /// each TX frame, read(2) RX frames until the queue is empty, and sleep in poll(2) (or spin).
    static func userspaceLoop(fd: Int32, packet: [UInt8], settings: BenchSettings) -> QueueOutcome {
        let spin = settings.backend == .tapPoll
        var buffer = [UInt8](repeating: 0, count: 65536 + 12)
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var outcome = QueueOutcome()
        let cpuStart = ThreadCPUTime.currentThread()
        let deadline = ContinuousClock.now + .clampedSeconds(settings.seconds)
        while ContinuousClock.now < deadline {
            if settings.scenario != .rx {
                // tun takes one frame per write(2) (tun_chr_write_iter); there is no batched write.
                for _ in 0..<settings.batch {
                    let n = packet.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                    if n == packet.count { outcome.sent += 1 } else { break }
                }
            }
            if settings.scenario != .tx {
                var got = 0
                while got < settings.batch {
                    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if n > 12 { outcome.received += 1; got += 1 } else { break }
                }
                if got == 0 && !spin && settings.scenario == .rx { _ = poll(&poller, 1, 20) }
            }
        }
        outcome.driverNanoseconds = ThreadCPUTime.currentThread() &- cpuStart
        return outcome
    }
}
