/// A set of virtio feature bits, as `VHOST_GET_FEATURES` and `VHOST_SET_FEATURES` carry them.
///
/// Bit numbers come from linux/virtio_config.h, linux/virtio_ring.h,
/// linux/virtio_net.h and linux/vhost.h. Bit 27 has two names: for virtio it is
/// `VIRTIO_F_ANY_LAYOUT`; to vhost-net it is `VHOST_NET_F_VIRTIO_NET_HDR`
/// (vhost adds the header and the tap has none).
public struct VirtioFeatures: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(bit: Int) { self.rawValue = 1 << UInt64(bit) }

    // virtio-net device features (virtio_net.h)
    public static let netCsum = Self(bit: 0)
    public static let netGuestCsum = Self(bit: 1)
    public static let netCtrlGuestOffloads = Self(bit: 2)
    public static let netMTU = Self(bit: 3)
    public static let netMAC = Self(bit: 5)
    public static let netGuestTSO4 = Self(bit: 7)
    public static let netGuestTSO6 = Self(bit: 8)
    public static let netGuestECN = Self(bit: 9)
    public static let netGuestUFO = Self(bit: 10)
    public static let netHostTSO4 = Self(bit: 11)
    public static let netHostTSO6 = Self(bit: 12)
    public static let netHostECN = Self(bit: 13)
    public static let netHostUFO = Self(bit: 14)
    public static let netMergeableRxBuffers = Self(bit: 15)
    public static let netStatus = Self(bit: 16)
    public static let netCtrlVQ = Self(bit: 17)
    public static let netMQ = Self(bit: 22)
    public static let netGuestUSO4 = Self(bit: 54)
    public static let netGuestUSO6 = Self(bit: 55)
    public static let netHostUSO = Self(bit: 56)

    // transport and ring features (virtio_config.h, virtio_ring.h, vhost.h)
    public static let notifyOnEmpty = Self(bit: 24)
    /// `VHOST_F_LOG_ALL`: log every write to guest memory (needs SET_LOG_BASE first).
    public static let logAll = Self(bit: 26)
    /// `VIRTIO_F_ANY_LAYOUT`, which vhost-net reads as `VHOST_NET_F_VIRTIO_NET_HDR`.
    public static let anyLayout = Self(bit: 27)
    public static let vhostNetVirtioNetHeader = Self(bit: 27)
    public static let indirectDescriptors = Self(bit: 28)
    public static let eventIndex = Self(bit: 29)
    public static let version1 = Self(bit: 32)
    public static let accessPlatform = Self(bit: 33)
    public static let ringPacked = Self(bit: 34)
    public static let inOrder = Self(bit: 35)
    public static let orderPlatform = Self(bit: 36)
    public static let srIOV = Self(bit: 37)
    public static let notificationData = Self(bit: 38)
    public static let notifConfigData = Self(bit: 39)
    public static let ringReset = Self(bit: 40)
    public static let adminVQ = Self(bit: 41)

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

    public var description: String {
        "0x\(String(rawValue, radix: 16)) [\(featureNames.joined(separator: ", "))]"
    }

    /// Parses a name as printed by `featureNames` (with or without the `VIRTIO_` prefix,
    /// case-insensitive), or a bit number.
    public static func parse(_ text: String) -> VirtioFeatures? {
        if let bit = Int(text), (0..<64).contains(bit) { return Self(bit: bit) }
        var key = text.uppercased()
        if key.hasPrefix("VIRTIO_") { key.removeFirst("VIRTIO_".count) }
        for (bit, name) in names {
            let aliases = name.split(separator: "/").map(String.init)
            if aliases.contains(key) || aliases.contains("F_" + key) || aliases.contains("NET_F_" + key)
                || aliases.contains("VHOST_" + key) {
                return Self(bit: bit)
            }
        }
        return nil
    }

    /// The length of the virtio-net header these features imply
    /// (vhost/net.c vhost_net_set_features: 12 with MRG_RXBUF or VERSION_1, else 10).
    public var netHeaderLength: Int {
        isDisjoint(with: [.netMergeableRxBuffers, .version1]) ? 10 : 12
    }
}

/// Backend features (`VHOST_GET/SET_BACKEND_FEATURES`), linux/vhost_types.h.
public struct VhostBackendFeatures: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let iotlbMessageV2 = Self(rawValue: 1 << 1)
    public static let iotlbBatch = Self(rawValue: 1 << 2)
    public static let iotlbASID = Self(rawValue: 1 << 3)
    public static let enableAfterDriverOK = Self(rawValue: 1 << 6)
    public static let resumeWithoutReset = Self(rawValue: 1 << 5)
    public static let suspend = Self(rawValue: 1 << 4)
    public static let descriptorASID = Self(rawValue: 1 << 7)
    public static let forkOwner = Self(rawValue: 1 << 8)

    public static let names: [Int: String] = [
        1: "IOTLB_MSG_V2", 2: "IOTLB_BATCH", 3: "IOTLB_ASID", 4: "SUSPEND", 5: "RESUME",
        6: "ENABLE_AFTER_DRIVER_OK", 7: "DESC_ASID", 8: "FORK_OWNER",
    ]

    public var featureNames: [String] {
        (0..<64).filter { rawValue & (1 << UInt64($0)) != 0 }.map { Self.names[$0] ?? "bit \($0)" }
    }

    public var description: String {
        "0x\(String(rawValue, radix: 16)) [\(featureNames.joined(separator: ", "))]"
    }
}
