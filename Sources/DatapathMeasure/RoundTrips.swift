import Glibc
import Histogram
import HostNetwork
import NetFormats
import Synchronization
import SystemPackage
import Vhost

/// Request/response round trips between the driver's side and the host's own network stack,
/// through the tap: an ICMP echo (what ping measures) or a UDP datagram to an echo socket on
/// the host (netperf's UDP_RR). One request is in flight at a time; the clock runs from handing
/// the request to the backend until its reply is in hand. The host finds our MAC by ARP, which
/// this side answers, so nothing about the host's neighbour table is assumed.
public struct RoundTrips {
    /// What the request is.
    public enum Kind: String, Sendable {
        /// ICMP echo request, answered by the host's stack.
        case icmp
        /// A UDP datagram to `echoPort` on the host, sent back by a socket of this process.
        case udp
    }

    /// The tap's address on the host side, and ours behind it.
    public static let hostInterface = IPv4Interface(address: IPv4Address(10, 78, 0, 1), prefixLength: 24)
    public static let ourAddress = IPv4Address(10, 78, 0, 2)
    public static let echoPort: UInt16 = 7
    public static let ourPort: UInt16 = 40007
    /// A reply later than this is lost: counted, never recorded.
    public static let replyTimeout = 1.0
    /// Round trips at the start of each measurement that are not recorded (ARP, cold caches).
    public static let unrecorded = 5

    public var kind: Kind
    /// The request's Ethernet frame size (the reply is the same size).
    public var frameSize: Int
    public var hostMAC: MACAddress
    public var ourMAC: MACAddress

    public init(kind: Kind, frameSize: Int, hostMAC: MACAddress, ourMAC: MACAddress) {
        self.kind = kind; self.frameSize = frameSize; self.hostMAC = hostMAC; self.ourMAC = ourMAC
    }

    /// What a measurement saw.
    public struct Outcome: Sendable {
        /// Round-trip times in nanoseconds (hdrhistogram, 3 significant digits).
        public var histogram = Histogram<UInt64>(highestTrackableValue: 10_000_000_000, numberOfSignificantValueDigits: .three)
        /// Requests whose reply came in time (the unrecorded first ones included).
        public var completed: UInt64 = 0
        /// Requests with no reply within `replyTimeout`.
        public var lost: UInt64 = 0
        /// Frames sent and received, the ARP answers included.
        public var framesSent: UInt64 = 0
        public var framesReceived: UInt64 = 0
    }

    /// The request with sequence number `sequence`.
    func request(_ sequence: UInt16) -> [UInt8] {
        // Ethernet 14 + IPv4 20 + ICMP or UDP 8 headers; the rest is payload.
        let payload = [UInt8](repeating: 0x42, count: max(4, frameSize - 42))
        switch kind {
        case .icmp:
            return IPv4Packet.frame(destinationMAC: hostMAC, sourceMAC: ourMAC, source: RoundTrips.ourAddress, destination: RoundTrips.hostInterface.address,
                                    protocolNumber: IPv4Packet.protocolICMP, identification: sequence,
                                    payload: ICMPEcho.request(identifier: 0x7672, sequence: sequence, payload: payload))
        case .udp:
            var body = payload
            body[0] = UInt8(sequence >> 8); body[1] = UInt8(sequence & 0xff)
            return IPv4Packet.frame(destinationMAC: hostMAC, sourceMAC: ourMAC, source: RoundTrips.ourAddress, destination: RoundTrips.hostInterface.address,
                                    protocolNumber: IPv4Packet.protocolUDP, identification: sequence,
                                    payload: UDPDatagram.build(source: RoundTrips.ourAddress, destination: RoundTrips.hostInterface.address,
                                                               sourcePort: RoundTrips.ourPort, destinationPort: RoundTrips.echoPort, payload: body[...]))
        }
    }

    /// Whether `frame` is the reply to request `sequence`.
    func isReply(_ frame: [UInt8], to sequence: UInt16) -> Bool {
        guard let ip = IPv4Packet(frame: frame), ip.source == RoundTrips.hostInterface.address, ip.destination == RoundTrips.ourAddress else { return false }
        switch kind {
        case .icmp:
            return ip.protocolNumber == IPv4Packet.protocolICMP && ICMPEcho.reply(in: frame[ip.payload])?.sequence == sequence
        case .udp:
            guard let udp = UDPDatagram.parse(frame: frame, ip: ip), udp.sourcePort == RoundTrips.echoPort, udp.destinationPort == RoundTrips.ourPort,
                  udp.payload.count >= 2 else { return false }
            return UInt16(frame[udp.payload.lowerBound]) << 8 | UInt16(frame[udp.payload.lowerBound + 1]) == sequence
        }
    }

    /// The ARP reply to `frame` when it asks for our address.
    func arpAnswer(_ frame: [UInt8]) -> [UInt8]? {
        guard let arp = ARPPacket(frame: frame), arp.operation == .request, arp.targetIP == RoundTrips.ourAddress else { return nil }
        return ARPPacket(operation: .reply, senderMAC: ourMAC, senderIP: RoundTrips.ourAddress, targetMAC: arp.senderMAC, targetIP: arp.senderIP).frame()
    }

    /// Runs round trips for `seconds`, or until `limit` requests were sent. `send` hands a frame
    /// to the backend; `receive(ms, handler)` waits up to `ms` for frames and passes each to `handler`.
    public func run(seconds: Double, limit: Int? = nil, send: ([UInt8]) throws -> Void,
                    receive: (Int32, ([UInt8]) -> Void) throws -> Void) throws -> Outcome {
        var outcome = Outcome()
        let end = ContinuousClock.now + .clampedSeconds(seconds)
        var sequence: UInt16 = 0
        var index = 0
        while ContinuousClock.now < end && index < limit ?? Int.max {
            sequence &+= 1
            let frame = request(sequence)
            let sent = ContinuousClock.now
            try send(frame)
            outcome.framesSent += 1
            var replied: ContinuousClock.Instant? = nil
            var answers: [[UInt8]] = []
            let deadline = sent + .clampedSeconds(RoundTrips.replyTimeout)
            while replied == nil {
                let now = ContinuousClock.now
                guard now < deadline else { break }
                try receive(Int32(min(100, now.duration(to: deadline).inMilliseconds + 1))) { frame in
                    outcome.framesReceived += 1
                    if replied == nil && isReply(frame, to: sequence) { replied = ContinuousClock.now }
                    else if let answer = arpAnswer(frame) { answers.append(answer) }
                }
                for answer in answers { try send(answer); outcome.framesSent += 1 }
                answers.removeAll()
            }
            if let replied {
                outcome.completed += 1
                if index >= RoundTrips.unrecorded { _ = outcome.histogram.record(sent.duration(to: replied).inNanoseconds) }
            } else {
                outcome.lost += 1
            }
            index += 1
        }
        return outcome
    }

    /// A UDP echo on the host side of the tap, on its own thread: every datagram to
    /// `echoPort` goes back to where it came from (`ourPort`). Stops in `stop()` or `deinit`.
    public final class Echo {
        private var thread: WorkerThread?
        final class Flag: Sendable { let raised = Atomic<Bool>(false) }
        private let stopFlag = Flag()

        public init() throws {
            let socket = try HostSocket.udp()
            try socket.bind(RoundTrips.hostInterface.address, port: RoundTrips.echoPort)
            let fd = dup(socket.fd)
            guard fd >= 0 else { throw VhostError.system(call: "dup", detail: "the echo socket", errno: Errno(rawValue: errno)) }
            thread = WorkerThread { [stopFlag] in
                defer { close(fd) }
                var buffer = [UInt8](repeating: 0, count: 65536)
                while !stopFlag.raised.load(ordering: .relaxed) {
                    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    guard poll(&entry, 1, 50) > 0 else { continue }
                    var from = sockaddr_in()
                    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                    let n = withUnsafeMutablePointer(to: &from) { address in
                        address.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT), $0, &length) }
                    }
                    guard n > 0 else { continue }
                    _ = withUnsafePointer(to: &from) { address in
                        address.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, buffer, n, 0, $0, length) }
                    }
                }
            }
        }

        public func stop() {
            stopFlag.raised.store(true, ordering: .relaxed)
            thread?.join()
            thread = nil
        }

        deinit { stop() }
    }
}
