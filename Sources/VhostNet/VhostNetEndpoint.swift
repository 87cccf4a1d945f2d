import Glibc
import Logging
import NetFormats
import Vhost
import Virtio

/// How the endpoint sends its replies.
public enum ReplyPath: String, Sendable, CaseIterable {
    /// A batch of received frames is answered into the TX ring, written once where the device
    /// reads them, and published with one kick per batch (as a NAPI poll ends with one flush).
    case burst
    /// The path before batching, kept to measure against (`vhostctl bench echo`): each frame
    /// copied out of its RX buffer, each reply built in its own array and sent alone (copied into
    /// a TX buffer, published, kicked) and then drained until the device used it.
    case single
}

/// How an endpoint is set up: its queue pairs' datapath, how many, and its identity.
public struct EndpointConfiguration: Sendable {
    /// The datapath of every queue pair: tap name, features, ring size, layout, memory, …
    public var datapath: QueuePairConfiguration
    /// Queue pairs; more than one uses an IFF_MULTI_QUEUE tap, one queue per pair.
    public var queues: Int = 1
    public var mac: MACAddress = MACAddress(0x52, 0x54, 0x00, 0x12, 0x34, 0x56)
    public var ipv4: IPv4Interface? = nil
    /// IPv6 addresses; with any, IPv6 is on and the link-local address from the MAC is answered too.
    public var ipv6: [IPv6Interface] = []
    public var udpEchoPort: UInt16? = nil
    /// How replies are sent (batched by default).
    public var replyPath: ReplyPath = .burst
    /// Descriptors another process opened, one entry per queue pair (empty: the tap named by
    /// `datapath.tapName` and `/dev/vhost-net` are opened here). With them the tap's name comes
    /// from the descriptor (TUNGETIFF), and nothing needs CAP_NET_ADMIN.
    public var adopted: [AdoptedQueuePair] = []
    /// Frames on the port: Ethernet, or bare IP on an L3 tun (`datapath.tunMode`).
    public var linkLayer: LinkLayer { datapath.tunMode ? .none : .ethernet }

    public init(tapName: String) {
        datapath = QueuePairConfiguration(tapName: tapName)
        datapath.features = [.version1, .eventIndex]
    }

    /// The configuration of each queue pair: with a large TX buffer for frames bigger than a
    /// TX buffer holds (a USO superframe, a replayed GSO frame) unless the buffers hold 64 KiB.
    public func pairConfiguration() -> QueuePairConfiguration {
        var config = datapath
        config.multiQueueTap = queues > 1
        let largest = 65_535 + EthernetFrame.headerLength + config.headerLength
        if config.largeTransmitBuffer == 0 && config.bufferSize < largest { config.largeTransmitBuffer = largest }
        return config
    }
}

/// A NIC endpoint: one or more queue pairs (each its own vhost device and its own queue of the
/// backend), an identity (MAC, IPv4), and a responder that answers ARP, ICMP echo and UDP echo.
/// `service` runs one turn of its event loop. `VhostNetEndpoint` is the kernel's flavour on a tap.
public final class VirtioNetEndpoint<Backend: VhostBackend & ~Copyable, Port: NetworkPort & ~Copyable> {
    public typealias Configuration = EndpointConfiguration
    public typealias Pair = VirtioNetQueuePair<Backend, Port>

    /// Which way a frame crossed the rings.
    public enum Direction: Sendable { case received, transmitted }

    /// A frame as it crosses the endpoint's rings, for a capture: valid only during the call.
    public struct ObservedFrame {
        /// Received from the device (RX ring) or transmitted to it (TX ring).
        public var direction: Direction
        /// The queue pair.
        public var queue: Int
        /// The frame's virtio-net header.
        public var header: VirtioNetHeader
        /// The frame, without the header: in the RX buffer, or in the TX buffer it goes out from.
        public var bytes: UnsafeRawBufferPointer
    }

    public let configuration: Configuration
    public let pairs: [Pair]
    /// `pairs` again, as plain references, for the loops of every turn (`pair(_:)`, and its
    /// `count`): in this generic class's methods, which run unspecialized, `pairs[i]` and
    /// `pairs.count` asked the runtime for `VirtioNetQueuePair<Backend, Port>`'s metadata (about
    /// 320 instructions, twice a turn; Benchmarks/endpoint-sink --batch 1 --sleep).
    private let pairReferences: [AnyObject]
    /// Touched once per frame from the endpoint's thread alone (the endpoint is not Sendable):
    /// not checked for exclusive access at run time, a TLS lookup per frame otherwise. The
    /// same holds for the state every turn reads and writes below (`@exclusivity(unchecked)`):
    /// about 80 instructions per checked access, a third of a sleeping turn's instructions
    /// (Benchmarks/endpoint-sink --batch 1 --sleep). None of them is reached from a closure
    /// that runs while another access to it is open (the frame observer may only `send`).
    @exclusivity(unchecked) public var responder: NetworkResponder
    /// Sees every frame received from and transmitted to the backend (for pcap), in place. It
    /// runs inside a turn: it may `send`, but calling `service` from it stops the process (a
    /// precondition: the queue's receive is open; see `VirtioNetQueuePair.receiveQueue`).
    public var frameObserver: ((ObservedFrame) -> Void)?
    /// `service` is receiving on the pairs (a frame observer runs now).
    @exclusivity(unchecked) private var receiving = false
    /// Told once when a queue pair's device breaks the virtio protocol (`VhostError.brokenQueue`).
    /// That pair is left alone from then on; the others go on, and so does the process.
    public var brokenQueueHandler: ((Int, VhostError) -> Void)?
    /// Told about every ring error a device signals (vq_err), with the queue pair's index. The
    /// device stopped that queue until the next kick; the endpoint goes on.
    public var ringErrorHandler: ((Int, RingErrorEvent) -> Void)?
    /// Told when another node advertises an IPv6 address of ours (duplicate address detection).
    public var duplicateAddressHandler: ((IPv6Address, MACAddress) -> Void)?
    /// The queue pairs whose device broke the protocol.
    @exclusivity(unchecked) public private(set) var brokenPairs: Set<Int> = []
    let logger: Logger
    /// The RX call eventfds of every queue pair (token = pair index), plus extra fds.
    private let poller: EventPoller
    /// Every pair runs in poll mode: the idle turn spins instead of sleeping (fixed at set-up).
    private let pollsReceive: Bool
    @exclusivity(unchecked) private var watchedExtras: Set<Int32> = []
    /// Some queue pair coalesces RX interrupts (fixed at set-up).
    private let coalesces: Bool
    /// Where the poller writes the ready tokens, allocated once (every queue's call and error
    /// eventfds and the extras can be ready at once; more wait for the next turn).
    @exclusivity(unchecked) private var readyTokens = [UInt64](repeating: 0, count: 64)
    /// What each queue pair's current sleep waits for (nil: not armed), kept to end it.
    @exclusivity(unchecked) private var sleeps: [ReceiveSleep?]
    /// The endpoint sent something since `answeredRecently` last looked (a reply, a frame of the
    /// caller's).
    @exclusivity(unchecked) private var answeredSinceSleep = false
    /// When it last did (`MonotonicClock.coarseMilliseconds`), or nil.
    @exclusivity(unchecked) private var lastAnswerAt: Int? = nil
    /// The last sleep saw an error eventfd signalled: read them at the next turn.
    @exclusivity(unchecked) private var ringErrorsSignalled = false
    /// When the error eventfds were last read (`MonotonicClock.coarseMilliseconds`; 0: never).
    @exclusivity(unchecked) private var ringErrorsReadAt = 0
    /// How long a reply waits for room in a full TX ring before it is dropped.
    static var transmitWaitMilliseconds: Int32 { 1000 }

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
            var pairConfiguration = configuration.pairConfiguration()
            // Only the first queue creates the tap; the others join it.
            if index > 0 { pairConfiguration.exclusiveTapCreation = false }
            pairs.append(try makePair(pairConfiguration, logger))
        }
        self.pairs = pairs
        pairReferences = pairs
        sleeps = Array(repeating: nil, count: pairs.count)
        pollsReceive = pairs.allSatisfy { $0.configuration.notificationMode == .poll }
        coalesces = pairs.contains { $0.configuration.receiveCoalescing != nil }
        poller = try EventPoller()
        for (index, pair) in pairs.enumerated() {
            try poller.add(pair.receiveQueue.queue.call.fd, token: UInt64(index))
            for fd in pair.ringErrorDescriptors { try poller.add(fd, token: VhostNetEndpoint.ringErrorToken) }
        }
        let features = configuration.datapath.features
        let mtu = (try? pairs[0].port.maximumTransmissionUnit()) ?? nil
        let largest = max(pairs[0].transmitQueue.frameCapacity, pairs[0].transmitQueue.largeFrameCapacity)
        responder = NetworkResponder(mac: configuration.mac, ipv4: configuration.ipv4, ipv6: configuration.ipv6, udpEchoPort: configuration.udpEchoPort,
                                     linkLayer: configuration.linkLayer, mtu: mtu ?? 1500,
                                     offloads: TransmitOffloads(checksum: features.contains(.netCsum), udpSegmentation: features.contains(.netHostUSO),
                                                                largestFrame: largest))
    }

    /// The backend interface's name (the tap, macvtap or packet socket's interface).
    public var interfaceName: String { pairs[0].port.name }

    /// Sends what a NIC sends when it comes up: a duplicate-address-detection probe for each
    /// IPv6 address (see `NetworkResponder.start`), on queue pair 0.
    public func announce() throws(VhostError) {
        var failure: VhostError? = nil
        responder.start { length, header, write in
            if failure == nil { do throws(VhostError) { try self.enqueue(length: length, header: header, queue: 0, write: write) } catch { failure = error } }
        }
        pairs[0].flushTransmit()
        if let failure { throw failure }
    }

    /// Runs one turn: receives on every queue, answers what the responder answers, and when
    /// nothing arrived sleeps up to `milliseconds` on the RX call eventfds (plus `extraFDs`);
    /// with RX coalescing also after frames that got no answer (see `sleep`). In poll mode it
    /// returns at once instead, so that the caller's loop spins. With the burst
    /// path a queue's replies go out with one publish (and at most one kick) per batch of
    /// received frames. Returns the number of frames received.
    @discardableResult
    public func service(milliseconds: Int32, extraFDs: [Int32] = []) throws(VhostError) -> Int {
        reportRingErrors()
        var received = 0
        let duplicatesBefore = responder.counters.duplicateAddressesDetected
        // A range of Int, not enumerated() or indices: this generic class's methods run
        // unspecialized, where an (index, pair) tuple or Collection.indices costs metadata
        // lookups per step (attach as a sink spent more time in Swift's metadata caches than in
        // its frames).
        // The RX queues are not checked for exclusive access at run time (see
        // `VirtioNetQueuePair.receiveQueue`): a turn from inside a turn is refused here.
        precondition(!receiving, "VirtioNetEndpoint.service was called from a frame observer, inside a turn")
        do {
            receiving = true
            defer { receiving = false }
            for index in 0..<pairReferences.count where !brokenPairs.contains(index) {
                let pair = pair(index)
                do {
                    switch configuration.replyPath {
                    case .burst: received += try serviceBurst(pair, index: index)
                    case .single: received += try serviceSingle(pair, index: index)
                    }
                } catch .brokenQueue(let queue, let reason) {
                    markBroken(index, .brokenQueue(queue: queue, reason: reason))
                }
            }
        }
        if responder.counters.duplicateAddressesDetected != duplicatesBefore, let handler = duplicateAddressHandler {
            for (address, link) in responder.duplicates { handler(address, link) }
        }
        // Poll mode (as DPDK's drivers run): RX interrupts stay off and nothing sleeps; the
        // caller's loop comes straight back and looks again.
        guard milliseconds != 0, !pollsReceive else { return received }
        // A turn that took frames in returns for the next look, except a sink's with RX
        // coalescing (nothing answered, nothing left): it sleeps for the next batch now, as NAPI
        // re-enables interrupts when a poll ends under its budget, instead of in a turn of its own
        // that would only find the ring empty (a wake-up then cost two turns).
        // Looked at once per turn: it also moves what the endpoint sent this turn into the window.
        let immediate = answeredRecently()
        guard received == 0 || (coalesces && !immediate) else { return received }
        for fd in extraFDs where !watchedExtras.contains(fd) {
            try poller.add(fd, token: UInt64.max)
            watchedExtras.insert(fd)
        }
        sleep(milliseconds: milliseconds, immediate: immediate)
        return received
    }

    /// Interrupt mode's sleep: re-enables RX interrupts on every queue (returning at once when
    /// one has work already), then sleeps in epoll on all call eventfds, at most `milliseconds`
    /// (-1: until something happens); `immediate`: every queue wakes on its next frame.
    ///
    /// With RX coalescing (`QueuePairConfiguration.receiveCoalescing`) a queue wakes the endpoint
    /// once its threshold of frames is used, or after the delay, so that a stream of frames costs
    /// a wake-up per many frames instead of one per few. Unless the endpoint answered something
    /// within the last `answerWindowMilliseconds`: then a peer is waiting for us (a ping, an ARP
    /// request, an echo), and its next frame must not wait for the delay, so every queue wakes on
    /// its next frame, as without coalescing. A sink (frames nobody answers) coalesces; request
    /// and response do not, even with unanswered frames (the host's IPv6 router solicitations and
    /// listener reports) between them.
    private func sleep(milliseconds: Int32, immediate: Bool) {
        var timeout = milliseconds
        for index in 0..<pairReferences.count {
            sleeps[index] = nil
            guard !brokenPairs.contains(index) else { continue }
            guard let sleep = pair(index).armReceiveSleep(immediate: immediate) else {
                for armed in 0..<index { if let s = sleeps[armed] { pair(armed).endReceiveSleep(s, signalled: false, delayPassed: false); sleeps[armed] = nil } }
                return
            }
            sleeps[index] = sleep
            if let delay = sleep.delayMilliseconds, timeout < 0 || delay < timeout { timeout = delay }
        }
        let ready = poller.wait(milliseconds: timeout, tokens: &readyTokens)
        var signalled = UInt64(0)  // a bit per queue pair among the first 64; the rest by search
        for token in readyTokens[0..<ready] {
            if token == Self.ringErrorToken { ringErrorsSignalled = true } else if token < 64 { signalled |= 1 << token }
        }
        for index in 0..<pairReferences.count {
            guard let sleep = sleeps[index] else { continue }
            sleeps[index] = nil
            let woke = index < 64 ? signalled & (1 << UInt64(index)) != 0 : readyTokens[0..<ready].contains(UInt64(index))
            // The delay passed only when nothing at all ended the wait before it.
            let delayPassed = ready == 0 && sleep.delayMilliseconds.map { $0 <= timeout } == true
            pair(index).endReceiveSleep(sleep, signalled: woke, delayPassed: delayPassed)
        }
    }

    /// How long after sending anything the endpoint keeps waking on every frame: a peer waiting
    /// for our answers (ping's default interval is a second) gets its next request through at once.
    static var answerWindowMilliseconds: Int { 1000 }

    /// Whether the endpoint sent something within `answerWindowMilliseconds` (one read of the
    /// coarse clock, in the vDSO).
    private func answeredRecently() -> Bool {
        let now = MonotonicClock.coarseMilliseconds()
        if answeredSinceSleep {
            answeredSinceSleep = false
            lastAnswerAt = now
        }
        guard let lastAnswerAt else { return false }
        return now &- lastAnswerAt < Self.answerWindowMilliseconds
    }

    /// Reads the error eventfds (a read(2) each) and reports what the device signalled, when the
    /// last sleep saw one signalled and otherwise at most every `ringErrorReadInterval`
    /// milliseconds: a busy endpoint that read them every turn paid two system calls per turn,
    /// about one turn per frame of a stream. A queue the device stopped with vq_err brings no
    /// more frames, so the endpoint soon sleeps, and the poller reports the error at once.
    private func reportRingErrors() {
        let now = MonotonicClock.coarseMilliseconds()
        guard ringErrorsSignalled || now &- ringErrorsReadAt >= Self.ringErrorReadInterval else { return }
        ringErrorsSignalled = false
        ringErrorsReadAt = now
        for index in 0..<pairReferences.count {
            for var event in pair(index).takeRingErrors() {
                event.queue.pair = index
                logger.warning("\(event)")
                ringErrorHandler?(index, event)
            }
        }
    }

    /// The longest a busy endpoint goes without reading the error eventfds, in milliseconds.
    static var ringErrorReadInterval: Int { 10 }

    /// One batch on one pair: every reply is written straight into the TX buffer it goes out
    /// from (no copy of the request or the reply), and the TX ring is published once at the end.
    private func serviceBurst(_ pair: Pair, index: Int) throws(VhostError) -> Int {
        var failure: VhostError? = nil
        let observer = frameObserver
        let received = try pair.receiveUsed(limit: 256) { frame in
            // The whole header is read only for an observer; the responder needs its flags.
            if let observer { observer(ObservedFrame(direction: .received, queue: index, header: frame.header, bytes: frame.frame)) }
            responder.respond(to: frame.frame, headerFlags: frame.headerFlags) { length, header, write in
                guard failure == nil else { return }
                do throws(VhostError) { try enqueue(length: length, header: header, queue: index, write: write) } catch { failure = error }
            }
        }
        pair.flushTransmit()
        if let failure { throw failure }
        return received
    }

    /// One batch on one pair the way it was done before batching (`ReplyPath.single`).
    private func serviceSingle(_ pair: Pair, index: Int) throws(VhostError) -> Int {
        var frames: [(VirtioNetHeader, [UInt8])] = []
        let received = try pair.receiveUsed(limit: 256) { frame in frames.append((frame.header, [UInt8](frame.frame))) }
        for (header, frame) in frames {
            if let frameObserver { frame.withUnsafeBytes { frameObserver(ObservedFrame(direction: .received, queue: index, header: header, bytes: $0)) } }
            for reply in responder.replies(to: frame, header: header) {
                answeredSinceSleep = true
                try pair.transmit(frame: reply.frame, header: reply.header)
                if let frameObserver { reply.frame.withUnsafeBytes { frameObserver(ObservedFrame(direction: .transmitted, queue: index, header: reply.header, bytes: $0)) } }
            }
        }
        return received
    }

    /// Adds one frame to queue pair `queue`'s TX ring, written by `write` where the device will
    /// read it (waiting for room when the ring is full), and shows it to the observer. Not
    /// published: see `flush`.
    private func enqueue(length: Int, header: VirtioNetHeader, queue: Int, write: (UnsafeMutableRawBufferPointer) -> Void) throws(VhostError) {
        let observer = frameObserver
        answeredSinceSleep = true
        _ = try pair(queue).enqueueTransmit(length: length, header: header, milliseconds: Self.transmitWaitMilliseconds) { buffer in
            write(buffer)
            observer?(ObservedFrame(direction: .transmitted, queue: queue, header: header, bytes: UnsafeRawBufferPointer(buffer)))
        }
    }

    /// Queue pair `index` from `pairReferences`: the cast is a reinterpretation (no check, no
    /// metadata in an optimized build), sound because `pairReferences` holds `pairs`, in order.
    @inline(__always)
    private func pair(_ index: Int) -> Pair { unsafeDowncast(pairReferences[index], to: Pair.self) }

    /// The epoll token of the error eventfds: a wake-up only, handled at the next turn.
    static var ringErrorToken: UInt64 { UInt64.max - 1 }

    private func markBroken(_ index: Int, _ error: VhostError) {
        guard brokenPairs.insert(index).inserted else { return }
        logger.error("queue pair \(index): \(error)")
        brokenQueueHandler?(index, error)
    }

    /// Transmits one frame on a queue, with `header` (zero by default), and publishes it.
    public func send(_ frame: [UInt8], header: VirtioNetHeader = VirtioNetHeader(), queue: Int = 0) throws(VhostError) {
        let index = queue % pairs.count
        try enqueue(copying: frame, header: header, queue: index)
        pairs[index].flushTransmit()
    }

    /// Transmits frames round-robin over the queues, keeping each ring full.
    public func send(frames: [[UInt8]]) throws(VhostError) {
        try send(frames.enumerated().map { (frame: $1, header: VirtioNetHeader(), queue: $0 % pairs.count) })
    }

    /// Transmits frames, each with its header on its queue (modulo the queue count): a ring is
    /// published when it fills and at the end. A frame larger than the largest TX buffer is
    /// dropped and counted.
    public func send(_ frames: [(frame: [UInt8], header: VirtioNetHeader, queue: Int)]) throws(VhostError) {
        for item in frames { try enqueue(copying: item.frame, header: item.header, queue: item.queue % pairs.count) }
        for pair in pairs { pair.flushTransmit() }
    }

    /// `enqueue` of a frame that is already in an array (a replayed or a caller's frame).
    private func enqueue(copying frame: [UInt8], header: VirtioNetHeader, queue: Int) throws(VhostError) {
        let outcome = frame.withUnsafeBytes { bytes in
            Result { () throws(VhostError) in try enqueue(length: bytes.count, header: header, queue: queue) { $0.copyMemory(from: bytes) } }
        }
        try outcome.get()
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
        guard !configuration.adopted.isEmpty else {
            try self.init(configuration, logger: logger) { (config, logger) throws(VhostError) in try VhostNetQueuePair(config, logger: logger) }
            return
        }
        // Descriptors passed by another process: one tap queue (and vhost fd) per pair.
        guard configuration.adopted.count == configuration.queues else {
            throw .invalidConfiguration("\(configuration.adopted.count) passed tap descriptor(s) for \(configuration.queues) queue pair(s): pass one per queue pair")
        }
        var next = 0
        try self.init(configuration, logger: logger) { (config, logger) throws(VhostError) in
            defer { next += 1 }
            return try VhostNetQueuePair(config, adopting: configuration.adopted[next], logger: logger)
        }
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
