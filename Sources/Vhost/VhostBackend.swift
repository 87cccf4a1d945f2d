import Virtio

/// The control plane of a vhost device: one entry point, `perform(_:)`, that takes a typed
/// `VhostRequest` and returns its answer, as QEMU's `VhostOps` (hw/virtio/vhost-backend.c) and
/// rust-vmm's `VhostBackend` trait cover the kernel backend. The named methods below
/// (`setVringNum(index:num:)`, …) build the request and call `perform`, so every backend decodes
/// the same values and `--trace` and `--record` see the same events from each.
///
/// Two types conform: `VhostNetDevice`, the kernel's `/dev/vhost-net`, and the in-process device
/// of the `VhostModel` target, which serves the rings from a thread with the same rules. The
/// NIC (`VhostNet`) is generic over this protocol, so one datapath suite runs on both.
///
/// Eventfds are passed as the owning `EventFD` type, borrowed, or as raw fds in the request: the
/// device takes its own reference (the kernel's `eventfd_ctx_fdget`, a `dup` in process), so the
/// caller's fd may go away. Vring 0 is RX and vring 1 is TX (net.c `VHOST_NET_VQ_RX`/`VHOST_NET_VQ_TX`).
public protocol VhostBackend: ~Copyable {
    /// What the device is, for messages: `/dev/vhost-net`, `in-process device`.
    var backendName: String { get }
    /// The fd device-IOTLB messages are read from and written to (the vhost fd itself), or nil
    /// for a device without an IOTLB.
    var iotlbDescriptor: Int32? { get }
    /// Issues one request and returns its answer; a refusal throws `VhostError.ioctl` with the
    /// request and the errno, as the kernel answered it (or would have).
    ///
    /// The device keeps what some requests name until a later request changes it or the device
    /// is closed: the memory of `setMemoryTable`, the rings of `setVringAddress` and the log of
    /// `setLogBase`. The caller keeps that memory mapped until then: the device reads and
    /// writes it at any time.
    @discardableResult
    func perform(_ request: VhostRequest) throws(VhostError) -> VhostAnswer
    /// The offered feature bits as 64-bit words (bit `64 × i + b` is bit `b` of word `i`), for
    /// features beyond bit 63 (`VHOST_GET_FEATURES_ARRAY`, Linux 6.17). The default asks
    /// `features()` and reports no bit above 63.
    func featureWords(count: Int) throws(VhostError) -> [UInt64]
    /// Negotiates feature words; the default accepts only words beyond the first that are zero.
    func setFeatureWords(_ words: [UInt64]) throws(VhostError)
}

/// Which of a vring's eventfds.
public enum VringDoorbell: String, Sendable, CaseIterable {
    case kick, call, error
}

extension VhostBackend where Self: ~Copyable {
    public func featureWords(count: Int) throws(VhostError) -> [UInt64] {
        let low = try features().rawValue
        return [low] + [UInt64](repeating: 0, count: max(0, count - 1))
    }

    public func setFeatureWords(_ words: [UInt64]) throws(VhostError) {
        if let high = words.dropFirst().firstIndex(where: { $0 != 0 }) {
            throw .unsupportedByKernel("feature bits above 63 (word \(high): 0x\(String(words[high], radix: 16))) need VHOST_SET_FEATURES_ARRAY (Linux 6.17); \(backendName) takes 64 bits")
        }
        try setFeatures(VirtioFeatures(rawValue: words.first ?? 0))
    }

    /// `VHOST_SET_OWNER`: binds the device to this process (and starts the kernel's worker).
    public func setOwner() throws(VhostError) { try perform(.setOwner) }
    /// `VHOST_RESET_OWNER`: drops every setting; the device can be set up again.
    public func resetOwner() throws(VhostError) { try perform(.resetOwner) }
    /// `VHOST_GET_FEATURES`: the offered bits 0...63.
    public func features() throws(VhostError) -> VirtioFeatures { VirtioFeatures(rawValue: try perform(.getFeatures).value) }
    /// `VHOST_SET_FEATURES`: the negotiated bits 0...63.
    public func setFeatures(_ features: VirtioFeatures) throws(VhostError) { try perform(.setFeatures(features.rawValue)) }
    /// `VHOST_GET_BACKEND_FEATURES`.
    public func backendFeatures() throws(VhostError) -> VhostBackendFeatures { VhostBackendFeatures(rawValue: try perform(.getBackendFeatures).value) }
    /// `VHOST_SET_BACKEND_FEATURES`.
    public func setBackendFeatures(_ features: VhostBackendFeatures) throws(VhostError) { try perform(.setBackendFeatures(features.rawValue)) }
    /// `VHOST_SET_MEM_TABLE`: the GPA → HVA table every descriptor address goes through.
    public func setMemoryTable(_ table: MemoryTable) throws(VhostError) { try perform(.setMemoryTable(table)) }
    /// `VHOST_SET_VRING_NUM`.
    public func setVringNum(index: UInt32, num: UInt32) throws(VhostError) { try perform(.setVringNum(VringIndex(index), num)) }
    /// `VHOST_SET_VRING_BASE`: where the device starts reading the avail ring.
    public func setVringBase(index: UInt32, base: UInt32) throws(VhostError) { try perform(.setVringBase(VringIndex(index), base)) }
    /// `VHOST_GET_VRING_BASE`: the vring's `last_avail_idx`.
    public func vringBase(index: UInt32) throws(VhostError) -> UInt32 {
        UInt32(truncatingIfNeeded: try perform(.getVringBase(VringIndex(index))).value)
    }
    /// `VHOST_SET_VRING_ADDR`: the ring parts' host addresses (kept by the device until changed).
    public func setVringAddress(index: UInt32, _ addresses: VringAddresses) throws(VhostError) {
        try perform(.setVringAddress(VringIndex(index), addresses))
    }
    /// `VHOST_SET_VRING_KICK`: the eventfd the driver writes to make the device look at the ring.
    public func setVringKick(index: UInt32, _ event: borrowing EventFD) throws(VhostError) { try perform(.setVringKick(VringIndex(index), fd: event.fd)) }
    /// `VHOST_SET_VRING_CALL`: the eventfd the device signals when it wants the driver's attention.
    public func setVringCall(index: UInt32, _ event: borrowing EventFD) throws(VhostError) { try perform(.setVringCall(VringIndex(index), fd: event.fd)) }
    /// `VHOST_SET_VRING_ERR`: the eventfd the device signals on a ring error (`vq_err`).
    public func setVringErr(index: UInt32, _ event: borrowing EventFD) throws(VhostError) { try perform(.setVringErr(VringIndex(index), fd: event.fd)) }
    /// The same ioctl with fd -1: unbinds the kick, call or error eventfd.
    public func unbindVring(index: UInt32, _ doorbell: VringDoorbell) throws(VhostError) {
        let i = VringIndex(index)
        switch doorbell {
        case .kick: try perform(.setVringKick(i, fd: -1))
        case .call: try perform(.setVringCall(i, fd: -1))
        case .error: try perform(.setVringErr(i, fd: -1))
        }
    }
    /// `VHOST_SET_VRING_BUSYLOOP_TIMEOUT`, in microseconds.
    public func setVringBusyloopTimeout(index: UInt32, microseconds: UInt32) throws(VhostError) {
        try perform(.setVringBusyloopTimeout(VringIndex(index), microseconds))
    }
    /// `VHOST_GET_VRING_BUSYLOOP_TIMEOUT`.
    public func vringBusyloopTimeout(index: UInt32) throws(VhostError) -> UInt32 {
        UInt32(truncatingIfNeeded: try perform(.getVringBusyloopTimeout(VringIndex(index))).value)
    }
    /// `VHOST_SET_LOG_BASE`: the dirty log's host address (kept by the device until changed).
    public func setLogBase(_ address: HostAddress) throws(VhostError) { try perform(.setLogBase(address)) }
    /// `VHOST_SET_LOG_FD`: the eventfd the device signals when it logged a used-ring update.
    public func setLogFD(_ event: borrowing EventFD) throws(VhostError) { try perform(.setLogFD(event.fd)) }
    /// `VHOST_NET_SET_BACKEND`: the socket whose frames the vring carries.
    public func setBackend<Port: NetworkPort & ~Copyable>(index: UInt32, _ port: borrowing Port) throws(VhostError) {
        try perform(.netSetBackend(VringIndex(index), fd: port.fd))
    }
    /// `VHOST_NET_SET_BACKEND` with fd -1: detaches the vring's backend.
    public func detachBackend(index: UInt32) throws(VhostError) { try perform(.netSetBackend(VringIndex(index), fd: -1)) }
}

extension VhostBackend where Self: ~Copyable {
    // MARK: any fd, for probing the kernel's checks

    /// `VHOST_SET_LOG_FD` with any fd; -1 unbinds.
    public func setLogFD(rawFD: Int32) throws(VhostError) { try perform(.setLogFD(rawFD)) }

    /// `VHOST_SET_VRING_KICK` with any fd, for probing the kernel's checks (an ioctl script's
    /// closed fd or regular file). -1 unbinds.
    public func setVringKick(index: UInt32, rawFD: Int32) throws(VhostError) { try perform(.setVringKick(VringIndex(index), fd: rawFD)) }

    /// `VHOST_SET_VRING_CALL` with any fd. -1 unbinds.
    public func setVringCall(index: UInt32, rawFD: Int32) throws(VhostError) { try perform(.setVringCall(VringIndex(index), fd: rawFD)) }

    /// `VHOST_SET_VRING_ERR` with any fd. -1 unbinds.
    public func setVringErr(index: UInt32, rawFD: Int32) throws(VhostError) { try perform(.setVringErr(VringIndex(index), fd: rawFD)) }

    /// `VHOST_NET_SET_BACKEND` with any fd: a tap, macvtap or packet socket attaches, -1
    /// detaches, anything else earns the kernel's answer (ENOTSOCK, EBADF).
    public func setBackend(index: UInt32, fd backendFD: Int32) throws(VhostError) { try perform(.netSetBackend(VringIndex(index), fd: backendFD)) }
}

/// A socket a vhost-net vring can carry frames through (net.c `get_socket`): a tap queue, or the
/// device end of a frame pipe for the in-process device. One message is one frame, preceded by
/// the virtio-net header when the features put it on the socket side.
public protocol NetworkPort: ~Copyable {
    /// The socket's fd, handed to `VHOST_NET_SET_BACKEND`.
    var fd: Int32 { get }
    /// The interface's name, for messages.
    var name: String { get }
    /// Prepares the socket for the datapath before it is attached (at start and at every
    /// resume): the header length on the socket side (nil: none, the device adds it), what the
    /// driver accepts on RX, the send buffer (nil: the port's default), and the link.
    func prepare(headerLength: Int?, receiveOffloads: Tap.Offloads, sendBuffer: Int32?, linkUp: Bool) throws(VhostError)
    /// The largest payload the host side may send (the interface's MTU), or nil when unbounded.
    func maximumTransmissionUnit() throws(VhostError) -> Int?
}
