import NetFormats
import Virtio

/// How frames look on the port.
public enum LinkLayer: String, Sendable {
    /// Ethernet frames (a tap, a macvtap, a packet socket).
    case ethernet
    /// Bare IP packets, no link-layer header (a tun in `IFF_TUN` mode): no ARP, no ND.
    case none

    /// Bytes of link-layer header before the IP header.
    public var headerLength: Int { self == .ethernet ? EthernetFrame.headerLength : 0 }
}

/// What the endpoint may leave to the device for what it sends: the virtio-net features the
/// driver negotiated for its transmit side, and the frames the transmit path can carry.
public struct TransmitOffloads: Sendable, Equatable {
    /// `VIRTIO_NET_F_CSUM`: UDP checksums are left to the host (NEEDS_CSUM with the pseudo-header sum).
    public var checksum: Bool
    /// `VIRTIO_NET_F_HOST_USO`: a UDP datagram larger than the MTU goes out as one UDP_L4 GSO
    /// superframe that the host segments (needs `checksum` too, as the virtio spec says).
    public var udpSegmentation: Bool
    /// The largest frame the transmit path takes whole (a superframe's limit).
    public var largestFrame: Int

    /// Offloads with the given fields.
    public init(checksum: Bool = false, udpSegmentation: Bool = false, largestFrame: Int = 1514) {
        self.checksum = checksum; self.udpSegmentation = udpSegmentation; self.largestFrame = largestFrame
    }
}

/// What a NIC endpoint answers: ARP for its IPv4 address, neighbour discovery for its IPv6
/// addresses (solicitations, duplicate-address-detection probes included, and its own
/// solicitations to resolve the host), ICMP and ICMPv6 echo, and UDP datagrams to its echo
/// port over both. Checksums are verified on what arrives (unless the host vouched for them in
/// the virtio-net header) and computed, or left to the host, on what is sent. Fragments are
/// reassembled; a reply larger than the MTU is fragmented, or sent as one USO superframe.
///
/// Pure logic: a received frame in, reply frames out through `emit`, each written straight
/// into the buffer it is sent from. The only state is the neighbour cache, the replies that
/// wait for a neighbour to be resolved, and the fragments that wait for the rest of their datagram.
public struct NetworkResponder: Sendable {
    /// What the responder did.
    public struct Counters: Sendable, Equatable {
        /// ARP replies sent.
        public var arpReplies: UInt64 = 0
        /// ICMP echo replies sent.
        public var icmpEchoReplies: UInt64 = 0
        /// UDP datagrams echoed over IPv4.
        public var udpEchoes: UInt64 = 0
        /// ICMPv6 echo replies.
        public var icmp6EchoReplies: UInt64 = 0
        /// UDP echoes over IPv6.
        public var udp6Echoes: UInt64 = 0
        /// Neighbour advertisements sent (answers to solicitations, DAD probes included).
        public var neighborAdvertisements: UInt64 = 0
        /// Duplicate-address-detection probes for an address of ours that were answered.
        public var duplicateAddressProbesAnswered: UInt64 = 0
        /// Neighbour solicitations sent (to resolve the host, to confirm it, and DAD probes).
        public var neighborSolicitations: UInt64 = 0
        /// Advertisements from another node for an address of ours.
        public var duplicateAddressesDetected: UInt64 = 0
        /// Datagrams reassembled from fragments.
        public var reassembled: UInt64 = 0
        /// Fragments sent for replies larger than the MTU.
        public var fragmentsSent: UInt64 = 0
        /// Replies sent as one UDP segmentation (USO) superframe.
        public var segmentationOffloads: UInt64 = 0
        /// Frames dropped for a wrong checksum.
        public var checksumErrors: UInt64 = 0
        /// Frames not answered (not for us, not a request, malformed).
        public var ignored: UInt64 = 0
        /// All zero.
        public init() {}
    }

    /// Writes one frame of `length` bytes with `header` into the buffer it is sent from.
    public typealias Emit = (_ length: Int, _ header: VirtioNetHeader, _ write: (UnsafeMutableRawBufferPointer) -> Void) -> Void

    /// The endpoint's MAC (and the source of its link-local address).
    public var mac: MACAddress { didSet { macValue = mac.value } }
    /// `mac.value`, kept in step with `mac`: the sink's fast path (`isSinkFrame`) compares one
    /// word per frame instead of assembling it from the six bytes.
    private var macValue: UInt64
    /// The IPv4 address answered (ARP, ICMP echo, UDP), if any.
    public var ipv4: IPv4Interface?
    /// The IPv6 addresses given (with `ipv6Enabled`, the link-local address is added to them).
    public var ipv6: [IPv6Interface]
    /// IPv6 is on: the link-local address from the MAC (EUI-64) and `ipv6` are answered.
    public var ipv6Enabled: Bool
    /// The UDP port echoed over both IP versions, if any.
    public var udpEchoPort: UInt16?
    /// What frames look like on the port.
    public var linkLayer: LinkLayer
    /// The link's MTU: the largest IP packet sent without fragments or segmentation.
    public var mtu: Int
    /// What replies may leave to the host.
    public var offloads: TransmitOffloads
    /// What was answered, sent and dropped.
    public internal(set) var counters = Counters()
    /// Addresses of ours that another node advertised (a duplicate), with its MAC.
    public private(set) var duplicates: [IPv6Address: MACAddress] = [:]

    var neighbors = NeighborCache()
    var reassembler = FragmentReassembler()
    var nextIPv4Identification: UInt16 = 1
    var nextIPv6Identification: UInt32 = 1

    /// A responder for `mac`, `ipv4` and (with `ipv6Enabled`) the link-local address and `ipv6`.
    public init(mac: MACAddress, ipv4: IPv4Interface?, ipv6: [IPv6Interface] = [], ipv6Enabled: Bool? = nil, udpEchoPort: UInt16?,
                linkLayer: LinkLayer = .ethernet, mtu: Int = 1500, offloads: TransmitOffloads = TransmitOffloads()) {
        self.mac = mac; self.macValue = mac.value; self.ipv4 = ipv4; self.ipv6 = ipv6; self.ipv6Enabled = ipv6Enabled ?? !ipv6.isEmpty
        self.udpEchoPort = udpEchoPort; self.linkLayer = linkLayer; self.mtu = max(mtu, 1280); self.offloads = offloads
    }

    /// The link-local address from the MAC (RFC 4291 EUI-64).
    public var linkLocalAddress: IPv6Address { IPv6Address.linkLocal(mac: mac) }

    /// Every IPv6 address answered: the link-local one first, then those given.
    public var ipv6Addresses: [IPv6Address] {
        guard ipv6Enabled else { return [] }
        var all = [linkLocalAddress]
        for interface in ipv6 where !all.contains(interface.address) { all.append(interface.address) }
        return all
    }

    func isOurs(_ address: IPv6Address) -> Bool { ipv6Enabled && (address == linkLocalAddress || ipv6.contains { $0.address == address }) }

    // MARK: receiving

    /// Answers `frame` (as the port carries it: Ethernet, or a bare IP packet), calling `emit`
    /// for each frame to send: none, one, or several (fragments, replies that waited for a
    /// neighbour). `header` is the frame's virtio-net header: with NEEDS_CSUM the L4 checksum
    /// field holds only the pseudo-header sum (the host offloaded it), and with DATA_VALID the
    /// host already checked it, so neither is verified here.
    public mutating func respond(to frame: UnsafeRawBufferPointer, header: VirtioNetHeader = VirtioNetHeader(), emit: Emit) {
        respond(to: frame, headerFlags: header.flags, emit: emit)
    }

    /// The header flags by which the host vouches for a frame's L4 checksum: NEEDS_CSUM, DATA_VALID.
    /// Computed, not a `static let`: a stored static cost a `swift_once` call per frame.
    private static var checksumVouched: UInt8 { VirtioNetHeader.Flags.needsChecksum.rawValue | VirtioNetHeader.Flags.dataValid.rawValue }

    /// `respond`, given only the header's flags (all it reads of the header).
    public mutating func respond(to frame: UnsafeRawBufferPointer, headerFlags: VirtioNetHeader.Flags, emit: Emit) {
        // A sink's stream (pktgen's, a flood to a port nothing serves) is counted after a few
        // loads: the full parse below drops the same frames, after reading the MAC addresses
        // and the EtherType into values (Benchmarks/endpoint-sink: 424 instructions per such frame,
        // 240 of them in the responder, before this path).
        if isSinkFrame(frame) { counters.ignored &+= 1; return }
        respondParsing(to: frame, headerFlags: headerFlags, emit: emit)
    }

    /// Whether `frame` is a whole IPv4 UDP datagram to our own MAC (on Ethernet) for a port
    /// nothing serves (`isUnservedDatagram`): what `respondParsing` counts as ignored without an
    /// answer, decided here in a few loads. False for everything else (broadcast and multicast,
    /// ARP, IPv6, a fragment, the echo port, a frame too short), which takes the full parse.
    @inline(__always)
    func isSinkFrame(_ frame: UnsafeRawBufferPointer) -> Bool {
        switch linkLayer {
        case .ethernet:
            // An Ethernet header and a minimal IPv4 header and UDP header after it.
            guard frame.count >= EthernetFrame.headerLength &+ 28, let base = frame.baseAddress else { return false }
            // SAFETY: the frame holds at least 42 bytes (checked above): bytes 0..<8 and
            // 12..<14 are inside it; unaligned loads, as a frame starts anywhere.
            // The first six bytes as `MACAddress.value` holds them (big-endian, the low 48 bits).
            let destination = UInt64(bigEndian: base.loadUnaligned(as: UInt64.self)) >> 16
            guard destination == macValue,
                  UInt16(bigEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self)) == EthernetFrame.ipv4Type else { return false }
            return Self.isUnservedDatagram(frame, at: EthernetFrame.headerLength, echoPort: udpEchoPort)
        case .none:
            return Self.isUnservedDatagram(frame, at: 0, echoPort: udpEchoPort)
        }
    }

    /// `respond` without the sink's fast path: every frame is parsed. Internal, so that the
    /// tests can hold the fast path to it. Never inlined: inlined, its frame set-up (registers,
    /// a 0x218-byte stack frame) was paid by the fast path too.
    @inline(never)
    mutating func respondParsing(to frame: UnsafeRawBufferPointer, headerFlags: VirtioNetHeader.Flags, emit: Emit) {
        // NEEDS_CSUM or DATA_VALID: the host vouched for the L4 checksum (a mask, not an option
        // set built from a literal per frame).
        let trusted = headerFlags.rawValue & Self.checksumVouched != 0
        switch linkLayer {
        case .ethernet:
            guard frame.count >= EthernetFrame.headerLength, let destination = MACAddress(frame, at: 0), let peer = MACAddress(frame, at: 6),
                  let etherType = frame.be16(at: 12),
                  // Our own MAC and broadcast first, read from the fields: a call of the method
                  // copied the whole responder (256 bytes) per frame.
                  destination == mac || destination == .broadcast || acceptsFrame(to: destination) else { counters.ignored += 1; return }
            switch etherType {
            case EthernetFrame.arpType: respondToARP(frame, emit: emit)
            case EthernetFrame.ipv4Type: respondToIPv4(frame, at: EthernetFrame.headerLength, peer: peer, trusted: trusted, emit: emit)
            case EthernetFrame.ipv6Type: respondToIPv6(frame, at: EthernetFrame.headerLength, peer: peer, trusted: trusted, emit: emit)
            default: counters.ignored += 1
            }
        case .none:
            switch frame.byte(at: 0).map({ $0 >> 4 }) {
            case 4: respondToIPv4(frame, at: 0, peer: nil, trusted: trusted, emit: emit)
            case 6: respondToIPv6(frame, at: 0, peer: nil, trusted: trusted, emit: emit)
            default: counters.ignored += 1
            }
        }
    }

    /// A NIC's receive filter: its own MAC, broadcast, and the IPv6 groups it joined (all-nodes
    /// and the solicited-node group of each address).
    func acceptsFrame(to destination: MACAddress) -> Bool {
        if destination == mac || destination == .broadcast { return true }
        guard ipv6Enabled, destination.bytes.0 == 0x33, destination.bytes.1 == 0x33 else { return false }
        if destination == IPv6Address.allNodes.multicastMAC { return true }
        return ipv6Addresses.contains { $0.solicitedNodeMulticast.multicastMAC == destination }
    }

    /// Sends what should go out when the endpoint starts: a duplicate-address-detection probe
    /// (RFC 4862 §5.4.2: a solicitation from `::` to the solicited-node group, no source
    /// link-layer option) for each IPv6 address. The addresses are used at once (optimistic);
    /// an advertisement for one of them later counts as a duplicate.
    public mutating func start(emit: Emit) {
        guard linkLayer == .ethernet else { return }
        for address in ipv6Addresses {
            sendSolicitation(for: address, from: .unspecified, to: address.solicitedNodeMulticast, mac: address.solicitedNodeMulticast.multicastMAC, emit: emit)
        }
    }

    // MARK: IPv4

    private mutating func respondToARP(_ frame: UnsafeRawBufferPointer, emit: Emit) {
        let arp = ARPPacket(frame: Array(frame.prefix(EthernetFrame.headerLength + 28)))
        guard let arp, let me = ipv4?.address, arp.operation == .request, arp.targetIP == me else { counters.ignored += 1; return }
        counters.arpReplies += 1
        let reply = ARPPacket(operation: .reply, senderMAC: mac, senderIP: me, targetMAC: arp.senderMAC, targetIP: arp.senderIP).frame()
        emit(reply.count, VirtioNetHeader()) { buffer in reply.withUnsafeBytes { buffer.copyMemory(from: $0) } }
    }

    private mutating func respondToIPv4(_ frame: UnsafeRawBufferPointer, at offset: Int, peer: MACAddress?, trusted: Bool, emit: Emit) {
        // A whole UDP datagram to a port nothing serves gets no answer, whatever else it holds:
        // a sink's stream is dropped here, before the header is parsed and checked.
        if Self.isUnservedDatagram(frame, at: offset, echoPort: udpEchoPort) { counters.ignored += 1; return }
        guard let me = ipv4?.address, let ip = IPv4Packet(frame, at: offset), ip.destination == me else { counters.ignored += 1; return }
        let datagram = IPDatagram(version: 4, source: IPv6Address(high: 0, low: UInt64(ip.source.value)),
                                  destination: IPv6Address(high: 0, low: UInt64(ip.destination.value)), upperLayer: ip.protocolNumber)
        if ip.isFragment {
            guard let data = frame.bytes(ip.payload) else { counters.ignored += 1; return }
            switch reassembler.add(FragmentReassembler.Key(ip), offset: ip.fragmentOffset, more: ip.moreFragments, data: data) {
            case .complete(let whole):
                counters.reassembled += 1
                whole.withUnsafeBytes { answer(datagram, upper: $0, peer: peer, trusted: false, emit: emit) }
            case .incomplete: break
            case .discarded: counters.ignored += 1
            }
            return
        }
        guard let upper = frame.bytes(ip.payload) else { counters.ignored += 1; return }
        answer(datagram, upper: upper, peer: peer, trusted: trusted, emit: emit)
    }

    /// Whether the IPv4 packet at `offset` is a whole UDP datagram (not a fragment) to a port other
    /// than the echo port (any port when echo is off): a few byte reads, and false for anything
    /// the full parse should see (too short, another protocol, a fragment).
    /// Static, given the echo port: a method of the responder copied it whole per frame.
    @inline(__always)
    private static func isUnservedDatagram(_ frame: UnsafeRawBufferPointer, at offset: Int, echoPort udpEchoPort: UInt16?) -> Bool {
        guard let first = frame.byte(at: offset), first >> 4 == 4, frame.byte(at: offset &+ 9) == IPv4Packet.protocolUDP,
              let fragment = frame.be16(at: offset &+ 6), fragment & 0x3fff == 0 else { return false }
        guard let udpEchoPort else { return true }
        // Cannot overflow: offset is at most the frame's length, the header at most 60 bytes.
        guard let port = frame.be16(at: offset &+ Int(first & 0x0f) &* 4 &+ 2) else { return false }
        return port != udpEchoPort
    }

    // MARK: IPv6

    private mutating func respondToIPv6(_ frame: UnsafeRawBufferPointer, at offset: Int, peer: MACAddress?, trusted: Bool, emit: Emit) {
        guard ipv6Enabled, let ip = IPv6Packet(frame, at: offset) else { counters.ignored += 1; return }
        let forUs = isOurs(ip.destination) || ip.destination == .allNodes
            || (ip.destination.isSolicitedNodeMulticast && ipv6Addresses.contains { $0.solicitedNodeMulticast == ip.destination })
        guard forUs, !ip.source.isMulticast else { counters.ignored += 1; return }
        let datagram = IPDatagram(version: 6, source: ip.source, destination: ip.destination, upperLayer: ip.upperLayer)
        if let fragment = ip.fragment, fragment.offset != 0 || fragment.moreFragments {
            guard let data = frame.bytes(ip.payload) else { counters.ignored += 1; return }
            var key = FragmentReassembler.Key(ip, identification: fragment.identification)
            key.protocolNumber = ip.upperLayer
            switch reassembler.add(key, offset: fragment.offset, more: fragment.moreFragments, data: data) {
            case .complete(let whole):
                counters.reassembled += 1
                // Neighbour discovery is never fragmented (RFC 6980): only echo and UDP from here.
                guard ip.upperLayer != IPv6Packet.protocolICMPv6 || whole.first.map({ $0 < 133 || $0 > 137 }) == true else { counters.ignored += 1; return }
                whole.withUnsafeBytes { answer(datagram, upper: $0, peer: peer, trusted: false, emit: emit) }
            case .incomplete: break
            case .discarded: counters.ignored += 1
            }
            return
        }
        guard let upper = frame.bytes(ip.payload) else { counters.ignored += 1; return }
        if ip.upperLayer == IPv6Packet.protocolICMPv6, let type = upper.byte(at: 0), (133...137).contains(type) {
            guard trusted || ICMPv6.checksumIsValid(upper, source: ip.source, destination: ip.destination) else { counters.checksumErrors += 1; return }
            respondToNeighborDiscovery(type: type, message: upper, ip: ip, peer: peer, emit: emit)
            return
        }
        answer(datagram, upper: upper, peer: peer, trusted: trusted, emit: emit)
    }

    private mutating func respondToNeighborDiscovery(type: UInt8, message: UnsafeRawBufferPointer, ip: IPv6Packet, peer: MACAddress?, emit: Emit) {
        // On an L3 tun there is no link layer to resolve (the interface is NOARP).
        guard linkLayer == .ethernet else { counters.ignored += 1; return }
        switch type {
        case ICMPv6.neighborSolicitation:
            guard let solicitation = NeighborSolicitation(message, ip: ip), isOurs(solicitation.target) else { counters.ignored += 1; return }
            let target = solicitation.target
            if ip.source.isUnspecified {
                // A duplicate-address-detection probe for an address of ours: defend it with an
                // advertisement to all nodes, S clear (RFC 4861 §7.2.4).
                counters.duplicateAddressProbesAnswered += 1
                sendAdvertisement(target: target, to: .allNodes, mac: IPv6Address.allNodes.multicastMAC, solicited: false, emit: emit)
                return
            }
            // The solicitation tells us the asker's link-layer address (a STALE entry, §7.2.3).
            if let link = solicitation.sourceLinkLayer { neighbors.learn(ip.source, link, confirmed: false) }
            guard let reply = solicitation.sourceLinkLayer ?? peer else { counters.ignored += 1; return }
            sendAdvertisement(target: target, to: ip.source, mac: reply, solicited: true, emit: emit)
        case ICMPv6.neighborAdvertisement:
            guard let advertisement = NeighborAdvertisement(message, ip: ip) else { counters.ignored += 1; return }
            if isOurs(advertisement.target) {
                // Another node claims an address of ours (RFC 4862 §5.4.4).
                counters.duplicateAddressesDetected += 1
                duplicates[advertisement.target] = advertisement.targetLinkLayer ?? peer ?? MACAddress(0, 0, 0, 0, 0, 0)
                return
            }
            guard let link = advertisement.targetLinkLayer ?? peer else { counters.ignored += 1; return }
            let waiting = neighbors.resolve(advertisement.target, link, solicited: advertisement.solicited, override: advertisement.override)
            for queued in waiting {
                emit(EthernetFrame.headerLength + queued.packet.count, queued.header) { buffer in
                    var writer = ByteWriter(buffer)
                    writeEthernet(&writer, to: link, type: EthernetFrame.ipv6Type)
                    writer.bytes(queued.packet)
                }
            }
        default:
            // Router solicitations and advertisements, redirects: this node is a host that
            // takes its addresses from the command line.
            counters.ignored += 1
        }
    }

    func writeEthernet(_ writer: inout ByteWriter, to destination: MACAddress, type: UInt16) {
        for b in destination.array { writer.u8(b) }
        for b in mac.array { writer.u8(b) }
        writer.be16(type)
    }

    /// An advertisement of `target` (ours) with our link-layer address, override set.
    private mutating func sendAdvertisement(target: IPv6Address, to destination: IPv6Address, mac destinationMAC: MACAddress, solicited: Bool, emit: Emit) {
        let advertisement = NeighborAdvertisement(solicited: solicited, override: true, target: target, targetLinkLayer: mac)
        counters.neighborAdvertisements += 1
        emitNeighborDiscovery(length: advertisement.length, from: target, to: destination, mac: destinationMAC, emit: emit) { advertisement.write(to: &$0) }
    }

    /// A solicitation for `target`: with our link-layer address unless it is a DAD probe (from `::`).
    mutating func sendSolicitation(for target: IPv6Address, from source: IPv6Address, to destination: IPv6Address, mac destinationMAC: MACAddress, emit: Emit) {
        let solicitation = NeighborSolicitation(target: target, sourceLinkLayer: source.isUnspecified ? nil : mac)
        counters.neighborSolicitations += 1
        emitNeighborDiscovery(length: solicitation.length, from: source, to: destination, mac: destinationMAC, emit: emit) { solicitation.write(to: &$0) }
    }

    /// One neighbour-discovery message of `length` bytes in IPv6 (hop limit 255, RFC 4861 §7.1)
    /// in Ethernet, its ICMPv6 checksum computed over the pseudo-header.
    private func emitNeighborDiscovery(length: Int, from source: IPv6Address, to destination: IPv6Address, mac destinationMAC: MACAddress,
                                       emit: Emit, message: (inout ByteWriter) -> Void) {
        // `emit` calls its writer before it returns, so `message` never outlives this call.
        withoutActuallyEscaping(message) { message in
            emit(EthernetFrame.headerLength + IPv6Packet.headerLength + length, VirtioNetHeader()) { buffer in
                var writer = ByteWriter(buffer)
                writeEthernet(&writer, to: destinationMAC, type: EthernetFrame.ipv6Type)
                IPv6Packet.writeHeader(to: &writer, payloadLength: length, nextHeader: IPv6Packet.protocolICMPv6, hopLimit: 255,
                                       source: source, destination: destination)
                let start = writer.offset
                message(&writer)
                ICMPv6.storeChecksum(in: writer, messageStart: start, source: source, destination: destination)
            }
        }
    }


    /// Our address to answer `peer` from when the request went to a group: the link-local one
    /// for a link-local peer, else the first given address whose prefix holds the peer, else
    /// the first given one, else the link-local one.
    func sourceAddress(toward peer: IPv6Address) -> IPv6Address {
        if peer.isLinkLocal { return linkLocalAddress }
        if let match = ipv6.first(where: { peer.sharesPrefix(with: $0.address, length: $0.prefixLength) }) { return match.address }
        return ipv6.first { !$0.address.isLinkLocal }?.address ?? linkLocalAddress
    }

    // MARK: echo

    /// An IP datagram that arrived for us: the version and addresses (an IPv4 address in the
    /// low 32 bits), and the upper-layer protocol.
    struct IPDatagram {
        var version: Int
        var source: IPv6Address
        var destination: IPv6Address
        var upperLayer: UInt8
        var sourceV4: IPv4Address { IPv4Address(UInt32(truncatingIfNeeded: source.low)) }
        var destinationV4: IPv4Address { IPv4Address(UInt32(truncatingIfNeeded: destination.low)) }
    }

    /// Answers an echo request or a datagram to the echo port, given its upper-layer bytes.
    private mutating func answer(_ datagram: IPDatagram, upper: UnsafeRawBufferPointer, peer: MACAddress?, trusted: Bool, emit: Emit) {
        let icmp: UInt8 = datagram.version == 4 ? IPv4Packet.protocolICMP : IPv6Packet.protocolICMPv6
        if datagram.upperLayer == icmp {
            let request: UInt8 = datagram.version == 4 ? 8 : ICMPv6.echoRequest
            guard upper.count >= 8, upper[0] == request, upper[1] == 0 else { counters.ignored += 1; return }
            let valid = datagram.version == 4 ? internetChecksum(upper) == 0
                                              : ICMPv6.checksumIsValid(upper, source: datagram.source, destination: datagram.destination)
            guard trusted || valid else { counters.checksumErrors += 1; return }
            // The request's first 8 bytes with the type of a reply and the checksum zeroed:
            // identifier and sequence stay.
            let reply: UInt64 = datagram.version == 4 ? 0 : UInt64(ICMPv6.echoReply)
            let header = reply << 56 | UInt64(upper.be32(at: 4) ?? 0)
            if datagram.version == 4 { counters.icmpEchoReplies += 1 } else { counters.icmp6EchoReplies += 1 }
            send(Reply(version: datagram.version, source: replySource(datagram), destination: datagram.source, upperLayer: icmp,
                       upperHeader: header, payload: UnsafeRawBufferPointer(rebasing: upper[8...]), checksumOffset: 2), peer: peer, emit: emit)
            return
        }
        let udpProtocol: UInt8 = datagram.version == 4 ? IPv4Packet.protocolUDP : IPv6Packet.protocolUDP
        guard datagram.upperLayer == udpProtocol, let port = udpEchoPort,
              let udp = UDPDatagram.header(upper, in: 0..<upper.count), udp.destinationPort == port,
              !datagram.destination.isMulticast else { counters.ignored += 1; return }
        if !trusted {
            // Over IPv4 a zero checksum means none; over IPv6 the checksum is mandatory (RFC 8200 §8.1).
            if udp.checksum == 0 && datagram.version == 6 { counters.checksumErrors += 1; return }
            if udp.checksum != 0 {
                let pseudo = datagram.version == 4
                    ? IPv4Packet.pseudoHeaderSum(source: datagram.sourceV4, destination: datagram.destinationV4, protocolNumber: udpProtocol, length: udp.length)
                    : IPv6Packet.pseudoHeaderSum(source: datagram.source, destination: datagram.destination, length: udp.length, nextHeader: udpProtocol)
                guard UDPDatagram.checksumIsValid(upper, udp, pseudoHeader: pseudo) else { counters.checksumErrors += 1; return }
            }
        }
        // Ports swapped, the same length, the checksum zero until it is computed.
        let header = UInt64(port) << 48 | UInt64(udp.sourcePort) << 32 | UInt64(UInt16(truncatingIfNeeded: udp.length)) << 16
        if datagram.version == 4 { counters.udpEchoes += 1 } else { counters.udp6Echoes += 1 }
        send(Reply(version: datagram.version, source: replySource(datagram), destination: datagram.source, upperLayer: udpProtocol,
                   upperHeader: header, payload: UnsafeRawBufferPointer(rebasing: upper[8..<udp.length]), checksumOffset: 6), peer: peer, emit: emit)
    }

    /// The source of a reply: the address the request went to, or for a group ours toward the peer.
    private func replySource(_ datagram: IPDatagram) -> IPv6Address {
        datagram.version == 6 && datagram.destination.isMulticast ? sourceAddress(toward: datagram.source) : datagram.destination
    }
}

/// The IPv6 neighbour cache of RFC 4861 §7.3, without timers: an entry is INCOMPLETE (asked,
/// replies queued), STALE (learned from a solicitation: usable, to be confirmed) or REACHABLE
/// (confirmed by a solicited advertisement).
struct NeighborCache: Sendable {
    enum State: Sendable, Equatable { case incomplete, stale, probing, reachable }
    struct QueuedPacket: Sendable { var header: VirtioNetHeader; var packet: [UInt8] }
    struct Entry: Sendable {
        var state: State
        var link: MACAddress?
        var queue: [QueuedPacket] = []
        var solicitations = 0
        var age: UInt64
    }
    /// Frames queued per unresolved neighbour (a fragmented reply is up to 45), and
    /// solicitations before a resolution starts over.
    static let queueLimit = 64
    static let solicitationLimit = 3
    static let entryLimit = 64
    private(set) var entries: [IPv6Address: Entry] = [:]
    private var clock: UInt64 = 0

    subscript(_ address: IPv6Address) -> Entry? { entries[address] }

    /// Makes room for one more entry (the oldest goes).
    private mutating func makeRoom() {
        guard entries.count >= NeighborCache.entryLimit, let oldest = entries.min(by: { $0.value.age < $1.value.age })?.key else { return }
        entries[oldest] = nil
    }

    /// Records that `address` is at `link`, from a solicitation (unconfirmed) or otherwise.
    mutating func learn(_ address: IPv6Address, _ link: MACAddress, confirmed: Bool) {
        clock &+= 1
        if var entry = entries[address] {
            if entry.link != link || confirmed { entry.state = confirmed ? .reachable : .stale }
            entry.link = link
            entry.age = clock
            entries[address] = entry
            return
        }
        makeRoom()
        entries[address] = Entry(state: confirmed ? .reachable : .stale, link: link, age: clock)
    }

    /// An advertisement for `address`: the entry gets `link` and, solicited, becomes reachable.
    /// Returns the packets that waited for it.
    mutating func resolve(_ address: IPv6Address, _ link: MACAddress, solicited: Bool, override: Bool) -> [QueuedPacket] {
        guard var entry = entries[address] else { return [] }   // unsolicited news of a stranger is not cached (§7.2.5)
        let waiting = entry.queue
        if entry.state == .incomplete || override || entry.link == link {
            entry.link = link
            entry.state = solicited ? .reachable : .stale
        }
        entry.queue = []
        entry.solicitations = 0
        entries[address] = entry
        return entry.link == link ? waiting : []
    }

    /// What to do to send to `address`: its link-layer address, and whether to confirm it
    /// first (a STALE entry is used and probed once, §7.3.3).
    enum Lookup { case known(MACAddress, probe: Bool), unknown }

    mutating func lookup(_ address: IPv6Address) -> Lookup {
        guard var entry = entries[address], entry.state != .incomplete, let link = entry.link else { return .unknown }
        if entry.state == .stale {
            entry.state = .probing
            entries[address] = entry
            return .known(link, probe: true)
        }
        return .known(link, probe: false)
    }

    /// Queues a packet for an unresolved neighbour; true when a solicitation should go out.
    mutating func enqueue(_ packet: QueuedPacket, for address: IPv6Address) -> Bool {
        clock &+= 1
        var entry = entries[address] ?? { makeRoom(); return Entry(state: .incomplete, link: nil, age: clock) }()
        if entry.queue.count >= NeighborCache.queueLimit { entry.queue.removeFirst() }
        entry.queue.append(packet)
        if entry.solicitations >= NeighborCache.solicitationLimit {
            // Nobody answered: start over, as a new resolution would.
            entry.solicitations = 0
        }
        entry.solicitations += 1
        entries[address] = entry
        return true
    }
}
