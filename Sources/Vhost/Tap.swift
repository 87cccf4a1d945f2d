import CVhost
import Glibc
import SystemPackage

/// One queue of a tap device: the fd the kernel's vhost worker reads and writes frames
/// through once it is the backend of a vring. Closing the last queue of a tap that is not
/// persistent removes the interface.
public struct Tap: ~Copyable {
    /// TUNSETIFF flags (linux/if_tun.h).
    public struct Flags: OptionSet, Sendable {
        public var rawValue: Int16
        public init(rawValue: Int16) { self.rawValue = rawValue }
        public static let tap = Self(rawValue: Int16(IFF_TAP))
        public static let noPacketInfo = Self(rawValue: Int16(IFF_NO_PI))
        public static let vnetHeader = Self(rawValue: Int16(IFF_VNET_HDR))
        public static let multiQueue = Self(rawValue: Int16(IFF_MULTI_QUEUE))
        public static let oneQueue = Self(rawValue: Int16(IFF_ONE_QUEUE))
    }

    /// TUNSETOFFLOAD flags: what the reader of the tap (us) accepts.
    public struct Offloads: OptionSet, Sendable {
        public var rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let checksum = Self(rawValue: UInt32(TUN_F_CSUM))
        public static let tso4 = Self(rawValue: UInt32(TUN_F_TSO4))
        public static let tso6 = Self(rawValue: UInt32(TUN_F_TSO6))
        public static let tsoECN = Self(rawValue: UInt32(TUN_F_TSO_ECN))
        public static let ufo = Self(rawValue: UInt32(TUN_F_UFO))
        public static let uso4 = Self(rawValue: 0x20)
        public static let uso6 = Self(rawValue: 0x40)
    }

    public let fd: Int32
    public let name: String
    public var observer: IoctlObserver?

    /// Linux interface names are at most 15 bytes (IFNAMSIZ - 1) and contain no '/', ':' or
    /// white space (net/core/dev.c dev_valid_name).
    public static func validate(name: String) throws(VhostError) {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count < Int(CVHOST_IFNAMSIZ), name != ".", name != "..",
              !bytes.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 >= 0x7f })
        else {
            throw .invalidArgument("invalid tap name \"\(name)\": use 1 to 15 characters without '/', ':' or spaces")
        }
    }

    /// Creates the tap `name`, or attaches to the existing tap of that name.
    /// The default flags are those QEMU uses: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
    public init(name: String, flags: Flags = [.tap, .noPacketInfo, .vnetHeader], observer: IoctlObserver? = nil) throws(VhostError) {
        try Tap.validate(name: name)
        var kernelName = [CChar](repeating: 0, count: Int(CVHOST_IFNAMSIZ))
        var failedStep: Int32 = 0
        let rc = cvhost_tap_open(name, flags.rawValue, &kernelName, &failedStep)
        observer?(IoctlEvent(name: "TUNSETIFF", arguments: "name: \(name), flags: \(hex(UInt16(bitPattern: flags.rawValue)))",
                             result: rc < 0 ? .failure(Errno(rawValue: -rc)) : .success(rc)))
        guard rc >= 0 else {
            let errno = Errno(rawValue: -rc)
            if failedStep == 1 {
                if errno == .noSuchFileOrDirectory || errno == .operationNotSupportedByDevice {
                    throw .tap(name: name, problem: .driverMissing, reason: "/dev/net/tun does not exist; load it with `modprobe tun`")
                }
                throw .tap(name: name, problem: .permission, reason: "cannot open /dev/net/tun: \(errno.name); needs root or CAP_NET_ADMIN")
            }
            switch errno {
            case .notPermitted, .permissionDenied:
                throw .tap(name: name, problem: .permission, reason: "TUNSETIFF refused (\(errno.name)): creating or attaching a tap needs CAP_NET_ADMIN (run as root), or the tap belongs to another user")
            case .resourceBusy:
                throw .tap(name: name, problem: .busy, reason: "busy (EBUSY): another process has it open; close it or choose another name")
            case .invalidArgument:
                throw .tap(name: name, problem: .nameTaken, reason: "the name is taken by an interface that is not a tap of these flags (EINVAL); choose another name")
            default:
                throw .tap(name: name, problem: .other, reason: "TUNSETIFF failed: \(errno.name) (\(errno))")
            }
        }
        fd = rc
        self.name = String(decoding: kernelName.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.observer = observer
    }

    deinit { close(fd) }

    /// The IFF_* flags the tun driver supports, without creating a tap (TUNGETFEATURES on a
    /// fresh /dev/net/tun fd).
    public static func driverFeatures() throws(VhostError) -> UInt32 {
        let fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            throw .tap(name: "/dev/net/tun", problem: errno == .noSuchFileOrDirectory ? .driverMissing : .permission,
                       reason: "cannot open: \(errno.name) (\(errno))\(errno == .noSuchFileOrDirectory ? "; load it with `modprobe tun`" : "")")
        }
        defer { close(fd) }
        var value: UInt32 = 0
        try performIoctl("TUNGETFEATURES", "", observer: nil) { cvhost_ioctl_ptr(fd, CVHOST_TUNGETFEATURES, &value) }
        return value
    }

    /// Names of TUNSETIFF flags (linux/if_tun.h).
    public static func flagNames(_ flags: UInt32) -> [String] {
        let names: [(UInt32, String)] = [(0x0001, "IFF_TUN"), (0x0002, "IFF_TAP"), (0x0010, "IFF_NAPI"), (0x0020, "IFF_NAPI_FRAGS"),
                                          (0x0040, "IFF_NO_CARRIER"), (0x0100, "IFF_MULTI_QUEUE"), (0x0200, "IFF_ATTACH_QUEUE"),
                                          (0x0400, "IFF_DETACH_QUEUE"), (0x0800, "IFF_PERSIST"), (0x1000, "IFF_NO_PI"),
                                          (0x2000, "IFF_ONE_QUEUE"), (0x4000, "IFF_VNET_HDR"), (0x8000, "IFF_TUN_EXCL")]
        var rest = flags
        var result: [String] = []
        for (bit, name) in names where flags & bit != 0 { result.append(name); rest &= ~bit }
        if rest != 0 { result.append(hex(rest)) }
        return result
    }

    /// Whether an interface of this name exists (any kind).
    public static func exists(name: String) -> Bool { cvhost_if_index(name) > 0 }

    public func interfaceIndex() throws(VhostError) -> Int32 {
        let rc = cvhost_if_index(name)
        guard rc > 0 else { throw .system(call: "SIOCGIFINDEX", detail: name, errno: Errno(rawValue: -rc)) }
        return rc
    }

    /// Sets the length of the virtio-net header the tap prepends and expects
    /// (vhost-net's sock_hlen: 12 with VERSION_1 or MRG_RXBUF, else 10).
    public func setVnetHeaderSize(_ size: Int32) throws(VhostError) {
        var value = size
        try performIoctl("TUNSETVNETHDRSZ", "\(size)", observer: observer) { cvhost_ioctl_ptr(fd, CVHOST_TUNSETVNETHDRSZ, &value) }
    }

    public func vnetHeaderSize() throws(VhostError) -> Int32 {
        var value: Int32 = 0
        try performIoctl("TUNGETVNETHDRSZ", "", observer: observer) { cvhost_ioctl_ptr(fd, CVHOST_TUNGETVNETHDRSZ, &value) }
        return value
    }

    /// The TX batching path in vhost-net (tun_sendmsg with XDP batching) is taken only when
    /// the tap's sndbuf is INT_MAX; QEMU sets it (net/tap-linux.c tap_fd_set_sndbuf).
    public func setSendBuffer(_ bytes: Int32 = Int32.max) throws(VhostError) {
        var value = bytes
        try performIoctl("TUNSETSNDBUF", "\(bytes)", observer: observer) { cvhost_ioctl_ptr(fd, CVHOST_TUNSETSNDBUF, &value) }
    }

    /// The IFF_* flags this kernel's tun driver supports (TUNGETFEATURES).
    public func features() throws(VhostError) -> UInt32 {
        var value: UInt32 = 0
        try performIoctl("TUNGETFEATURES", "", observer: observer) { cvhost_ioctl_ptr(fd, CVHOST_TUNGETFEATURES, &value) }
        return value
    }

    public func setOffloads(_ offloads: Offloads) throws(VhostError) {
        try performIoctl("TUNSETOFFLOAD", hex(offloads.rawValue), observer: observer) { cvhost_ioctl_ulong(fd, CVHOST_TUNSETOFFLOAD, UInt(offloads.rawValue)) }
    }

    public func setPersistent(_ persistent: Bool) throws(VhostError) {
        try performIoctl("TUNSETPERSIST", persistent ? "1" : "0", observer: observer) { cvhost_ioctl_ulong(fd, CVHOST_TUNSETPERSIST, persistent ? 1 : 0) }
    }

    /// Lets `uid` open the tap later without CAP_NET_ADMIN.
    public func setOwner(uid: UInt32) throws(VhostError) {
        try performIoctl("TUNSETOWNER", "\(uid)", observer: observer) { cvhost_ioctl_ulong(fd, CVHOST_TUNSETOWNER, UInt(uid)) }
    }

    /// Brings the link up or down (SIOCSIFFLAGS IFF_UP).
    public func setLinkUp(_ up: Bool) throws(VhostError) {
        var flags: Int16 = 0
        var rc = cvhost_if_get_flags(name, &flags)
        if rc == 0 {
            flags = up ? flags | CVHOST_IFF_UP : flags & ~CVHOST_IFF_UP
            rc = cvhost_if_set_flags(name, flags)
        }
        guard rc == 0 else { throw .system(call: "SIOCSIFFLAGS", detail: "\(name) \(up ? "up" : "down")", errno: Errno(rawValue: -rc)) }
    }

    public func mtu() throws(VhostError) -> Int {
        let rc = cvhost_if_get_mtu(name)
        guard rc > 0 else { throw .system(call: "SIOCGIFMTU", detail: name, errno: Errno(rawValue: -rc)) }
        return Int(rc)
    }

    public func setMTU(_ mtu: Int) throws(VhostError) {
        let rc = cvhost_if_set_mtu(name, Int32(mtu))
        guard rc == 0 else { throw .system(call: "SIOCSIFMTU", detail: "\(name) to \(mtu)", errno: Errno(rawValue: -rc)) }
    }

    public func macAddress() throws(VhostError) -> [UInt8] {
        var mac = [UInt8](repeating: 0, count: 6)
        let rc = cvhost_if_get_hwaddr(name, &mac)
        guard rc == 0 else { throw .system(call: "SIOCGIFHWADDR", detail: name, errno: Errno(rawValue: -rc)) }
        return mac
    }
}

/// An AF_PACKET socket bound to one interface: the host network stack's side of a tap, for
/// tests and the demo. Closed in `deinit`.
public struct PacketSocket: ~Copyable {
    public let fd: Int32

    public init(interfaceIndex: Int32, etherType: UInt16 = 3 /* ETH_P_ALL */) throws(VhostError) {
        let rc = cvhost_packet_socket(interfaceIndex, etherType)
        guard rc >= 0 else { throw .system(call: "socket(AF_PACKET)", detail: "on ifindex \(interfaceIndex)", errno: Errno(rawValue: -rc)) }
        fd = rc
    }

    deinit { close(fd) }

    public func setBuffers(bytes: Int32) {
        _ = cvhost_set_socket_buffer(fd, 1, bytes)
        _ = cvhost_set_socket_buffer(fd, 0, bytes)
    }

    /// Frames sent from now on start with a 10-byte virtio_net_hdr, so the host stack can send
    /// GSO frames and checksum-offloaded frames (PACKET_VNET_HDR).
    public func enableVnetHeader() throws(VhostError) {
        let rc = cvhost_packet_vnet_header(fd)
        guard rc == 0 else { throw .system(call: "setsockopt(PACKET_VNET_HDR)", detail: "", errno: Errno(rawValue: -rc)) }
    }

    /// Sends one whole Ethernet frame out of the interface.
    public func send(_ frame: [UInt8]) throws(VhostError) {
        let n = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        guard n == frame.count else { throw .system(call: "send", detail: "on packet socket", errno: Errno(rawValue: Glibc.errno)) }
    }

    /// Receives one frame, waiting up to `milliseconds`; nil on timeout.
    public func receive(milliseconds: Int32, capacity: Int = 65536) -> [UInt8]? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, milliseconds) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: capacity)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        guard n >= 0 else { return nil }
        return Array(buffer.prefix(n))
    }
}
