import NetFormats
import Virtio

/// How the responder's replies leave: as one frame, as fragments, or as one USO superframe;
/// with the checksum computed or left to the host; to a neighbour that is known, or queued
/// until it is resolved.
extension NetworkResponder {
    /// A reply datagram: an 8-byte upper-layer header (ICMP echo or UDP, checksum zero) and a
    /// payload that is the request's own (read from where the request lies, never copied first).
    struct Reply {
        var version: Int
        var source: IPv6Address
        var destination: IPv6Address
        var upperLayer: UInt8
        /// The 8 header bytes, big-endian, checksum field zero.
        var upperHeader: UInt64
        var payload: UnsafeRawBufferPointer
        /// Where the checksum goes in the upper-layer header (2 for ICMP, 6 for UDP).
        var checksumOffset: Int

        var upperLength: Int { 8 &+ payload.count }
        var ipHeaderLength: Int { version == 4 ? IPv4Packet.minimumHeaderLength : IPv6Packet.headerLength }
        var isUDP: Bool { checksumOffset == 6 }
        var sourceV4: IPv4Address { IPv4Address(UInt32(truncatingIfNeeded: source.low)) }
        var destinationV4: IPv4Address { IPv4Address(UInt32(truncatingIfNeeded: destination.low)) }

        /// The pseudo-header sum (none for ICMPv4).
        var pseudoHeader: UInt64 {
            if version == 6 { return IPv6Packet.pseudoHeaderSum(source: source, destination: destination, length: upperLength, nextHeader: upperLayer) }
            return isUDP ? IPv4Packet.pseudoHeaderSum(source: sourceV4, destination: destinationV4, protocolNumber: upperLayer, length: upperLength) : 0
        }

        /// The whole checksum, computed here.
        var fullChecksum: UInt16 {
            let h = upperHeader
            var sum = pseudoHeader &+ (h >> 48) &+ (h >> 32 & 0xffff) &+ (h >> 16 & 0xffff) &+ (h & 0xffff)
            sum = onesComplementSum(payload, initial: sum)
            let checksum = ~foldChecksum(sum)
            // UDP sends a computed 0 as all ones (0 means none).
            return isUDP && checksum == 0 ? 0xffff : checksum
        }

        /// What the checksum field holds when the host completes it (NEEDS_CSUM): the
        /// pseudo-header sum, folded, not complemented.
        var partialChecksum: UInt16 { foldChecksum(pseudoHeader) }

        /// Writes bytes `range` of the upper-layer datagram, with `checksum` in its field.
        func writeUpper(_ writer: inout ByteWriter, range: Range<Int>, checksum: UInt16) {
            var i = range.lowerBound
            while i < min(range.upperBound, 8) {
                var byte = UInt8(truncatingIfNeeded: upperHeader >> (56 &- 8 &* UInt64(i)))
                if i == checksumOffset { byte = UInt8(checksum >> 8) } else if i == checksumOffset &+ 1 { byte = UInt8(checksum & 0xff) }
                writer.u8(byte)
                i &+= 1
            }
            if range.upperBound > 8 {
                writer.bytes(UnsafeRawBufferPointer(rebasing: payload[(max(range.lowerBound, 8) &- 8)..<(range.upperBound &- 8)]))
            }
        }
    }

    /// One frame's IP packet: the whole datagram, a USO superframe, or one fragment.
    enum Part {
        case whole(checksum: UInt16, identification: UInt32)
        case fragment(Range<Int>, identification: UInt32, checksum: UInt16)
    }

    /// Sends a reply to `peer` (the request's link-layer source): one frame when it fits the
    /// MTU, one UDP_L4 superframe when USO was negotiated and the frame fits the transmit path,
    /// otherwise fragments with the checksum computed here.
    mutating func send(_ reply: Reply, peer: MACAddress?, emit: Emit) {
        let l2 = linkLayer.headerLength
        let packetLength = reply.ipHeaderLength &+ reply.upperLength
        // The largest IPv4 packet is 65535 bytes; an IPv6 payload is at most 65535 too.
        guard reply.upperLength <= 65535 &- (reply.version == 4 ? IPv4Packet.minimumHeaderLength : 0) else { counters.ignored += 1; return }
        var frames: [(length: Int, header: VirtioNetHeader, part: Part)] = []
        let identification: UInt32
        if reply.version == 4 {
            identification = UInt32(nextIPv4Identification)
            nextIPv4Identification &+= 1
        } else {
            identification = nextIPv6Identification
        }
        let checksumStart = UInt16(truncatingIfNeeded: l2 &+ reply.ipHeaderLength)
        if packetLength <= mtu {
            if reply.isUDP && offloads.checksum {
                frames.append((packetLength, VirtioNetHeader(flags: .needsChecksum, checksumStart: checksumStart, checksumOffset: 6), .whole(checksum: reply.partialChecksum, identification: identification)))
            } else {
                frames.append((packetLength, VirtioNetHeader(), .whole(checksum: reply.fullChecksum, identification: identification)))
            }
        } else if reply.isUDP && offloads.udpSegmentation && offloads.checksum && l2 &+ packetLength <= offloads.largestFrame {
            // One superframe: the host cuts it into datagrams of gso_size payload bytes, each
            // with its own UDP header and checksum (the pseudo-header sum over the full length,
            // adjusted per segment by __udp_gso_segment).
            let segment = UInt16(truncatingIfNeeded: mtu &- reply.ipHeaderLength &- 8)
            let header = VirtioNetHeader(flags: .needsChecksum, gsoType: VirtioNetHeader.GSOType.udpL4.rawValue,
                                         headerLength: checksumStart &+ 8, gsoSize: segment, checksumStart: checksumStart, checksumOffset: 6)
            frames.append((packetLength, header, .whole(checksum: reply.partialChecksum, identification: identification)))
            counters.segmentationOffloads += 1
        } else {
            let checksum = reply.fullChecksum
            let room = mtu &- reply.ipHeaderLength &- (reply.version == 6 ? 8 : 0)
            for range in Fragmentation.ranges(length: reply.upperLength, maximum: room) {
                let length = reply.ipHeaderLength &+ (reply.version == 6 ? 8 : 0) &+ range.count
                frames.append((length, VirtioNetHeader(), .fragment(range, identification: identification, checksum: checksum)))
            }
            if reply.version == 6 { nextIPv6Identification &+= 1 }
            counters.fragmentsSent &+= UInt64(frames.count)
        }
        // Where the frames go on the link.
        var destinationMAC: MACAddress? = nil
        var probe = false
        if linkLayer == .ethernet {
            if reply.version == 4 {
                guard let peer else { counters.ignored += 1; return }
                destinationMAC = peer
            } else if reply.destination.isMulticast {
                destinationMAC = reply.destination.multicastMAC
            } else {
                switch neighbors.lookup(reply.destination) {
                case .known(let link, let confirm): destinationMAC = link; probe = confirm
                case .unknown:
                    // Resolve first (RFC 4861 §7.2.2): the frames wait, a solicitation goes to
                    // the neighbour's solicited-node group.
                    var solicit = false
                    for frame in frames {
                        let packet = [UInt8](writing: frame.length) { writer in writeIP(reply, frame.part, &writer) }
                        // The header's csum_start and hdr_len already count the Ethernet header.
                        solicit = neighbors.enqueue(NeighborCache.QueuedPacket(header: frame.header, packet: packet), for: reply.destination) || solicit
                    }
                    if solicit {
                        let group = reply.destination.solicitedNodeMulticast
                        sendSolicitation(for: reply.destination, from: reply.source, to: group, mac: group.multicastMAC, emit: emit)
                    }
                    return
                }
            }
        }
        let type = reply.version == 4 ? EthernetFrame.ipv4Type : EthernetFrame.ipv6Type
        for frame in frames {
            emit(l2 &+ frame.length, frame.header) { buffer in
                var writer = ByteWriter(buffer)
                if let destinationMAC { writeEthernet(&writer, to: destinationMAC, type: type) }
                writeIP(reply, frame.part, &writer)
            }
        }
        if probe, let destinationMAC {
            // A STALE neighbour is used at once and confirmed with a unicast solicitation (§7.3.3).
            sendSolicitation(for: reply.destination, from: reply.source, to: reply.destination, mac: destinationMAC, emit: emit)
        }
    }

    /// Writes one frame's IP packet of `reply`.
    func writeIP(_ reply: Reply, _ part: Part, _ writer: inout ByteWriter) {
        switch part {
        case .whole(let checksum, let identification):
            if reply.version == 4 {
                IPv4Packet.writeHeader(to: &writer, totalLength: reply.ipHeaderLength &+ reply.upperLength, identification: UInt16(truncatingIfNeeded: identification),
                                       protocolNumber: reply.upperLayer, source: reply.sourceV4, destination: reply.destinationV4)
            } else {
                IPv6Packet.writeHeader(to: &writer, payloadLength: reply.upperLength, nextHeader: reply.upperLayer, hopLimit: 64,
                                       source: reply.source, destination: reply.destination)
            }
            reply.writeUpper(&writer, range: 0..<reply.upperLength, checksum: checksum)
        case .fragment(let range, let identification, let checksum):
            let more = range.upperBound < reply.upperLength
            if reply.version == 4 {
                IPv4Packet.writeHeader(to: &writer, totalLength: reply.ipHeaderLength &+ range.count, identification: UInt16(truncatingIfNeeded: identification),
                                       protocolNumber: reply.upperLayer, source: reply.sourceV4, destination: reply.destinationV4,
                                       fragmentOffset: range.lowerBound, moreFragments: more)
            } else {
                IPv6Packet.writeHeader(to: &writer, payloadLength: 8 &+ range.count, nextHeader: IPv6Packet.fragmentHeader, hopLimit: 64,
                                       source: reply.source, destination: reply.destination)
                writer.u8(reply.upperLayer); writer.u8(0)
                writer.be16(UInt16(truncatingIfNeeded: range.lowerBound) | (more ? 1 : 0))
                writer.be32(identification)
            }
            reply.writeUpper(&writer, range: range, checksum: checksum)
        }
    }

    /// The frames the responder answers `frame` with, each with its virtio-net header: for
    /// tests and tools that want arrays (the endpoint writes replies straight into its buffers).
    public mutating func replies(to frame: [UInt8], header: VirtioNetHeader = VirtioNetHeader()) -> [(header: VirtioNetHeader, frame: [UInt8])] {
        var out: [(header: VirtioNetHeader, frame: [UInt8])] = []
        frame.withUnsafeBytes { bytes in
            respond(to: bytes, header: header) { length, header, write in
                var buffer = [UInt8](repeating: 0, count: length)
                buffer.withUnsafeMutableBytes { write($0) }
                out.append((header, buffer))
            }
        }
        return out
    }

    /// The first frame the responder answers `frame` with, or nil.
    public mutating func respond(to frame: [UInt8], header: VirtioNetHeader = VirtioNetHeader()) -> [UInt8]? {
        replies(to: frame, header: header).first?.frame
    }

    /// The frames `start` sends (DAD probes), as arrays.
    public mutating func startFrames() -> [[UInt8]] {
        var out: [[UInt8]] = []
        start { length, _, write in
            var buffer = [UInt8](repeating: 0, count: length)
            buffer.withUnsafeMutableBytes { write($0) }
            out.append(buffer)
        }
        return out
    }
}
