import CVhost
import Glibc
import SystemPackage
import Vhost

/// A pair of connected `SOCK_SEQPACKET` sockets that carries frames the way a tap does: one
/// message is one frame, preceded by the virtio-net header when the features put it on the
/// socket side. The device end is the in-process device's backend (`VHOST_NET_SET_BACKEND`); the
/// host end is what a test or a program plays the host network with.
public struct FramePipe: ~Copyable {
    private var deviceEnd: FramePipeEnd?
    private var hostEnd: FramePipeEnd?

    /// Takes the device end (once), for `VHOST_NET_SET_BACKEND`.
    public mutating func takeDeviceEnd() -> FramePipeEnd? { deviceEnd.take() }
    /// Takes the host end (once), for the side that plays the host network.
    public mutating func takeHostEnd() -> FramePipeEnd? { hostEnd.take() }

    /// Makes a connected pair named `name` (for messages).
    public init(name: String) throws(VhostError) {
        var fds: [Int32] = [-1, -1]
        let rc = fds.withUnsafeMutableBufferPointer { cvhost_socketpair_seqpacket($0.baseAddress) }
        guard rc == 0 else { throw .system(call: "socketpair(AF_UNIX, SOCK_SEQPACKET)", detail: name, errno: Errno(rawValue: -rc)) }
        // Room for a burst of 64 KiB frames either way (the kernel caps it at wmem_max).
        for fd in fds {
            _ = cvhost_setsockopt_int(fd, SOL_SOCKET, CVHOST_SO_SNDBUF, 4 << 20)
            _ = cvhost_setsockopt_int(fd, SOL_SOCKET, CVHOST_SO_RCVBUF, 4 << 20)
        }
        deviceEnd = FramePipeEnd(fd: fds[0], name: name)
        hostEnd = FramePipeEnd(fd: fds[1], name: name + " (host)")
    }
}

/// One end of a `FramePipe`. Closed in `deinit`.
public struct FramePipeEnd: ~Copyable, NetworkPort {
    public let fd: Int32
    public let name: String

    init(fd: Int32, name: String) { self.fd = fd; self.name = name }

    deinit { close(fd) }

    /// Nothing to prepare: the in-process device derives the socket-side header length from the
    /// negotiated features, as net.c vhost_net_set_features does, and has no link or offloads.
    public func prepare(headerLength: Int?, receiveOffloads: Tap.Offloads, sendBuffer: Int32?, linkUp: Bool) throws(VhostError) {}

    /// A pipe has no MTU: any frame up to 64 KiB fits one message.
    public func maximumTransmissionUnit() throws(VhostError) -> Int? { nil }

    /// Sends one message (a frame, with its header when the socket side carries one).
    public func send(_ message: [UInt8]) throws(VhostError) {
        let n = message.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n == message.count else { throw .system(call: "send", detail: "on \(name)", errno: Errno(rawValue: Glibc.errno)) }
    }

    /// Receives one message, waiting up to `milliseconds`; nil on timeout.
    public func receive(milliseconds: Int32, capacity: Int = 70_000) -> [UInt8]? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, milliseconds) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: capacity)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        guard n >= 0 else { return nil }
        return Array(buffer.prefix(n))
    }
}
