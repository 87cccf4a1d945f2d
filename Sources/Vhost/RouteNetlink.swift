import CVhost
import Glibc
import SystemPackage

/// The few rtnetlink requests swift-vhost needs to make its own test links without iproute2
/// (linux/rtnetlink.h, if_link.h): create a dummy or a macvtap, and delete a link.
public enum RouteNetlink {
    static let newLink: UInt16 = 16, deleteLink: UInt16 = 17
    static let request: UInt16 = 0x1, acknowledge: UInt16 = 0x4, exclusive: UInt16 = 0x200, create: UInt16 = 0x400
    static let address: UInt16 = 1, interfaceName: UInt16 = 3, link: UInt16 = 5, master: UInt16 = 10, linkInfo: UInt16 = 18
    static let infoKind: UInt16 = 1, infoData: UInt16 = 2, macvlanMode: UInt16 = 1

    /// macvlan/macvtap modes (if_link.h MACVLAN_MODE_*).
    public enum MacvlanMode: UInt32, Sendable { case `private` = 1, vepa = 2, bridge = 4, passthrough = 8 }

    /// Creates a link `name` of `kind` ("dummy", "macvtap", "macvlan"), up, on `parent` for the
    /// macvlan kinds (in `mode`), with the MAC `hardwareAddress` when given. The kernel's error
    /// is thrown as `VhostError.system`.
    public static func createLink(_ name: String, kind: String, parent: String? = nil, mode: MacvlanMode = .bridge,
                                  hardwareAddress: [UInt8]? = nil) throws(VhostError) {
        var attributes = attribute(interfaceName, string: name)
        if let hardwareAddress { attributes += attribute(address, hardwareAddress) }
        if let parent { attributes += attribute(link, u32: UInt32(try NetworkInterface(name: parent).index())) }
        var info = attribute(infoKind, string: kind)
        if parent != nil { info += attribute(infoData, attribute(macvlanMode, u32: mode.rawValue)) }
        attributes += attribute(linkInfo, info)
        // struct ifinfomsg: family, pad, type, index, flags = IFF_UP, change = IFF_UP.
        let header: [UInt8] = [0, 0, 0, 0] + le32(0) + le32(1) + le32(1)
        try send(type: newLink, flags: request | acknowledge | exclusive | create, body: header + attributes, what: "create \(kind) link \(name)")
    }

    /// Makes `name` a port of the bridge `bridge` (IFLA_MASTER on an existing link).
    public static func setMaster(_ name: String, bridge: String) throws(VhostError) {
        let index = try NetworkInterface(name: name).index()
        let header: [UInt8] = [0, 0, 0, 0] + le32(UInt32(bitPattern: index)) + le32(1) + le32(1)
        try send(type: newLink, flags: request | acknowledge,
                 body: header + attribute(master, u32: UInt32(bitPattern: try NetworkInterface(name: bridge).index())), what: "put \(name) in bridge \(bridge)")
    }

    /// Deletes the link `name`.
    public static func removeLink(_ name: String) throws(VhostError) {
        let header: [UInt8] = [0, 0, 0, 0] + le32(0) + le32(0) + le32(0)
        try send(type: deleteLink, flags: request | acknowledge, body: header + attribute(interfaceName, string: name), what: "delete link \(name)")
    }

    static func send(type: UInt16, flags: UInt16, body: [UInt8], what: String) throws(VhostError) {
        let fd = cvhost_socket(16 /* AF_NETLINK */, CVHOST_SOCK_RAW, 0 /* NETLINK_ROUTE */)
        guard fd >= 0 else { throw .system(call: "socket(AF_NETLINK)", detail: what, errno: Errno(rawValue: -fd)) }
        defer { close(fd) }
        // Extended acknowledgements (linux/netlink.h NETLINK_EXT_ACK, Linux 4.12): an error comes
        // with the kernel's own words (NLMSGERR_ATTR_MSG). A kernel without it refuses the option
        // (ENOPROTOOPT), and the answer is then a plain errno: nothing is lost, so go on.
        var enable: Int32 = 1
        _ = setsockopt(fd, solNetlink, netlinkExtendedAcknowledgement, &enable, socklen_t(MemoryLayout<Int32>.size))
        // struct nlmsghdr: length, type, flags, sequence, port (0: the kernel).
        let message = le32(UInt32(16 + body.count)) + le16(type) + le16(flags) + le32(1) + le32(0) + body
        let sent = message.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == message.count else { throw .system(call: "send(netlink)", detail: what, errno: Errno(rawValue: Glibc.errno)) }
        var reply = [UInt8](repeating: 0, count: 4096)
        let n = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { throw .system(call: "recv(netlink)", detail: what, errno: Errno(rawValue: Glibc.errno)) }
        let answer: Acknowledgement
        do {
            answer = try reply.withUnsafeBytes { bytes throws(MalformedAnswer) in try RouteNetlink.acknowledgement(in: UnsafeRawBufferPointer(rebasing: bytes.prefix(n))) }
        } catch {
            throw .system(call: "recv(netlink)", detail: "\(what): \(error)", errno: .ioError)
        }
        if case .failed(let errno, let explanation) = answer {
            throw .system(call: "RTM_\(type == newLink ? "NEWLINK" : type == deleteLink ? "DELLINK" : "SETLINK")",
                          detail: what + explanation.summary(request: message), errno: errno)
        }
    }

    /// linux/netlink.h: SOL_NETLINK and its option NETLINK_EXT_ACK.
    static let solNetlink: Int32 = 270, netlinkExtendedAcknowledgement: Int32 = 11
    /// linux/netlink.h nlmsg_flags of an NLMSG_ERROR: the request echoed as its header only, and TLVs after it.
    static let capped: UInt16 = 0x100, acknowledgementTLVs: UInt16 = 0x200
    /// linux/netlink.h enum nlmsgerr_attrs: the message, and the offset of the attribute it is about.
    static let errorMessageAttribute: UInt16 = 1, errorOffsetAttribute: UInt16 = 2
    /// The longest kernel message kept (NL_SET_ERR_MSG takes string literals; the longest are < 100 bytes).
    static let longestKernelMessage = 200

    /// What the kernel says about a failed request in an extended acknowledgement (NETLINK_EXT_ACK):
    /// its message (NLMSGERR_ATTR_MSG) and where in the request the fault is (NLMSGERR_ATTR_OFFS).
    /// Both nil when the kernel said nothing more than the errno.
    public struct KernelExplanation: Equatable, Sendable {
        /// The kernel's message (NL_SET_ERR_MSG), e.g. "Unknown device type"; control characters
        /// are replaced with spaces and it is cut at `longestKernelMessage` bytes.
        public var message: String?
        /// The byte offset, from the start of the request's nlmsghdr, of the attribute at fault.
        public var attributeOffset: UInt32?

        public init(message: String? = nil, attributeOffset: UInt32? = nil) {
            self.message = message
            self.attributeOffset = attributeOffset
        }

        /// " (kernel: MESSAGE, at attribute TYPE, byte N of the request)", or "" when there is nothing
        /// to add. The attribute's type is read from `request` when the offset points inside it.
        func summary(request: [UInt8]) -> String {
            var parts: [String] = []
            if let message { parts.append("kernel: \(message)") }
            if let offset = attributeOffset.map(Int.init) {
                if offset >= 0, offset <= request.count - 4 {
                    let type = UInt16(request[offset + 2]) | UInt16(request[offset + 3]) << 8
                    parts.append("at attribute type \(type & 0x3fff), byte \(offset) of the request")
                } else {
                    parts.append("at byte \(offset) of the request")
                }
            }
            return parts.isEmpty ? "" : " (" + parts.joined(separator: ", ") + ")"
        }
    }

    /// The kernel's answer to a request sent with NLM_F_ACK.
    public enum Acknowledgement: Equatable, Sendable {
        /// NLMSG_ERROR with error 0: done.
        case acknowledged
        /// NLMSG_ERROR with a negative error: the request failed with that errno, and what the
        /// kernel said about it in an extended acknowledgement (empty without one).
        case failed(Errno, KernelExplanation)
        /// Another message first (the request's own answer, before the acknowledgement).
        case other(type: UInt16)
    }

    /// An answer that is not a netlink message: its header's length runs past what was received
    /// or is shorter than a header, an NLMSG_ERROR too short for its error code, or extended
    /// acknowledgement attributes that run past the message.
    public struct MalformedAnswer: Error, Equatable, CustomStringConvertible {
        public let reason: String
        public var description: String { "a malformed netlink answer: \(reason)" }
    }

    /// Reads the first message of a netlink answer (`struct nlmsghdr`, linux/netlink.h, in host
    /// byte order): an NLMSG_ERROR's code, or the type of another message. Nothing in `bytes`
    /// is trusted: every length is checked against what was received.
    public static func acknowledgement(in bytes: UnsafeRawBufferPointer) throws(MalformedAnswer) -> Acknowledgement {
        // struct nlmsghdr: __u32 nlmsg_len, __u16 nlmsg_type, __u16 nlmsg_flags, __u32 nlmsg_seq, __u32 nlmsg_pid.
        let headerLength = 16
        guard bytes.count >= headerLength else { throw MalformedAnswer(reason: "\(bytes.count) bytes, less than a 16-byte nlmsghdr") }
        let length = Int(bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let type = bytes.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        guard length >= headerLength, length <= bytes.count else {
            throw MalformedAnswer(reason: "nlmsg_len \(length) outside 16...\(bytes.count), the bytes received")
        }
        // NLMSG_ERROR (2) carries struct nlmsgerr: int error (0 or -errno), then the request's header.
        guard type == 2 else { return .other(type: type) }
        guard length >= headerLength + 4 else { throw MalformedAnswer(reason: "an NLMSG_ERROR of \(length) bytes, too short for its error code") }
        let code = bytes.loadUnaligned(fromByteOffset: headerLength, as: Int32.self)
        guard code != 0 else { return .acknowledged }
        // net/netlink/af_netlink.c netlink_ack: the error is a negative errno; a positive one is no errno.
        guard code < 0, code > Int32.min else { throw MalformedAnswer(reason: "NLMSG_ERROR code \(code), not 0 or a negative errno") }
        let flags = bytes.loadUnaligned(fromByteOffset: 6, as: UInt16.self)
        guard flags & acknowledgementTLVs != 0 else { return .failed(Errno(rawValue: -code), KernelExplanation()) }
        return .failed(Errno(rawValue: -code), try explanation(in: UnsafeRawBufferPointer(rebasing: bytes[..<length]), capped: flags & capped != 0))
    }

    /// The TLVs of an NLMSG_ERROR `message` flagged NLM_F_ACK_TLVS. net/netlink/af_netlink.c
    /// netlink_ack: after struct nlmsgerr (int error, then the request's nlmsghdr) comes the
    /// request's payload unless NLM_F_CAPPED, padded to 4 bytes (nlmsg_append), then the
    /// attributes (struct nlattr: __u16 nla_len, __u16 nla_type, the value padded to 4).
    static func explanation(in message: UnsafeRawBufferPointer, capped: Bool) throws(MalformedAnswer) -> KernelExplanation {
        let echoedHeader = 16 + 4, nlmsghdrLength = 16
        guard message.count >= echoedHeader + nlmsghdrLength else {
            throw MalformedAnswer(reason: "an NLMSG_ERROR of \(message.count) bytes with NLM_F_ACK_TLVS, too short for the request's header")
        }
        // UInt32 → Int: no overflow on a 64-bit Int; the sums below stay far below Int.max.
        let echoedLength = capped ? nlmsghdrLength : Int(message.loadUnaligned(fromByteOffset: echoedHeader, as: UInt32.self))
        guard echoedLength >= nlmsghdrLength else { throw MalformedAnswer(reason: "an echoed request of \(echoedLength) bytes, shorter than its header") }
        var offset = echoedHeader + padded(echoedLength)
        guard offset <= message.count else {
            throw MalformedAnswer(reason: "an echoed request of \(echoedLength) bytes runs past the \(message.count)-byte NLMSG_ERROR")
        }
        var result = KernelExplanation()
        while offset < message.count {
            guard message.count - offset >= 4 else { throw MalformedAnswer(reason: "\(message.count - offset) bytes at \(offset), too short for an attribute header") }
            let length = Int(message.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            // NLA_TYPE_MASK: without NLA_F_NESTED and NLA_F_NET_BYTEORDER.
            let type = message.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) & 0x3fff
            guard length >= 4, length <= message.count - offset else {
                throw MalformedAnswer(reason: "an attribute of nla_len \(length) at \(offset), outside 4...\(message.count - offset)")
            }
            let value = UnsafeRawBufferPointer(rebasing: message[(offset + 4)..<(offset + length)])
            switch type {
            case errorMessageAttribute:
                // A NUL-terminated string (nla_put_string); its bytes are shown to a person: one line, no control characters.
                let text = value.prefix { $0 != 0 }.prefix(longestKernelMessage).map { $0 < 0x20 || $0 == 0x7f ? UInt8(ascii: " ") : $0 }
                result.message = String(decoding: text, as: UTF8.self)
            case errorOffsetAttribute:
                guard value.count >= 4 else { throw MalformedAnswer(reason: "an NLMSGERR_ATTR_OFFS of \(value.count) bytes, not a __u32") }
                result.attributeOffset = value.loadUnaligned(as: UInt32.self)
            default:
                break  // NLMSGERR_ATTR_COOKIE, _POLICY, _MISS_TYPE, _MISS_NEST: not shown.
            }
            offset += padded(length)
        }
        return result
    }

    /// NLMSG_ALIGN / NLA_ALIGN: up to a multiple of 4 (n is at most 2³² here, so no overflow).
    static func padded(_ n: Int) -> Int { (n + 3) & ~3 }

    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xff), UInt8((v >> 8) & 0xff), UInt8((v >> 16) & 0xff), UInt8(v >> 24)] }

    /// struct rtattr (length, type) and the value, padded to 4 bytes.
    static func attribute(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
        var bytes = le16(UInt16(4 + value.count)) + le16(type) + value
        while bytes.count % 4 != 0 { bytes.append(0) }
        return bytes
    }
    static func attribute(_ type: UInt16, string: String) -> [UInt8] { attribute(type, Array(string.utf8) + [0]) }
    static func attribute(_ type: UInt16, u32: UInt32) -> [UInt8] { attribute(type, le32(u32)) }
}

/// A macvtap queue as the backend of a vhost-net vring (net.c get_tap_socket → tap_get_socket):
/// the character device `/dev/tap<ifindex>` of a macvtap link. It starts with a 10-byte virtio-net
/// header (tap.c tap_open), so `prepare` sets the features' length. Closed in `deinit`; a link it
/// created is deleted then too.
public struct MacvtapPort: ~Copyable, NetworkPort {
    public let fd: Int32
    public let name: String
    public var observer: IoctlObserver?
    private let createdLink: Bool

    /// Creates the macvtap `name` on `parent` (bridge mode) unless it exists, and opens a queue of
    /// it. A macvlan delivers unicast frames only to the MAC of the link, so the guest side must
    /// use the macvtap's own MAC (as libvirt does): give it as `hardwareAddress` at creation.
    /// A link it creates carries this process's `InterfaceMark` as its alias, so a reaper or
    /// `vhostctl cleanup` can remove it should the process die without deleting it. Without a
    /// /dev/tapN (no devtmpfs or udev), the queue is opened through a `TransientDeviceNode`.
    public init(name: String, parent: String, hardwareAddress: [UInt8]? = nil, observer: IoctlObserver? = nil) throws(VhostError) {
        let exists = NetworkInterface(name: name).exists
        let mark = try InterfaceMark.current()
        if !exists { try RouteNetlink.createLink(name, kind: "macvtap", parent: parent, hardwareAddress: hardwareAddress) }
        do throws(VhostError) {
            let index = try NetworkInterface(name: name, observer: observer).index()
            if !exists { try RouteNetlink.setAlias(index: index, mark.description) }
            let path = "/dev/tap\(index)"
            let opened: Int32
            if access(path, F_OK) == 0 {
                opened = open(path, O_RDWR | O_CLOEXEC)
                guard opened >= 0 else { throw .system(call: "open", detail: "\(path) (the macvtap \(name))", errno: Errno(rawValue: Glibc.errno)) }
            } else {
                // No devtmpfs: the node from the numbers sysfs gives (macvtap.c device_create),
                // made for the open alone.
                let sysfs = "/sys/class/net/\(name)/macvtap/tap\(index)/dev"
                guard let numbers = KernelInfo.readFile(sysfs)?.trimmingTrailingNewlines(), let colon = numbers.firstIndex(of: ":"),
                      let major = UInt32(numbers[..<colon]), let minor = UInt32(numbers[numbers.index(after: colon)...]) else {
                    throw .system(call: "read", detail: "\(sysfs): no major:minor for the macvtap \(name)'s device, and no \(path)", errno: .noSuchFileOrDirectory)
                }
                opened = try TransientDeviceNode.open(major: major, minor: minor, name: mark.nodeName(for: "tap\(index)"))
            }
            observer?(IoctlEvent(.open(path: path), result: .success(opened)))
            fd = opened
        } catch {
            if !exists { try? RouteNetlink.removeLink(name) }
            throw error
        }
        self.name = name
        self.observer = observer
        createdLink = !exists
    }

    deinit {
        close(fd)
        // After a drop of CAP_NET_ADMIN this fails (EPERM); the process's reaper deletes it then.
        if createdLink { try? RouteNetlink.removeLink(name) }
    }

    /// The header length the features give (TUNSETVNETHDRSZ; macvtap starts at 10), the
    /// offloads (TUNSETOFFLOAD; macvtap takes no UDP-tunnel GSO), and the link.
    public func prepare(headerLength: Int?, receiveOffloads: Tap.Offloads, sendBuffer: Int32?, linkUp: Bool) throws(VhostError) {
        guard let headerLength else {
            throw .invalidConfiguration("a macvtap carries a virtio-net header itself: do not negotiate VHOST_NET_F_VIRTIO_NET_HDR with it")
        }
        try Tap.perform(.setVnetHeaderSize(Int32(headerLength)), on: fd, observer: observer)
        try Tap.perform(.setSendBuffer(sendBuffer ?? Int32.max), on: fd, observer: observer)
        if !receiveOffloads.isEmpty { try Tap.perform(.setOffload(receiveOffloads.rawValue), on: fd, observer: observer) }
        if linkUp { try NetworkInterface(name: name, observer: observer).setLinkUp(true) }
    }

    public func maximumTransmissionUnit() throws(VhostError) -> Int? { try NetworkInterface(name: name, observer: observer).mtu() }
}
