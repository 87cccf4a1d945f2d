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
        /// `IFF_TUN`: an L3 tun, IP packets without an Ethernet header.
        public static let tun = Self(rawValue: Int16(IFF_TUN))
        public static let noPacketInfo = Self(rawValue: Int16(IFF_NO_PI))
        public static let vnetHeader = Self(rawValue: Int16(IFF_VNET_HDR))
        public static let multiQueue = Self(rawValue: Int16(IFF_MULTI_QUEUE))
        public static let oneQueue = Self(rawValue: Int16(IFF_ONE_QUEUE))
        /// `IFF_TUN_EXCL`: create only; when an interface of the name exists, of any kind, TUNSETIFF
        /// fails with EBUSY instead of attaching (drivers/net/tun.c tun_set_iff).
        public static let exclusive = Self(rawValue: Int16(bitPattern: UInt16(IFF_TUN_EXCL)))
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
        /// `TUN_F_UDP_TUNNEL_GSO` (Linux 6.17): UDP-tunnel GSO frames, with a 24-byte header.
        public static let udpTunnelGSO = Self(rawValue: 0x80)
        /// `TUN_F_UDP_TUNNEL_GSO_CSUM` (Linux 6.17): with the outer UDP checksum offloaded too.
        public static let udpTunnelGSOChecksum = Self(rawValue: 0x100)
    }

    public let fd: Int32
    public let name: String
    /// The `TUNSETIFF` flags it was opened with.
    public let flags: Flags
    public var observer: IoctlObserver?

    /// Linux interface names are at most 15 bytes (IFNAMSIZ - 1) and contain no '/', ':' or
    /// white space (net/core/dev.c dev_valid_name).
    public static func validate(name: String) throws(VhostError) {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count < Int(CVHOST_IFNAMSIZ), name != ".", name != "..",
              !bytes.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 >= 0x7f })
        else {
            throw .invalidConfiguration("invalid tap name \"\(name)\": use 1 to 15 characters without '/', ':' or spaces")
        }
    }

    /// Creates the tap `name`, or attaches to the existing tap of that name: open
    /// `/dev/net/tun`, then `TUNSETIFF` (traced like every other ioctl).
    /// The default flags are those QEMU uses: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
    public init(name: String, flags: Flags = [.tap, .noPacketInfo, .vnetHeader], observer: IoctlObserver? = nil) throws(VhostError) {
        try Tap.validate(name: name)
        let opened = open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        guard opened >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            observer?(IoctlEvent(.open(path: "/dev/net/tun"), result: .failure(errno)))
            if errno == .noSuchFileOrDirectory || errno == .operationNotSupportedByDevice {
                throw .tap(name: name, problem: .driverMissing, reason: "/dev/net/tun does not exist; load it with `modprobe tun`")
            }
            throw .tap(name: name, problem: .permission, reason: "cannot open /dev/net/tun: \(errno.name); needs root or CAP_NET_ADMIN")
        }
        var kernelName = [CChar](repeating: 0, count: Int(CVHOST_IFNAMSIZ))
        var value = flags.rawValue
        do {
            try performIoctl(.tun(.setInterface(name: name, flags: UInt16(bitPattern: flags.rawValue))), observer: observer) { request in
                cvhost_ioctl_ifreq_short(opened, request, name, &value, &kernelName)
            }
        } catch .ioctl(let failure) {
            close(opened)
            switch failure.errno {
            case .notPermitted, .permissionDenied:
                throw .tap(name: name, problem: .permission, reason: "TUNSETIFF refused (\(failure.errno.name)): creating or attaching a tap needs CAP_NET_ADMIN (run as root), or the tap belongs to another user")
            case .resourceBusy where flags.contains(.exclusive):
                throw .tap(name: name, problem: .exists, reason: "already exists (TUNSETIFF with IFF_TUN_EXCL: EBUSY); drop --create to attach to it, or choose another name")
            case .resourceBusy:
                throw .tap(name: name, problem: .busy, reason: "busy (EBUSY): another process has it open; close it or choose another name")
            case .invalidArgument:
                throw .tap(name: name, problem: .nameTaken, reason: "the name is taken by an interface that is not a tap of these flags (EINVAL); choose another name")
            default:
                throw .tap(name: name, problem: .other, reason: "TUNSETIFF failed: \(failure.errno.name) (\(failure.errno))")
            }
        } catch {
            close(opened)
            throw error
        }
        fd = opened
        self.name = String(decoding: kernelName.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.flags = flags
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
        return UInt32(truncatingIfNeeded: try Tap.perform(.getFeatures, on: fd, observer: nil).value)
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
    public static func exists(name: String) -> Bool { NetworkInterface(name: name).exists }

    /// The interface's `SIOC*` requests, traced with this tap's observer.
    public var interface: NetworkInterface { NetworkInterface(name: name, observer: observer) }

    public func interfaceIndex() throws(VhostError) -> Int32 { try interface.index() }

    /// Issues one tun request on this tap's fd and returns its answer.
    @discardableResult
    public func perform(_ request: TunRequest) throws(VhostError) -> VhostAnswer { try Tap.perform(request, on: fd, observer: observer) }

    /// The kernel encoding of every tun request (linux/if_tun.h), on any tun-like fd: a tap
    /// queue or a macvtap (which takes the same requests, drivers/net/tap.c tap_ioctl).
    @discardableResult
    public static func perform(_ request: TunRequest, on fd: Int32, observer: IoctlObserver?) throws(VhostError) -> VhostAnswer {
        switch request {
        case .setInterface(let name, let flags):
            var value = Int16(bitPattern: flags)
            try performIoctl(.tun(request), observer: observer) { cvhost_ioctl_ifreq_short(fd, $0, name, &value, nil) }
            return .none
        case .getInterface:
            var value: Int16 = 0
            try performIoctl(.tun(request), observer: observer, answer: { .value(UInt64(UInt16(bitPattern: value))) }) { cvhost_ioctl_ifreq_short(fd, $0, "", &value, nil) }
            return .value(UInt64(UInt16(bitPattern: value)))
        case .setPersist(let on):
            try performIoctl(.tun(request), observer: observer) { cvhost_ioctl_ulong(fd, $0, on ? 1 : 0) }
            return .none
        case .setOwner(let uid):
            try performIoctl(.tun(request), observer: observer) { cvhost_ioctl_ulong(fd, $0, UInt(uid)) }
            return .none
        case .setOffload(let bits):
            // TUNSETOFFLOAD takes the flags as the argument itself, not a pointer (tun.c __tun_chr_ioctl).
            try performIoctl(.tun(request), observer: observer) { cvhost_ioctl_ulong(fd, $0, UInt(bits)) }
            return .none
        case .getFeatures:
            var value: UInt32 = 0
            try performIoctl(.tun(request), observer: observer, answer: { .value(UInt64(value)) }) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .value(UInt64(value))
        case .getVnetHeaderSize:
            var value: Int32 = 0
            try performIoctl(.tun(request), observer: observer, answer: { .value(UInt64(UInt32(bitPattern: value))) }) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .value(UInt64(UInt32(bitPattern: value)))
        case .getSendBuffer:
            var value: Int32 = 0
            try performIoctl(.tun(request), observer: observer, answer: { .value(UInt64(UInt32(bitPattern: value))) }) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .value(UInt64(UInt32(bitPattern: value)))
        case .setQueue(let attach):
            // struct ifreq with ifr_flags; the name is not read (tun.c tun_set_queue).
            var flags = Int16(attach ? 0x0200 : 0x0400)
            try performIoctl(.tun(request), observer: observer) { cvhost_ioctl_ifreq_short(fd, $0, "", &flags, nil) }
            return .none
        case .setCarrier(let on):
            var value: Int32 = on ? 1 : 0
            try performIoctl(.tun(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .none
        case .setSteeringProgram(let program):
            // tun.c tun_set_ebpf copies an int fd from the pointer.
            var value = program
            try performIoctl(.tun(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .none
        case .setSendBuffer(let bytes), .setVnetHeaderSize(let bytes):
            var value = bytes
            try performIoctl(.tun(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .none
        }
    }

    /// Sets the length of the virtio-net header the tap prepends and expects
    /// (vhost-net's sock_hlen: 12 with VERSION_1 or MRG_RXBUF, else 10).
    public func setVnetHeaderSize(_ size: Int32) throws(VhostError) { try perform(.setVnetHeaderSize(size)) }

    public func vnetHeaderSize() throws(VhostError) -> Int32 { Int32(truncatingIfNeeded: try perform(.getVnetHeaderSize).value) }

    /// The TX batching path in vhost-net (tun_sendmsg with XDP batching) is taken only when
    /// the tap's sndbuf is INT_MAX; QEMU sets it (net/tap-linux.c tap_fd_set_sndbuf).
    public func setSendBuffer(_ bytes: Int32 = Int32.max) throws(VhostError) { try perform(.setSendBuffer(bytes)) }

    /// The IFF_* flags this kernel's tun driver supports (TUNGETFEATURES).
    public func features() throws(VhostError) -> UInt32 { UInt32(truncatingIfNeeded: try perform(.getFeatures).value) }

    public func setOffloads(_ offloads: Offloads) throws(VhostError) { try perform(.setOffload(offloads.rawValue)) }

    /// Checks that the tap takes UDP_L4 GSO frames (USO, Linux 6.2), as QEMU's tap_probe_has_uso
    /// does: `TUNSETOFFLOAD` with TUN_F_CSUM, TUN_F_USO4 and TUN_F_USO6, then back to none. A
    /// kernel without USO refuses the flags (EINVAL): that is `unsupportedByKernel`.
    public func requireUDPSegmentation() throws(VhostError) { try Tap.requireUDPSegmentation(on: fd, name: name, observer: observer) }

    /// `requireUDPSegmentation` on any tun-like fd (a tap queue or a macvtap).
    public static func requireUDPSegmentation(on fd: Int32, name: String, observer: IoctlObserver?) throws(VhostError) {
        do {
            try perform(.setOffload(Offloads([.checksum, .uso4, .uso6]).rawValue), on: fd, observer: observer)
        } catch .ioctl(let failure) where failure.errno == .invalidArgument {
            throw .unsupportedByKernel("VIRTIO_NET_F_HOST_USO: \(name) refuses TUN_F_USO4|TUN_F_USO6 (TUNSETOFFLOAD: EINVAL), so this kernel cannot segment UDP_L4 GSO frames; USO came to tun and vhost-net in Linux 6.2")
        }
        try perform(.setOffload(0), on: fd, observer: observer)
    }

    public func setPersistent(_ persistent: Bool) throws(VhostError) { try perform(.setPersist(persistent)) }

    /// Lets `uid` open the tap later without CAP_NET_ADMIN.
    public func setOwner(uid: UInt32) throws(VhostError) { try perform(.setOwner(uid)) }

    /// Brings the link up or down (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP).
    public func setLinkUp(_ up: Bool) throws(VhostError) { try interface.setLinkUp(up) }

    public func mtu() throws(VhostError) -> Int { try interface.mtu() }

    public func setMTU(_ mtu: Int) throws(VhostError) { try interface.setMTU(mtu) }

    public func macAddress() throws(VhostError) -> [UInt8] { try interface.hardwareAddress() }

    /// Reads one frame from the tap fd (what the host stack sent out of the interface), waiting
    /// up to `milliseconds`: the host end of a tap no vhost device is attached to. Nil on timeout.
    public func readFrame(milliseconds: Int32, capacity: Int = 70_000) -> [UInt8]? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, milliseconds) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: capacity)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return n >= 0 ? Array(buffer.prefix(n)) : nil
    }

    /// Writes one frame into the tap fd: the interface receives it, as from a wire.
    public func writeFrame(_ frame: [UInt8]) throws(VhostError) {
        let n = frame.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n == frame.count else { throw .system(call: "write", detail: "to tap \(name)", errno: Errno(rawValue: Glibc.errno)) }
    }
}

extension Tap: NetworkPort {
    /// vhost-net's sock_hlen: the tap must prepend and expect the header length the features
    /// give (net.c vhost_net_set_features), or none when vhost adds it (the tap was then opened
    /// without IFF_VNET_HDR). TUNSETSNDBUF INT_MAX enables vhost's batched TX path (QEMU's
    /// tap_fd_set_sndbuf), except on an L3 tun (see below); TUNSETOFFLOAD says what the driver accepts on RX.
    public func prepare(headerLength: Int?, receiveOffloads: Offloads, sendBuffer: Int32?, linkUp: Bool) throws(VhostError) {
        if let headerLength { try setVnetHeaderSize(Int32(headerLength)) }
        // An L3 tun must not have INT_MAX, which tun_chr_open gives every tun fd: with it
        // vhost-net batches TX through XDP (net.c vhost_net_build_xdp, taken when sk_sndbuf is
        // INT_MAX), and tun.c tun_xdp_one parses every packet as an Ethernet frame
        // (eth_type_trans), so the tun drops each one. One byte less keeps the send buffer
        // unbounded in practice and sends packets through tun_sendmsg, which takes the protocol
        // from the IP version as an IFF_TUN tun should.
        try setSendBuffer(sendBuffer ?? (flags.contains(.tun) ? Int32.max - 1 : Int32.max))
        if !receiveOffloads.isEmpty { try setOffloads(receiveOffloads) }
        if linkUp { try setLinkUp(true) }
    }

    public func maximumTransmissionUnit() throws(VhostError) -> Int? { try mtu() }
}
