import Glibc
import Vhost

/// The tap's own counters, from `/sys/class/net/IFACE/statistics` (the whole interface: the
/// kernel keeps none per tun queue there).
///
/// The tap's directions are the host's: its **tx** is what the host sent toward us (our RX),
/// its **rx** what it received from us (our TX). A frame the host sent that never reached our
/// RX ring (the tap's queue was full: tun.c tun_net_xmit drops and counts it in tx_dropped)
/// shows up in `towardUsDropped`, not in our own drops.
public struct TapStatistics: Sendable, Equatable {
    /// `tx_packets`: frames the host sent toward us (our RX side).
    public var towardUsPackets: UInt64 = 0
    /// `tx_dropped`: frames the host sent toward us that the tap dropped before our ring.
    public var towardUsDropped: UInt64 = 0
    /// `rx_packets`: frames the host received from us (our TX side).
    public var fromUsPackets: UInt64 = 0
    /// `rx_dropped`: frames from us that the host dropped.
    public var fromUsDropped: UInt64 = 0
    /// All counters zero.
    public init() {}

    /// Reads the counters of `interface` from sysfs; nil when the interface has none (gone, or
    /// no sysfs). A counter that does not parse reads as 0.
    public static func read(interface: String) -> TapStatistics? {
        // An interface name is one path component (dev_valid_name refuses '/', "." and "..").
        guard !interface.isEmpty, !interface.contains("/"), interface != ".", interface != ".." else { return nil }
        func counter(_ name: String) -> UInt64? { KernelInfo.interfaceStatistic(interface, name) }
        guard let towardUs = counter("tx_packets") else { return nil }
        var statistics = TapStatistics()
        statistics.towardUsPackets = towardUs
        statistics.towardUsDropped = counter("tx_dropped") ?? 0
        statistics.fromUsPackets = counter("rx_packets") ?? 0
        statistics.fromUsDropped = counter("rx_dropped") ?? 0
        return statistics
    }
}

/// One queue pair's counters at one moment: what `attach --stats` prints per queue pair and the
/// control socket's `stats` answers.
public struct QueuePairStatistics: Sendable, Equatable {
    /// The queue pair's index.
    public var queuePair: Int
    /// Our RX side (frames the device wrote into our receive ring).
    public var receive: QueueCounters
    /// Our TX side (frames we published on the transmit ring).
    public var transmit: QueueCounters
    /// Whether the queue pair's backends are attached (false while stopped).
    public var running: Bool

    /// A snapshot of queue pair `queuePair`'s counters.
    public init(queuePair: Int, receive: QueueCounters, transmit: QueueCounters, running: Bool) {
        self.queuePair = queuePair
        self.receive = receive
        self.transmit = transmit
        self.running = running
    }
}

/// Frames and bytes per second in each direction between two snapshots.
public struct QueuePairRates: Sendable, Equatable {
    /// RX frames per second (frames the device used on our receive ring).
    public var receiveFramesPerSecond: Double = 0
    /// RX bytes of frame per second.
    public var receiveBytesPerSecond: Double = 0
    /// TX frames per second (frames we published on the transmit ring).
    public var transmitFramesPerSecond: Double = 0
    /// TX bytes of frame per second.
    public var transmitBytesPerSecond: Double = 0
    /// All rates zero (the first snapshot has no interval).
    public init() {}

    /// The rates from `previous` to `current` over `seconds`. A counter that went backwards
    /// (the interface or the queue pair was recreated) counts as no progress, never as a
    /// huge or negative rate; a non-positive or non-finite interval gives zero rates.
    public init(from previous: QueuePairStatistics?, to current: QueuePairStatistics, seconds: Double) {
        guard let previous, seconds.isFinite, seconds > 0 else { return }
        func rate(_ now: UInt64, _ before: UInt64) -> Double { Double(QueuePairRates.progress(from: before, to: now)) / seconds }
        receiveFramesPerSecond = rate(current.receive.frames, previous.receive.frames)
        receiveBytesPerSecond = rate(current.receive.bytes, previous.receive.bytes)
        transmitFramesPerSecond = rate(current.transmit.frames, previous.transmit.frames)
        transmitBytesPerSecond = rate(current.transmit.bytes, previous.transmit.bytes)
    }

    /// `now - before`, or 0 when the counter went backwards (saturating: never traps).
    public static func progress(from before: UInt64, to now: UInt64) -> UInt64 {
        let (difference, overflow) = now.subtractingReportingOverflow(before)
        return overflow ? 0 : difference
    }
}

extension QueueCounters {
    /// `self + other` with every field saturating at `UInt64.max` (`+` traps on overflow).
    public func saturatingSum(_ other: QueueCounters) -> QueueCounters {
        func add(_ a: UInt64, _ b: UInt64) -> UInt64 { let (sum, overflow) = a.addingReportingOverflow(b); return overflow ? .max : sum }
        var c = QueueCounters()
        c.frames = add(frames, other.frames)
        c.bytes = add(bytes, other.bytes)
        c.kicks = add(kicks, other.kicks)
        c.suppressedKicks = add(suppressedKicks, other.suppressedKicks)
        c.calls = add(calls, other.calls)
        c.drops = add(drops, other.drops)
        c.ringErrors = add(ringErrors, other.ringErrors)
        c.mergedFrames = add(mergedFrames, other.mergedFrames)
        c.timedOutSleeps = add(timedOutSleeps, other.timedOutSleeps)
        return c
    }
}

extension VirtioNetEndpoint where Backend: ~Copyable, Port: ~Copyable {
    /// A snapshot of every queue pair's counters, in queue pair order.
    public var queuePairStatistics: [QueuePairStatistics] {
        pairs.enumerated().map { index, pair in
            QueuePairStatistics(queuePair: index, receive: pair.receiveCounters, transmit: pair.transmitCounters, running: pair.running)
        }
    }

    /// Resumes every queue pair after `stop` (each from the vring bases its stop read back, so no
    /// chain in flight is lost or used twice: VirtioNetQueuePair.resume). `bringingLinkUp` as
    /// VirtioNetQueuePair.resume has it.
    public func resume(bringingLinkUp: Bool? = nil) throws(VhostError) {
        for pair in pairs { try pair.resume(bringingLinkUp: bringingLinkUp) }
    }
}
