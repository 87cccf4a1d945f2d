/// `struct virtio_net_hdr` (10 bytes), `virtio_net_hdr_mrg_rxbuf` (12 bytes, with `num_buffers`)
/// and `virtio_net_hdr_v1_hash_tunnel` (24 bytes, with the UDP tunnel offsets; Linux 6.17),
/// little-endian (linux/virtio_net.h). Which length is on the wire follows the negotiated
/// features: see `VirtioFeatures.netHeaderLength` and `HighFeatures.netHeaderLength`.
public struct VirtioNetHeader: Equatable, Sendable {
    /// `virtio_net_hdr.flags`.
    public struct Flags: OptionSet, Sendable, Hashable {
        /// The bits.
        public var rawValue: UInt8
        /// Flags from their bits.
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from csum_start, stored at csum_start+csum_offset.
        public static let needsChecksum = Self(rawValue: 1)
        /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already validated.
        public static let dataValid = Self(rawValue: 2)
        /// `VIRTIO_NET_HDR_F_RSC_INFO`
        public static let rscInfo = Self(rawValue: 4)
        /// `VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM` (6.17): the outer UDP checksum is to be computed too.
        public static let udpTunnelChecksum = Self(rawValue: 8)
    }

    /// `VIRTIO_NET_HDR_GSO_*`: none, TCPv4, UFO, TCPv6, UDP L4 (USO).
    public enum GSOType: UInt8, Sendable {
        case none = 0, tcpV4 = 1, udp = 3, tcpV6 = 4, udpL4 = 5
    }
    /// `VIRTIO_NET_HDR_GSO_ECN`, or'ed into gso_type.
    public static let gsoECN: UInt8 = 0x80
    /// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4` / `_IPV6` (6.17), or'ed into gso_type with the inner type.
    public static let gsoUDPTunnelIPv4: UInt8 = 0x20
    public static let gsoUDPTunnelIPv6: UInt8 = 0x40

    /// `flags`.
    public var flags: Flags = []
    /// `gso_type`: a `GSOType` raw value, possibly or'ed with `gsoECN`.
    public var gsoType: UInt8 = 0
    /// `hdr_len`: bytes of headers before the payload (a hint for GSO).
    public var headerLength: UInt16 = 0
    /// `gso_size`: payload bytes per segment.
    public var gsoSize: UInt16 = 0
    /// `csum_start`: where checksumming starts.
    public var checksumStart: UInt16 = 0
    /// `csum_offset`: where, after `checksumStart`, the checksum goes.
    public var checksumOffset: UInt16 = 0
    /// From the 12-byte header on: how many RX buffers this frame spans (MRG_RXBUF).
    public var numBuffers: UInt16 = 0
    /// Only on the 24-byte header: the outer transport (UDP) header's offset and the inner network
    /// header's offset, for UDP tunnel GSO (`outer_th_offset`, `inner_nh_offset`). The hash
    /// fields between them are left zero.
    public var outerTransportOffset: UInt16 = 0
    public var innerNetworkOffset: UInt16 = 0

    /// A header with the given fields.
    public init(flags: Flags = [], gsoType: UInt8 = 0, headerLength: UInt16 = 0, gsoSize: UInt16 = 0,
                checksumStart: UInt16 = 0, checksumOffset: UInt16 = 0, numBuffers: UInt16 = 0) {
        self.flags = flags; self.gsoType = gsoType; self.headerLength = headerLength; self.gsoSize = gsoSize
        self.checksumStart = checksumStart; self.checksumOffset = checksumOffset; self.numBuffers = numBuffers
    }

    /// Bytes of `struct virtio_net_hdr`.
    public static let baseLength = 10
    /// Bytes of `struct virtio_net_hdr_mrg_rxbuf` (with `num_buffers` at byte 10).
    public static let mergeableLength = 12
    /// Bytes of `struct virtio_net_hdr_v1_hash_tunnel` (hash fields at 12, tunnel offsets at 20 and 22).
    public static let tunnelLength = 24

    /// Whether `length` is a header length the wire knows.
    @inlinable
    public static func isValidLength(_ length: Int) -> Bool { length == baseLength || length == mergeableLength || length == tunnelLength }

    /// Writes the header in `length` (10, 12 or 24) bytes at `pointer`. Inlinable: every TX
    /// frame writes one.
    @inlinable
    public func write(to pointer: UnsafeMutableRawPointer, length: Int) {
        precondition(VirtioNetHeader.isValidLength(length), "virtio-net header is 10, 12 or 24 bytes")
        // SAFETY: the caller gives `length` writable bytes (a buffer the driver owns until it
        // publishes the chain, or one the device owns until it pushes it); unaligned stores.
        pointer.storeBytes(of: flags.rawValue, as: UInt8.self)
        pointer.storeBytes(of: gsoType, toByteOffset: 1, as: UInt8.self)
        pointer.storeBytes(of: headerLength.littleEndian, toByteOffset: 2, as: UInt16.self)
        pointer.storeBytes(of: gsoSize.littleEndian, toByteOffset: 4, as: UInt16.self)
        pointer.storeBytes(of: checksumStart.littleEndian, toByteOffset: 6, as: UInt16.self)
        pointer.storeBytes(of: checksumOffset.littleEndian, toByteOffset: 8, as: UInt16.self)
        if length >= 12 { pointer.storeBytes(of: numBuffers.littleEndian, toByteOffset: 10, as: UInt16.self) }
        if length == 24 {
            (pointer + 12).initializeMemory(as: UInt8.self, repeating: 0, count: 8)
            pointer.storeBytes(of: outerTransportOffset.littleEndian, toByteOffset: 20, as: UInt16.self)
            pointer.storeBytes(of: innerNetworkOffset.littleEndian, toByteOffset: 22, as: UInt16.self)
        }
    }

    /// Reads a header of `length` (10, 12 or 24) bytes at `pointer`. Inlinable: every RX frame
    /// reads one (it was 9% of the driver's RX samples under perf as a call across modules).
    @inlinable
    public init(reading pointer: UnsafeRawPointer, length: Int) {
        precondition(VirtioNetHeader.isValidLength(length), "virtio-net header is 10, 12 or 24 bytes")
        // SAFETY: the caller gives `length` readable bytes it owns (a used buffer the driver has
        // reaped after used->idx's acquire load); unaligned loads.
        flags = Flags(rawValue: pointer.load(as: UInt8.self))
        gsoType = pointer.load(fromByteOffset: 1, as: UInt8.self)
        headerLength = UInt16(littleEndian: pointer.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        gsoSize = UInt16(littleEndian: pointer.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        checksumStart = UInt16(littleEndian: pointer.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        checksumOffset = UInt16(littleEndian: pointer.loadUnaligned(fromByteOffset: 8, as: UInt16.self))
        numBuffers = length >= 12 ? UInt16(littleEndian: pointer.loadUnaligned(fromByteOffset: 10, as: UInt16.self)) : 0
        if length == 24 {
            outerTransportOffset = UInt16(littleEndian: pointer.loadUnaligned(fromByteOffset: 20, as: UInt16.self))
            innerNetworkOffset = UInt16(littleEndian: pointer.loadUnaligned(fromByteOffset: 22, as: UInt16.self))
        }
    }

    /// The header as `length` (10, 12 or 24) bytes.
    public func bytes(length: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            write(to: UnsafeMutableRawPointer(buffer.baseAddress!), length: length)
            count = length
        }
    }

    /// Parses a header from 10, 12 or 24 bytes.
    public init(bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { VirtioNetHeader(reading: $0.baseAddress!, length: bytes.count) }
    }
}
