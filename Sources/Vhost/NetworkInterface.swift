import CVhost
import Glibc
import SystemPackage

/// A network interface by name, and the `SIOC*` requests on it (linux/sockios.h), each issued on
/// a fresh `AF_INET` datagram socket through the traced ioctl path, so `--trace` shows them
/// beside the vhost and tun requests.
public struct NetworkInterface: Sendable {
    public let name: String
    public var observer: IoctlObserver?

    public init(name: String, observer: IoctlObserver? = nil) {
        self.name = name
        self.observer = observer
    }

    /// Runs `body` with an AF_INET datagram socket, the handle the SIOC* requests go to.
    private func withControlSocket<R>(_ body: (Int32) throws(VhostError) -> R) throws(VhostError) -> R {
        let socket = cvhost_socket(CVHOST_AF_INET, CVHOST_SOCK_DGRAM, 0)
        guard socket >= 0 else { throw .system(call: "socket(AF_INET, SOCK_DGRAM)", detail: "", errno: Errno(rawValue: -socket)) }
        defer { close(socket) }
        return try body(socket)
    }

    /// Whether an interface of this name exists (SIOCGIFINDEX succeeds); not traced.
    public var exists: Bool {
        var silent = self
        silent.observer = nil
        return (try? silent.index()) != nil
    }

    public func index() throws(VhostError) -> Int32 {
        try withControlSocket { (socket) throws(VhostError) -> Int32 in
            var value: Int32 = 0
            try performIoctl(.interface(.getIndex(name: name)), observer: observer) { cvhost_ioctl_ifreq_int(socket, $0, name, &value) }
            return value
        }
    }

    public func flags() throws(VhostError) -> Int16 {
        try withControlSocket { (socket) throws(VhostError) -> Int16 in
            var value: Int16 = 0
            try performIoctl(.interface(.getFlags(name: name)), observer: observer) { cvhost_ioctl_ifreq_short(socket, $0, name, &value, nil) }
            return value
        }
    }

    public func setFlags(_ flags: Int16) throws(VhostError) {
        try withControlSocket { (socket) throws(VhostError) in
            var value = flags
            try performIoctl(.interface(.setFlags(name: name, flags: flags)), observer: observer) {
                cvhost_ioctl_ifreq_short(socket, $0, name, &value, nil)
            }
        }
    }

    /// Reads the flags and sets or clears IFF_UP.
    public func setLinkUp(_ up: Bool) throws(VhostError) {
        let current = try flags()
        try setFlags(up ? current | CVHOST_IFF_UP : current & ~CVHOST_IFF_UP)
    }

    public func mtu() throws(VhostError) -> Int {
        try withControlSocket { (socket) throws(VhostError) -> Int in
            var value: Int32 = 0
            try performIoctl(.interface(.getMTU(name: name)), observer: observer) { cvhost_ioctl_ifreq_int(socket, $0, name, &value) }
            return Int(value)
        }
    }

    public func setMTU(_ mtu: Int) throws(VhostError) {
        try withControlSocket { (socket) throws(VhostError) in
            var value = Int32(clamping: mtu)
            try performIoctl(.interface(.setMTU(name: name, mtu: Int32(clamping: mtu))), observer: observer) { cvhost_ioctl_ifreq_int(socket, $0, name, &value) }
        }
    }

    public func hardwareAddress() throws(VhostError) -> [UInt8] {
        try withControlSocket { (socket) throws(VhostError) -> [UInt8] in
            var mac = [UInt8](repeating: 0, count: 6)
            try performIoctl(.interface(.getHardwareAddress(name: name)), observer: observer) { request in
                mac.withUnsafeMutableBufferPointer { cvhost_ioctl_ifreq_hwaddr(socket, request, name, $0.baseAddress) }
            }
            return mac
        }
    }

    /// Gives the interface an IPv4 address and netmask (SIOCSIFADDR, then SIOCSIFNETMASK), host order.
    public func setIPv4(address: UInt32, netmask: UInt32) throws(VhostError) {
        try withControlSocket { (socket) throws(VhostError) in
            var value = address
            try performIoctl(.interface(.setAddress(name: name, ipv4: address)), observer: observer) { cvhost_ioctl_ifreq_ipv4(socket, $0, name, &value) }
            var mask = netmask
            try performIoctl(.interface(.setNetmask(name: name, ipv4: netmask)), observer: observer) { cvhost_ioctl_ifreq_ipv4(socket, $0, name, &mask) }
        }
    }
}
