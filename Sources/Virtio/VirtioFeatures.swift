/// A set of virtio feature bits, as `VHOST_GET_FEATURES` and `VHOST_SET_FEATURES` carry them.
///
/// Bit numbers come from linux/virtio_config.h, linux/virtio_ring.h,
/// linux/virtio_net.h and linux/vhost.h. Bit 27 has two names: for virtio it is
/// `VIRTIO_F_ANY_LAYOUT`; to vhost-net it is `VHOST_NET_F_VIRTIO_NET_HDR`
/// (vhost adds the header and the tap has none).
public struct VirtioFeatures: OptionSet, Hashable, Sendable, CustomStringConvertible {
    /// The 64 feature bits.
    public var rawValue: UInt64
    /// Features from their bits.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// The feature with bit number `bit` (0...63).
    public init(bit: Int) { self.rawValue = 1 << UInt64(bit) }

    // virtio-net device features (virtio_net.h)
    /// `VIRTIO_NET_F_CSUM`: the device handles partial checksums (TX offload) (bit 0).
    public static let netCsum = Self(bit: 0)
    /// `VIRTIO_NET_F_GUEST_CSUM`: the driver handles partial checksums (RX) (bit 1).
    public static let netGuestCsum = Self(bit: 1)
    /// `VIRTIO_NET_F_CTRL_GUEST_OFFLOADS`: offloads can be changed on the control queue (bit 2).
    public static let netCtrlGuestOffloads = Self(bit: 2)
    /// `VIRTIO_NET_F_MTU`: the device reports a maximum MTU (bit 3).
    public static let netMTU = Self(bit: 3)
    /// `VIRTIO_NET_F_MAC`: the device has a MAC address (bit 5).
    public static let netMAC = Self(bit: 5)
    /// `VIRTIO_NET_F_GUEST_TSO4`: the driver takes TCPv4 GSO frames (bit 7).
    public static let netGuestTSO4 = Self(bit: 7)
    /// `VIRTIO_NET_F_GUEST_TSO6`: the driver takes TCPv6 GSO frames (bit 8).
    public static let netGuestTSO6 = Self(bit: 8)
    /// `VIRTIO_NET_F_GUEST_ECN`: the driver takes TSO frames with ECN (bit 9).
    public static let netGuestECN = Self(bit: 9)
    /// `VIRTIO_NET_F_GUEST_UFO`: the driver takes UFO frames (bit 10).
    public static let netGuestUFO = Self(bit: 10)
    /// `VIRTIO_NET_F_HOST_TSO4`: the device takes TCPv4 GSO frames (bit 11).
    public static let netHostTSO4 = Self(bit: 11)
    /// `VIRTIO_NET_F_HOST_TSO6`: the device takes TCPv6 GSO frames (bit 12).
    public static let netHostTSO6 = Self(bit: 12)
    /// `VIRTIO_NET_F_HOST_ECN`: the device takes TSO frames with ECN (bit 13).
    public static let netHostECN = Self(bit: 13)
    /// `VIRTIO_NET_F_HOST_UFO`: the device takes UFO frames (bit 14).
    public static let netHostUFO = Self(bit: 14)
    /// `VIRTIO_NET_F_MRG_RXBUF`: an RX frame may span several buffers (`num_buffers`) (bit 15).
    public static let netMergeableRxBuffers = Self(bit: 15)
    /// `VIRTIO_NET_F_STATUS`: the config space has a link status (bit 16).
    public static let netStatus = Self(bit: 16)
    /// `VIRTIO_NET_F_CTRL_VQ`: there is a control queue (bit 17).
    public static let netCtrlVQ = Self(bit: 17)
    /// `VIRTIO_NET_F_MQ`: several queue pairs (bit 22).
    public static let netMQ = Self(bit: 22)
    /// `VIRTIO_NET_F_GUEST_USO4`: the driver takes UDPv4 segmentation offload frames (bit 54).
    public static let netGuestUSO4 = Self(bit: 54)
    /// `VIRTIO_NET_F_GUEST_USO6`: the driver takes UDPv6 segmentation offload frames (bit 55).
    public static let netGuestUSO6 = Self(bit: 55)
    /// `VIRTIO_NET_F_HOST_USO`: the device takes UDP segmentation offload frames (bit 56).
    public static let netHostUSO = Self(bit: 56)

    // transport and ring features (virtio_config.h, virtio_ring.h, vhost.h)
    /// `VIRTIO_F_NOTIFY_ON_EMPTY`: the device interrupts when the avail ring runs empty, whatever the suppression (bit 24).
    public static let notifyOnEmpty = Self(bit: 24)
    /// `VHOST_F_LOG_ALL`: log every write to guest memory (needs SET_LOG_BASE first).
    public static let logAll = Self(bit: 26)
    /// `VIRTIO_F_ANY_LAYOUT`, which vhost-net reads as `VHOST_NET_F_VIRTIO_NET_HDR`.
    public static let anyLayout = Self(bit: 27)
    /// `VHOST_NET_F_VIRTIO_NET_HDR`: vhost-net adds and strips the virtio-net header (the tap has none); bit 27, as `anyLayout` (bit 27).
    public static let vhostNetVirtioNetHeader = Self(bit: 27)
    /// `VIRTIO_RING_F_INDIRECT_DESC`: descriptors may point at indirect tables (bit 28).
    public static let indirectDescriptors = Self(bit: 28)
    /// `VIRTIO_RING_F_EVENT_IDX`: used_event/avail_event instead of the flags (bit 29).
    public static let eventIndex = Self(bit: 29)
    /// `VIRTIO_F_VERSION_1`: virtio 1.x (little-endian, 12-byte net header) (bit 32).
    public static let version1 = Self(bit: 32)
    /// `VIRTIO_F_ACCESS_PLATFORM`: the device goes through the platform IOMMU (bit 33).
    public static let accessPlatform = Self(bit: 33)
    /// `VIRTIO_F_RING_PACKED`: packed rings (bit 34).
    public static let ringPacked = Self(bit: 34)
    /// `VIRTIO_F_IN_ORDER`: buffers are used in the order they were made available (bit 35).
    public static let inOrder = Self(bit: 35)
    /// `VIRTIO_F_ORDER_PLATFORM`: platform memory ordering for the rings (bit 36).
    public static let orderPlatform = Self(bit: 36)
    /// `VIRTIO_F_SR_IOV`: single-root I/O virtualisation (bit 37).
    public static let srIOV = Self(bit: 37)
    /// `VIRTIO_F_NOTIFICATION_DATA`: notifications carry ring positions (bit 38).
    public static let notificationData = Self(bit: 38)
    /// `VIRTIO_F_NOTIF_CONFIG_DATA`: notifications carry a device-provided value (bit 39).
    public static let notifConfigData = Self(bit: 39)
    /// `VIRTIO_F_RING_RESET`: single queues can be reset (bit 40).
    public static let ringReset = Self(bit: 40)
    /// `VIRTIO_F_ADMIN_VQ`: there is an admin queue (bit 41).
    public static let adminVQ = Self(bit: 41)

    /// The virtio-net offload features: checksum and segmentation offload each way. They are the
    /// VMM's device features, backed by the tap (QEMU derives `TUNSETOFFLOAD` from the GUEST_
    /// ones, and the tap takes NEEDS_CSUM and GSO headers for the HOST_ ones); vhost-net neither
    /// offers nor takes them (net.c `VHOST_NET_FEATURES`), so they are never sent to it.
    public static let deviceOffloads: VirtioFeatures = [
        .netCsum, .netGuestCsum, .netGuestTSO4, .netGuestTSO6, .netGuestECN, .netGuestUFO,
        .netHostTSO4, .netHostTSO6, .netHostECN, .netHostUFO, .netGuestUSO4, .netGuestUSO6, .netHostUSO,
    ]

    /// Names of the known bits, by bit number. Bit 27 is named for both meanings.
    public static let names: [Int: String] = [
        0: "NET_F_CSUM", 1: "NET_F_GUEST_CSUM", 2: "NET_F_CTRL_GUEST_OFFLOADS", 3: "NET_F_MTU",
        5: "NET_F_MAC", 7: "NET_F_GUEST_TSO4", 8: "NET_F_GUEST_TSO6", 9: "NET_F_GUEST_ECN",
        10: "NET_F_GUEST_UFO", 11: "NET_F_HOST_TSO4", 12: "NET_F_HOST_TSO6", 13: "NET_F_HOST_ECN",
        14: "NET_F_HOST_UFO", 15: "NET_F_MRG_RXBUF", 16: "NET_F_STATUS", 17: "NET_F_CTRL_VQ",
        22: "NET_F_MQ", 24: "F_NOTIFY_ON_EMPTY", 26: "VHOST_F_LOG_ALL",
        27: "F_ANY_LAYOUT/VHOST_NET_F_VIRTIO_NET_HDR", 28: "F_INDIRECT_DESC", 29: "F_EVENT_IDX",
        32: "F_VERSION_1", 33: "F_ACCESS_PLATFORM", 34: "F_RING_PACKED", 35: "F_IN_ORDER",
        36: "F_ORDER_PLATFORM", 37: "F_SR_IOV", 38: "F_NOTIFICATION_DATA", 39: "F_NOTIF_CONFIG_DATA",
        40: "F_RING_RESET", 41: "F_ADMIN_VQ", 54: "NET_F_GUEST_USO4", 55: "NET_F_GUEST_USO6",
        56: "NET_F_HOST_USO",
    ]

    /// The set bits, lowest first.
    public var bits: [Int] { (0..<64).filter { rawValue & (1 << UInt64($0)) != 0 } }

    /// Each set bit by name; unknown bits as `bit N`.
    public var featureNames: [String] { bits.map { Self.names[$0] ?? "bit \($0)" } }

    /// The hex value and the names, e.g. `0x20000000 [F_EVENT_IDX]`.
    public var description: String {
        "0x\(String(rawValue, radix: 16)) [\(featureNames.joined(separator: ", "))]"
    }

    /// Parses a name as printed by `featureNames` (with or without the `VIRTIO_` prefix,
    /// case-insensitive), or a bit number.
    public static func parse(_ text: String) -> VirtioFeatures? {
        if let bit = Int(text), (0..<64).contains(bit) { return Self(bit: bit) }
        return bitsBySpelling[featureSpellingKey(text)].map { Self(bit: $0) }
    }

    /// Every spelling `parse` takes, to its bit (see `featureSpellings`). Built once, so that a
    /// name is one lookup: a script line of 200,000 feature names took seconds when each name
    /// walked the table and split every entry.
    static let bitsBySpelling = featureSpellings(names)

    /// The length of the virtio-net header these features imply
    /// (vhost/net.c vhost_net_set_features: 12 with MRG_RXBUF or VERSION_1, else 10).
    public var netHeaderLength: Int {
        isDisjoint(with: [.netMergeableRxBuffers, .version1]) ? 10 : 12
    }

    /// The virtio-net header length these features and `high` (bits above 63) imply together:
    /// 24 with UDP-tunnel GSO, else `netHeaderLength`. The one rule: `VhostNetSession` stores
    /// what it gives for the negotiated features, and a configuration plans memory with it.
    public func netHeaderLength(with high: HighFeatures) -> Int {
        high.netHeaderLength ?? netHeaderLength
    }
}

/// Backend features (`VHOST_GET/SET_BACKEND_FEATURES`), linux/vhost_types.h.
public struct VhostBackendFeatures: OptionSet, Hashable, Sendable, CustomStringConvertible {
    /// The 64 backend feature bits.
    public var rawValue: UInt64
    /// Backend features from their bits.
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `VHOST_BACKEND_F_IOTLB_MSG_V2`: IOTLB messages in the v2 format (bit 1).
    public static let iotlbMessageV2 = Self(rawValue: 1 << 1)
    /// `VHOST_BACKEND_F_IOTLB_BATCH`: IOTLB updates in batches (bit 2).
    public static let iotlbBatch = Self(rawValue: 1 << 2)
    /// `VHOST_BACKEND_F_IOTLB_ASID`: IOTLB messages carry an address space id (bit 3).
    public static let iotlbASID = Self(rawValue: 1 << 3)
    /// `VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK`: rings may be enabled after DRIVER_OK (bit 6).
    public static let enableAfterDriverOK = Self(rawValue: 1 << 6)
    /// `VHOST_BACKEND_F_RESUME`: a suspended device can resume (bit 5).
    public static let resumeWithoutReset = Self(rawValue: 1 << 5)
    /// `VHOST_BACKEND_F_SUSPEND`: the device can be suspended (bit 4).
    public static let suspend = Self(rawValue: 1 << 4)
    /// `VHOST_BACKEND_F_DESC_ASID`: descriptors may live in their own address space (bit 7).
    public static let descriptorASID = Self(rawValue: 1 << 7)
    /// `VHOST_BACKEND_F_FORK_OWNER`: the owner may be inherited across fork (bit 8).
    public static let forkOwner = Self(rawValue: 1 << 8)

    /// Names of the known bits, by bit number.
    public static let names: [Int: String] = [
        1: "IOTLB_MSG_V2", 2: "IOTLB_BATCH", 3: "IOTLB_ASID", 4: "SUSPEND", 5: "RESUME",
        6: "ENABLE_AFTER_DRIVER_OK", 7: "DESC_ASID", 8: "FORK_OWNER",
    ]

    /// Each set bit by name; unknown bits as `bit N`.
    public var featureNames: [String] {
        (0..<64).filter { rawValue & (1 << UInt64($0)) != 0 }.map { Self.names[$0] ?? "bit \($0)" }
    }

    /// The hex value and the names.
    public var description: String {
        "0x\(String(rawValue, radix: 16)) [\(featureNames.joined(separator: ", "))]"
    }
}

/// Feature bits 64 to 127 (the second word of `VHOST_GET_FEATURES_ARRAY`, Linux 6.17): bit `b`
/// of `rawValue` is feature `64 + b`. The 64-bit `VHOST_GET_FEATURES` never shows them.
public struct HighFeatures: OptionSet, Hashable, Sendable, CustomStringConvertible {
    /// Bits 64...127, shifted down by 64.
    public var rawValue: UInt64
    /// Features from the second word.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// The feature numbered `bit` (64...127).
    public init(bit: Int) { rawValue = 1 << UInt64(bit - 64) }

    /// `VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO` (65): the driver takes UDP-tunnel GSO frames on RX.
    public static let netGuestUDPTunnelGSO = Self(bit: 65)
    /// `VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO_CSUM` (66; vhost-net does not offer it in 7.2).
    public static let netGuestUDPTunnelGSOChecksum = Self(bit: 66)
    /// `VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO` (67): the device takes UDP-tunnel GSO frames on TX.
    public static let netHostUDPTunnelGSO = Self(bit: 67)
    /// `VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO_CSUM` (68; vhost-net does not offer it in 7.2).
    public static let netHostUDPTunnelGSOChecksum = Self(bit: 68)

    /// Names by feature number (linux/virtio_net.h, 6.17).
    public static let names: [Int: String] = [
        65: "NET_F_GUEST_UDP_TUNNEL_GSO", 66: "NET_F_GUEST_UDP_TUNNEL_GSO_CSUM",
        67: "NET_F_HOST_UDP_TUNNEL_GSO", 68: "NET_F_HOST_UDP_TUNNEL_GSO_CSUM",
    ]

    /// The set features' numbers (64...127), lowest first.
    public var bits: [Int] { (0..<64).filter { rawValue & (1 << UInt64($0)) != 0 }.map { $0 + 64 } }
    /// Each set feature by name; unknown ones as `bit N`.
    public var featureNames: [String] { bits.map { Self.names[$0] ?? "bit \($0)" } }
    public var description: String { "0x\(String(rawValue, radix: 16)) [\(featureNames.joined(separator: ", "))]" }

    /// Parses a name as `featureNames` prints it (with or without `VIRTIO_`), or a number 64...127.
    public static func parse(_ text: String) -> HighFeatures? {
        if let bit = Int(text), (64..<128).contains(bit) { return Self(bit: bit) }
        return bitsBySpelling[featureSpellingKey(text)].map { Self(bit: $0) }
    }

    /// Every spelling `parse` takes, to its feature number (see `featureSpellings`).
    static let bitsBySpelling = featureSpellings(names)

    /// With either UDP-tunnel GSO feature the header is `virtio_net_hdr_v1_hash_tunnel`, 24 bytes
    /// both ways (net.c vhost_net_set_features, 6.17); nil otherwise.
    public var netHeaderLength: Int? {
        isDisjoint(with: [.netGuestUDPTunnelGSO, .netHostUDPTunnelGSO]) ? nil : VirtioNetHeader.tunnelLength
    }
}

/// The key a feature name is looked up by: upper case, without a leading `VIRTIO_`.
func featureSpellingKey(_ text: String) -> String {
    let key = text.uppercased()
    return key.hasPrefix("VIRTIO_") ? String(key.dropFirst("VIRTIO_".count)) : key
}

/// The prefixes a feature name may be written without (`EVENT_IDX` for `F_EVENT_IDX`, `MRG_RXBUF`
/// for `NET_F_MRG_RXBUF`, `F_LOG_ALL` for `VHOST_F_LOG_ALL`): what `VirtioFeatures.parse` and
/// `HighFeatures.parse` accept, and what the script parser's suggestions drop.
public let featureNamePrefixes = ["F_", "NET_F_", "VHOST_"]

/// The spellings of `names` that `parse` takes, to their bits: each alias of a name (`A/B` names
/// one bit twice) as printed, and without its prefix (`featureNamePrefixes`). Where two bits would
/// share a spelling, the lower bit keeps it.
func featureSpellings(_ names: [Int: String]) -> [String: Int] {
    var bits: [String: Int] = [:]
    for (bit, name) in names.sorted(by: { $0.key > $1.key }) {
        for alias in name.split(separator: "/").map(String.init) {
            bits[alias] = bit
            for prefix in featureNamePrefixes where alias.hasPrefix(prefix) {
                bits[String(alias.dropFirst(prefix.count))] = bit
            }
        }
    }
    return bits
}
