/// ICMPv6 (RFC 4443) and neighbour discovery (RFC 4861): the messages, their checksum over the
/// IPv6 pseudo-header, and the validity rules a node applies before it believes one.
public enum ICMPv6 {
    /// Destination unreachable (1, RFC 4443 §3.1).
    public static let destinationUnreachable: UInt8 = 1
    /// Echo request (128, RFC 4443 §4.1).
    public static let echoRequest: UInt8 = 128
    /// Echo reply (129, RFC 4443 §4.2).
    public static let echoReply: UInt8 = 129
    /// Multicast listener query (130, RFC 2710).
    public static let multicastListenerQuery: UInt8 = 130
    /// Router solicitation (133, RFC 4861 §4.1).
    public static let routerSolicitation: UInt8 = 133
    /// Router advertisement (134, RFC 4861 §4.2).
    public static let routerAdvertisement: UInt8 = 134
    /// Neighbour solicitation (135, RFC 4861 §4.3).
    public static let neighborSolicitation: UInt8 = 135
    /// Neighbour advertisement (136, RFC 4861 §4.4).
    public static let neighborAdvertisement: UInt8 = 136

    /// ND option types (RFC 4861 §4.6): the source link-layer address option (1).
    public static let sourceLinkLayerOption: UInt8 = 1
    /// The target link-layer address option (2).
    public static let targetLinkLayerOption: UInt8 = 2

    /// Whether the message's checksum (over the pseudo-header and the message) is right.
    public static func checksumIsValid(_ message: UnsafeRawBufferPointer, source: IPv6Address, destination: IPv6Address) -> Bool {
        let pseudo = IPv6Packet.pseudoHeaderSum(source: source, destination: destination, length: message.count, nextHeader: IPv6Packet.protocolICMPv6)
        return internetChecksum(message, initial: pseudo) == 0
    }

    /// Computes the checksum of the message at `start..<writer.offset` (its checksum field, at
    /// `start + 2`, zero) and stores it.
    public static func storeChecksum(in writer: ByteWriter, messageStart start: Int, source: IPv6Address, destination: IPv6Address) {
        let message = writer.written(from: start)
        let pseudo = IPv6Packet.pseudoHeaderSum(source: source, destination: destination, length: message.count, nextHeader: IPv6Packet.protocolICMPv6)
        writer.put16(internetChecksum(message, initial: pseudo), at: start &+ 2)
    }

    /// Link-layer address options (source or target, RFC 4861 §4.6.1) in the options that
    /// start at `offset`; nil when an option is malformed (a length of 0, or one that runs
    /// past the message), which makes the whole message invalid (§7.1.1, §7.1.2).
    static func linkLayerOptions(_ message: UnsafeRawBufferPointer, from offset: Int) -> (source: MACAddress?, target: MACAddress?)? {
        var position = offset
        var source: MACAddress? = nil, target: MACAddress? = nil
        while position < message.count {
            guard let type = message.byte(at: position), let units = message.byte(at: position &+ 1), units > 0 else { return nil }
            let length = Int(units) &* 8
            guard let option = message.bytes(position..<(position &+ length)) else { return nil }
            if (type == sourceLinkLayerOption || type == targetLinkLayerOption), length == 8 {
                let mac = MACAddress(option[2..<8])
                if type == sourceLinkLayerOption { source = mac } else { target = mac }
            }
            position &+= length
        }
        return (source, target)
    }
}

/// A neighbour solicitation (RFC 4861 §4.3): who has `target`?
public struct NeighborSolicitation: Sendable, Equatable {
    /// The address asked about.
    public var target: IPv6Address
    /// The asker's link-layer address (absent in a duplicate-address-detection probe).
    public var sourceLinkLayer: MACAddress?

    /// A solicitation for `target`.
    public init(target: IPv6Address, sourceLinkLayer: MACAddress?) {
        self.target = target; self.sourceLinkLayer = sourceLinkLayer
    }

    /// Bytes of the message: 24, and 8 more with the source link-layer option.
    public var length: Int { sourceLinkLayer == nil ? 24 : 32 }

    /// Parses and validates a solicitation (RFC 4861 §7.1.1): hop limit 255, code 0, at least
    /// 24 bytes, a target that is not multicast, well-formed options, and from `::` only to a
    /// solicited-node group and without a source link-layer option. The checksum is the
    /// caller's to check (it may have been validated by the host already).
    public init?(_ message: UnsafeRawBufferPointer, ip: IPv6Packet) {
        guard ip.hopLimit == 255, message.byte(at: 0) == ICMPv6.neighborSolicitation, message.byte(at: 1) == 0, message.count >= 24,
              let target = IPv6Address(reading: message, at: 8), !target.isMulticast,
              let options = ICMPv6.linkLayerOptions(message, from: 24) else { return nil }
        if ip.source.isUnspecified {
            guard ip.destination.isSolicitedNodeMulticast, options.source == nil else { return nil }
        }
        self.target = target
        self.sourceLinkLayer = options.source
    }

    /// Writes the message (checksum field zero: see `ICMPv6.storeChecksum`).
    public func write(to writer: inout ByteWriter) {
        writer.u8(ICMPv6.neighborSolicitation); writer.u8(0); writer.be16(0)
        writer.be32(0)
        target.write(to: &writer)
        if let sourceLinkLayer {
            writer.u8(ICMPv6.sourceLinkLayerOption); writer.u8(1)
            for b in sourceLinkLayer.array { writer.u8(b) }
        }
    }
}

/// A neighbour advertisement (RFC 4861 §4.4): `target` is at `targetLinkLayer`.
public struct NeighborAdvertisement: Sendable, Equatable {
    /// The R flag: the sender is a router.
    public var router: Bool
    /// The S flag: an answer to a solicitation (never to a DAD probe).
    public var solicited: Bool
    /// The O flag: override a cached link-layer address.
    public var override: Bool
    /// The address advertised.
    public var target: IPv6Address
    /// Its link-layer address.
    public var targetLinkLayer: MACAddress?

    /// An advertisement with the given fields.
    public init(router: Bool = false, solicited: Bool, override: Bool, target: IPv6Address, targetLinkLayer: MACAddress?) {
        self.router = router; self.solicited = solicited; self.override = override
        self.target = target; self.targetLinkLayer = targetLinkLayer
    }

    /// Bytes of the message: 24, and 8 more with the target link-layer option.
    public var length: Int { targetLinkLayer == nil ? 24 : 32 }

    /// Parses and validates an advertisement (RFC 4861 §7.1.2): hop limit 255, code 0, at least
    /// 24 bytes, a target that is not multicast, well-formed options, and no S flag to a
    /// multicast destination. The checksum is the caller's to check.
    public init?(_ message: UnsafeRawBufferPointer, ip: IPv6Packet) {
        guard ip.hopLimit == 255, message.byte(at: 0) == ICMPv6.neighborAdvertisement, message.byte(at: 1) == 0, message.count >= 24,
              let flags = message.byte(at: 4), let target = IPv6Address(reading: message, at: 8), !target.isMulticast,
              let options = ICMPv6.linkLayerOptions(message, from: 24) else { return nil }
        let solicited = flags & 0x40 != 0
        if solicited && ip.destination.isMulticast { return nil }
        self.init(router: flags & 0x80 != 0, solicited: solicited, override: flags & 0x20 != 0, target: target, targetLinkLayer: options.target)
    }

    /// Writes the message (checksum field zero: see `ICMPv6.storeChecksum`).
    public func write(to writer: inout ByteWriter) {
        writer.u8(ICMPv6.neighborAdvertisement); writer.u8(0); writer.be16(0)
        writer.u8((router ? 0x80 : 0) | (solicited ? 0x40 : 0) | (override ? 0x20 : 0)); writer.u8(0); writer.be16(0)
        target.write(to: &writer)
        if let targetLinkLayer {
            writer.u8(ICMPv6.targetLinkLayerOption); writer.u8(1)
            for b in targetLinkLayer.array { writer.u8(b) }
        }
    }
}
