import Glibc
import Logging
import NetFormats
import Vhost
import Virtio

/// How an endpoint is set up: its queue pairs' datapath, how many, and its identity.
public struct EndpointConfiguration: Sendable {
    /// The datapath of every queue pair: tap name, features, ring size, layout, memory, …
    public var datapath: QueuePairConfiguration
    /// Queue pairs; more than one uses an IFF_MULTI_QUEUE tap, one queue per pair.
    public var queues: Int = 1
    public var mac: MACAddress = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)
    public var ipv4: IPv4Interface? = nil
    public var udpEchoPort: UInt16? = nil

    public init(tapName: String) {
        datapath = QueuePairConfiguration(tapName: tapName)
        datapath.features = [.version1, .eventIndex]
    }

    /// The configuration of each queue pair.
    public func pairConfiguration() -> QueuePairConfiguration {
        var config = datapath
        config.multiQueueTap = queues > 1
        return config
    }
}

/// A NIC endpoint: one or more queue pairs (each its own vhost device and its own queue of the
/// backend), an identity (MAC, IPv4), and a responder that answers ARP, ICMP echo and UDP echo.
/// `service` runs one turn of its event loop. `VhostNetEndpoint` is the kernel's flavour on a tap.
public final class VirtioNetEndpoint<Backend: VhostBackend & ~Copyable, Port: NetworkPort & ~Copyable> {
    public typealias Configuration = EndpointConfiguration
    public typealias Pair = VirtioNetQueuePair<Backend, Port>

    public enum Direction: Sendable { case received, transmitted }

    public let configuration: Configuration
    public let pairs: [Pair]
    public var responder: NetworkResponder
    /// Sees every frame received from and transmitted to the tap (for pcap).
    public var frameObserver: ((Direction, [UInt8]) -> Void)?
    /// Told once when a queue pair's device breaks the virtio protocol (`VhostError.brokenQueue`).
    /// That pair is left alone from then on; the others go on, and so does the process.
    public var brokenQueueHandler: ((Int, VhostError) -> Void)?
    /// Told about every ring error a device signals (vq_err), with the queue pair's index. The
    /// device stopped that queue until the next kick; the endpoint goes on.
    public var ringErrorHandler: ((Int, RingErrorEvent) -> Void)?
    /// The queue pairs whose device broke the protocol.
    public private(set) var brokenPairs: Set<Int> = []
    let logger: Logger
    /// The RX call eventfds of every queue pair (token = pair index), plus extra fds.
    private let poller: EventPoller
    private var watchedExtras: Set<Int32> = []

    /// Sets up `configuration.queues` pairs with `makePair`, each from `pairConfiguration()`.
    public init(_ configuration: Configuration, logger: Logger = Logger(label: "swift-vhost"),
                makePair: (QueuePairConfiguration, Logger) throws(VhostError) -> Pair) throws(VhostError) {
        guard (1...256).contains(configuration.queues) else {
            throw .invalidConfiguration("--queues \(configuration.queues): use 1 to 256 queue pairs (tun.c MAX_TAP_QUEUES)")
        }
        self.configuration = configuration
        self.logger = logger
        var pairs: [Pair] = []
        for index in 0..<configuration.queues {
            logger.debug("setting up queue pair \(index) on \(configuration.datapath.tapName)")
            pairs.append(try makePair(configuration.pairConfiguration(), logger))
        }
        self.pairs = pairs
        poller = try EventPoller()
        for (index, pair) in pairs.enumerated() {
            try poller.add(pair.receiveQueue.queue.call.fd, token: UInt64(index))
            for fd in pair.ringErrorDescriptors { try poller.add(fd, token: VhostNetEndpoint.ringErrorToken) }
        }
        responder = NetworkResponder(mac: configuration.mac, ipv4: configuration.ipv4, udpEchoPort: configuration.udpEchoPort)
    }

    /// The backend interface's name (the tap, macvtap or packet socket's interface).
    public var interfaceName: String { pairs[0].port.name }

    /// Runs one turn: receives on every queue, answers what the responder answers, and when
    /// nothing arrived sleeps up to `milliseconds` on the RX call eventfds (plus `extraFDs`);
    /// in poll mode it returns at once instead, so that the caller's loop spins.
    /// Returns the number of frames received.
    @discardableResult
    public func service(milliseconds: Int32, extraFDs: [Int32] = []) throws(VhostError) -> Int {
        var received = 0
        for (index, pair) in pairs.enumerated() {
            for var event in pair.takeRingErrors() {
                event.queue.pair = index
                logger.warning("\(event)")
                ringErrorHandler?(index, event)
            }
        }
        for (index, pair) in pairs.enumerated() where !brokenPairs.contains(index) {
            var frames: [(VirtioNetHeader, [UInt8])] = []
            do {
                received += try pair.receive(limit: 256, milliseconds: 0) { frame in frames.append((frame.header, [UInt8](frame.frame))) }
                for (header, frame) in frames {
                    frameObserver?(.received, frame)
                    if let reply = responder.respond(to: frame, header: header) {
                        try send(reply, queue: index)
                    }
                }
            } catch .brokenQueue(let queue, let reason) {
                markBroken(index, .brokenQueue(queue: queue, reason: reason))
            }
        }
        guard received == 0, milliseconds != 0 else { return received }
        // Poll mode (as DPDK's drivers run): RX interrupts stay off and nothing sleeps; the
        // caller's loop comes straight back and looks again.
        if pairs.allSatisfy({ $0.configuration.notificationMode == .poll }) { return received }
        // Interrupt mode: re-enable RX interrupts on every queue (returning at once when one
        // has work already), then sleep in epoll on all call eventfds.
        for (index, pair) in pairs.enumerated() where !brokenPairs.contains(index) && pair.armReceiveNotification() == nil { return received }
        for fd in extraFDs where !watchedExtras.contains(fd) {
            try poller.add(fd, token: UInt64.max)
            watchedExtras.insert(fd)
        }
        for token in poller.wait(milliseconds: milliseconds) where token < UInt64(pairs.count) {
            pairs[Int(token)].acknowledgeReceiveNotification()
        }
        return received
    }

    /// The epoll token of the error eventfds: a wake-up only, handled at the next turn.
    static var ringErrorToken: UInt64 { UInt64.max - 1 }

    private func markBroken(_ index: Int, _ error: VhostError) {
        guard brokenPairs.insert(index).inserted else { return }
        logger.error("queue pair \(index): \(error)")
        brokenQueueHandler?(index, error)
    }

    /// Transmits one frame on a queue.
    public func send(_ frame: [UInt8], queue: Int = 0) throws(VhostError) {
        try pairs[queue % pairs.count].transmit(frame: frame)
        frameObserver?(.transmitted, frame)
    }

    /// Transmits frames round-robin over the queues, keeping each ring full.
    public func send(frames: [[UInt8]]) throws(VhostError) {
        for (index, pair) in pairs.enumerated() {
            let mine = stride(from: index, to: frames.count, by: pairs.count).map { frames[$0] }
            guard !mine.isEmpty else { continue }
            try pair.transmit(count: mine.count) { i, buffer in
                let frame = mine[i]
                let n = min(frame.count, buffer.count)
                buffer.copyBytes(from: frame.prefix(n))
                return n
            }
            for frame in mine { frameObserver?(.transmitted, frame) }
        }
    }

    /// Detaches every backend (NET_SET_BACKEND -1) and reads back the vring bases.
    public func stop() throws(VhostError) {
        for pair in pairs { try pair.stop() }
    }

    public var receiveCounters: QueueCounters { pairs.map(\.receiveCounters).reduce(QueueCounters(), +) }
    public var transmitCounters: QueueCounters { pairs.map(\.transmitCounters).reduce(QueueCounters(), +) }
}

/// The kernel's flavour: `/dev/vhost-net` on a tap.
public typealias VhostNetEndpoint = VirtioNetEndpoint<VhostNetDevice, Tap>

extension VirtioNetEndpoint where Backend == VhostNetDevice, Port == Tap {
    /// N queue pairs on the tap `configuration.datapath.tapName` (IFF_MULTI_QUEUE when N > 1).
    public convenience init(_ configuration: Configuration, logger: Logger = Logger(label: "swift-vhost")) throws(VhostError) {
        try self.init(configuration, logger: logger) { (config, logger) throws(VhostError) in try VhostNetQueuePair(config, logger: logger) }
    }

    /// The tap's name.
    public var tapName: String { pairs[0].tap.name }
}

extension VirtioNetEndpoint where Backend == VhostNetDevice, Port == MacvtapPort {
    /// N queue pairs, each on its own queue of the macvtap `configuration.datapath.tapName`,
    /// created on `parent` with the endpoint's MAC when it does not exist (and deleted with the
    /// endpoint then): a macvlan delivers unicast only to its own MAC.
    public convenience init(_ configuration: Configuration, macvtapOn parent: String, logger: Logger = Logger(label: "swift-vhost")) throws(VhostError) {
        try self.init(configuration, logger: logger) { (config, logger) throws(VhostError) in
            try MacvtapQueuePair(config, macvtap: config.tapName, on: parent, hardwareAddress: configuration.mac.array, logger: logger)
        }
    }
}

extension VirtioNetEndpoint where Backend == VhostNetDevice, Port == PacketSocketPort {
    /// One queue pair on a raw packet socket bound to `interface` (a packet socket receives every
    /// frame of the interface, so it cannot be split into queues).
    public convenience init(_ configuration: Configuration, packetSocketOn interface: String, logger: Logger = Logger(label: "swift-vhost")) throws(VhostError) {
        guard configuration.queues == 1 else {
            throw .invalidConfiguration("--queues \(configuration.queues): a packet socket backend carries one queue pair (every socket bound to \(interface) sees every frame)")
        }
        try self.init(configuration, logger: logger) { (config, logger) throws(VhostError) in
            try PacketSocketQueuePair(config, packetSocketOn: interface, logger: logger)
        }
    }
}
