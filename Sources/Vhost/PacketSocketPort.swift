import CVhost
import Glibc
import SystemPackage
import Virtio

/// A raw `AF_PACKET` socket bound to an interface, as the backend of a vhost-net vring (net.c
/// get_raw_socket: `SOCK_RAW` of family `AF_PACKET`): the vrings' frames go out of the
/// interface, and frames the interface receives come into the RX ring. Like QEMU's `-netdev
/// socket`-less raw backends, it carries no virtio-net header, so the driver must negotiate
/// `VHOST_NET_F_VIRTIO_NET_HDR` and let vhost add and strip it. Closed in `deinit`.
public struct PacketSocketPort: ~Copyable, NetworkPort {
    public let fd: Int32
    public let name: String
    public var observer: IoctlObserver?

    /// A socket for every EtherType bound to `interface`, which must exist. Frames the host
    /// itself sends out of the interface are not looped back into the RX ring (PACKET_IGNORE_OUTGOING).
    public init(interface: String, observer: IoctlObserver? = nil) throws(VhostError) {
        let index = try NetworkInterface(name: interface, observer: observer).index()
        let rc = try Self.openBound(interfaceIndex: index, etherType: 3 /* ETH_P_ALL */, interface: interface)
        _ = cvhost_setsockopt_int(rc, CVHOST_SOL_PACKET, CVHOST_PACKET_IGNORE_OUTGOING, 1)
        fd = rc
        name = interface
        self.observer = observer
    }

    deinit { close(fd) }

    /// A raw `AF_PACKET` socket bound to interface `interfaceIndex` for `etherType` (host order;
    /// ETH_P_ALL = 3 for everything): the descriptor, closed by the caller. Opened with protocol
    /// 0, so it receives nothing until bind names the protocol and the interface together
    /// (packet(7); af_packet.c packet_create hooks no protocol for 0). Opened for the EtherType,
    /// it would take every interface's frames until bind, and a backend's would reach the RX ring.
    public static func openBound(interfaceIndex: Int32, etherType: UInt16, interface: String) throws(VhostError) -> Int32 {
        let rc = cvhost_socket(CVHOST_AF_PACKET, CVHOST_SOCK_RAW, 0)
        guard rc >= 0 else {
            let errno = Errno(rawValue: -rc)
            throw .system(call: "socket(AF_PACKET, SOCK_RAW)", detail: errno == .notPermitted ? "needs CAP_NET_RAW (run as root)" : "", errno: errno)
        }
        let bound = cvhost_bind_packet(rc, interfaceIndex, etherType)
        guard bound == 0 else {
            close(rc)
            throw .system(call: "bind(AF_PACKET)", detail: "to \(interface)", errno: Errno(rawValue: -bound))
        }
        return rc
    }

    /// A packet socket has no virtio-net header: only `headerLength == nil` (vhost adds it) works.
    /// Its send buffer stays the socket's own.
    public func prepare(headerLength: Int?, receiveOffloads: Tap.Offloads, sendBuffer: Int32?, linkUp: Bool) throws(VhostError) {
        if headerLength != nil {
            throw .invalidConfiguration("a raw packet socket carries no virtio-net header: negotiate VHOST_NET_F_VIRTIO_NET_HDR so that vhost adds and strips it")
        }
        if linkUp { try NetworkInterface(name: name, observer: observer).setLinkUp(true) }
    }

    public func maximumTransmissionUnit() throws(VhostError) -> Int? { try NetworkInterface(name: name, observer: observer).mtu() }
}
