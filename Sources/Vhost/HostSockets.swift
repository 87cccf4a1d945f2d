import CVhost
import Glibc
import SystemPackage
import Virtio

/// An AF_INET socket of the host's own network stack: the far side of the tap, for the demo
/// and the tests (UDP datagrams, raw ICMP for ping). Closed in `deinit`.
public struct HostSocket: ~Copyable {
    public let fd: Int32

    /// A UDP socket.
    public static func udp() throws(VhostError) -> HostSocket { try HostSocket(cvhost_udp_socket(), "socket(AF_INET, SOCK_DGRAM)") }
    /// A raw ICMP socket (needs root or CAP_NET_RAW), as ping uses.
    public static func icmp() throws(VhostError) -> HostSocket { try HostSocket(cvhost_icmp_socket(), "socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)") }

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
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, milliseconds) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: capacity)
        var from: UInt32 = 0
        let n = buffer.withUnsafeMutableBytes { cvhost_recv_timeout(fd, $0.baseAddress, $0.count, 0, &from) }
        guard n > 0 else { return nil }
        return (Array(buffer.prefix(n)), IPv4Address(from))
    }
}

public enum HostNetwork {
    /// Gives an interface an IPv4 address (SIOCSIFADDR, SIOCSIFNETMASK).
    public static func setAddress(_ interface: IPv4Interface, on name: String) throws(VhostError) {
        let rc = cvhost_if_set_ipv4(name, interface.address.value, interface.netmask.value)
        guard rc == 0 else { throw .system(call: "SIOCSIFADDR", detail: "\(interface) on \(name)", errno: Errno(rawValue: -rc)) }
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

    /// Whether the process may create taps: root, or CAP_NET_ADMIN.
    public static var canAdministerNetwork: Bool { geteuid() == 0 || cvhost_net_admin_capable() != 0 }
}
