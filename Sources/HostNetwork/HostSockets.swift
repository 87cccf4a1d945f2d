import CVhost
import Glibc
import NetFormats
import SystemPackage
import Vhost

/// An AF_PACKET socket bound to one interface: the host network stack's side of a tap, for
/// tests and the demo. Closed in `deinit`.
public struct PacketSocket: ~Copyable {
    public let fd: Int32

    /// A raw socket for `etherType` (host order; ETH_P_ALL = 3 for everything) bound to the interface.
    public init(interfaceIndex: Int32, etherType: UInt16 = 3 /* ETH_P_ALL */) throws(VhostError) {
        fd = try PacketSocketPort.openBound(interfaceIndex: interfaceIndex, etherType: etherType, interface: "ifindex \(interfaceIndex)")
    }

    deinit { close(fd) }

    /// Sets both socket buffers: SO_*BUFFORCE (root may exceed the sysctl limits), else the
    /// plain option, which the kernel caps.
    public func setBuffers(bytes: Int32) {
        for (force, plain) in [(CVHOST_SO_RCVBUFFORCE, CVHOST_SO_RCVBUF), (CVHOST_SO_SNDBUFFORCE, CVHOST_SO_SNDBUF)] {
            if cvhost_setsockopt_int(fd, SOL_SOCKET, force, bytes) != 0 { _ = cvhost_setsockopt_int(fd, SOL_SOCKET, plain, bytes) }
        }
    }

    /// Frames sent (and received) from now on start with a 10-byte virtio_net_hdr, so the host
    /// stack can send GSO frames and checksum-offloaded frames (PACKET_VNET_HDR).
    public func enableVnetHeader() throws(VhostError) {
        let rc = cvhost_setsockopt_int(fd, CVHOST_SOL_PACKET, CVHOST_PACKET_VNET_HDR, 1)
        guard rc == 0 else { throw .system(call: "setsockopt(PACKET_VNET_HDR)", detail: "", errno: Errno(rawValue: -rc)) }
    }

    /// Sends one whole Ethernet frame out of the interface.
    public func send(_ frame: [UInt8]) throws(VhostError) {
        let n = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        guard n == frame.count else { throw .system(call: "send", detail: "on packet socket", errno: Errno(rawValue: Glibc.errno)) }
    }

    /// Receives one frame, waiting up to `milliseconds`; nil on timeout.
    public func receive(milliseconds: Int32, capacity: Int = 65536) -> [UInt8]? {
        // Into scratch space that is neither zero-filled nor kept: the frame is copied out at its
        // own length (a zeroed 64 KiB array per frame cost a soak's host side more than the frame).
        // A frame already queued costs one recv; poll only when there is none.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: capacity) { scratch -> [UInt8]? in
            var n = recv(fd, scratch.baseAddress, scratch.count, Int32(MSG_DONTWAIT))
            if n < 0 && milliseconds != 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && waitReadable(fd, milliseconds: milliseconds) {
                n = recv(fd, scratch.baseAddress, scratch.count, Int32(MSG_DONTWAIT))
            }
            guard n >= 0 else { return nil }
            return Array(scratch.prefix(min(n, scratch.count)))
        }
    }
}

/// Waits until `fd` is readable; false on timeout (a signal counts as a timeout).
func waitReadable(_ fd: Int32, milliseconds: Int32) -> Bool {
    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&entry, 1, milliseconds) > 0
}

/// An AF_INET socket of the host's own network stack: the far side of the tap, for the demo
/// and the tests (UDP datagrams, raw ICMP for ping). Closed in `deinit`.
public struct HostSocket: ~Copyable {
    public let fd: Int32

    /// A UDP socket.
    public static func udp() throws(VhostError) -> HostSocket {
        try HostSocket(cvhost_socket(CVHOST_AF_INET, CVHOST_SOCK_DGRAM, 0), "socket(AF_INET, SOCK_DGRAM)")
    }
    /// A raw ICMP socket (needs root or CAP_NET_RAW), as ping uses.
    public static func icmp() throws(VhostError) -> HostSocket {
        try HostSocket(cvhost_socket(CVHOST_AF_INET, CVHOST_SOCK_RAW, CVHOST_IPPROTO_ICMP), "socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)")
    }

    private init(_ rc: Int32, _ call: String) throws(VhostError) {
        guard rc >= 0 else { throw .system(call: call, detail: "", errno: Errno(rawValue: -rc)) }
        fd = rc
    }

    deinit { close(fd) }

    public func bind(_ address: IPv4Address, port: UInt16) throws(VhostError) {
        let rc = cvhost_bind_ipv4(fd, address.value, port)
        guard rc == 0 else { throw .system(call: "bind", detail: "\(address):\(port)", errno: Errno(rawValue: -rc)) }
    }

    public func send(_ bytes: [UInt8], to address: IPv4Address, port: UInt16 = 0) throws(VhostError) {
        let rc = bytes.withUnsafeBytes { cvhost_sendto_ipv4(fd, address.value, port, $0.baseAddress, $0.count) }
        guard rc >= 0 else { throw .system(call: "sendto", detail: "\(address):\(port)", errno: Errno(rawValue: Int32(-rc))) }
    }

    /// Receives one datagram, waiting up to `milliseconds`; nil on timeout.
    public func receive(milliseconds: Int32, capacity: Int = 65536) -> (bytes: [UInt8], from: IPv4Address)? {
        // Wait first: callers poll with 0 ms in loops, and the buffer is only needed for data.
        guard waitReadable(fd, milliseconds: milliseconds) else { return nil }
        var buffer = [UInt8](repeating: 0, count: capacity)
        var from: UInt32 = 0
        let n = buffer.withUnsafeMutableBytes { cvhost_recvfrom_ipv4(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT), &from) }
        // EAGAIN: the datagram went to another reader between poll and recv.
        guard n > 0 else { return nil }
        return (Array(buffer.prefix(n)), IPv4Address(from))
    }
}

/// The host's own network configuration, as the far side of a tap sees it.
public enum HostNetwork {
    /// Gives an interface an IPv4 address (SIOCSIFADDR, SIOCSIFNETMASK), traced with `observer`.
    public static func setAddress(_ interface: IPv4Interface, on name: String, observer: IoctlObserver? = nil) throws(VhostError) {
        try NetworkInterface(name: name, observer: observer).setIPv4(address: interface.address.value, netmask: interface.netmask.value)
    }

    /// The MAC the host's neighbour table has for `address` (from /proc/net/arp), if any.
    public static func neighbour(_ address: IPv4Address) -> MACAddress? {
        guard let table = KernelInfo.readFile("/proc/net/arp") else { return nil }
        for line in table.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 4, fields[0] == address.description, let mac = MACAddress(parsing: String(fields[3])),
               mac != MACAddress(0, 0, 0, 0, 0, 0) {
                return mac
            }
        }
        return nil
    }

    /// Whether the process may create taps: root, or CAP_NET_ADMIN in the effective set.
    public static var canAdministerNetwork: Bool { geteuid() == 0 || KernelInfo.hasEffectiveCapability(12 /* CAP_NET_ADMIN */) }
}
