import Virtio

/// The control plane of a vhost device: the operations QEMU's `VhostOps` (hw/virtio/vhost-backend.c)
/// and rust-vmm's `VhostBackend` trait cover for the kernel backend, one method per ioctl.
///
/// Two types conform: `VhostNetDevice`, the kernel's `/dev/vhost-net`, and the in-process device
/// of the `VhostModel` target, which serves the rings from a thread with the same rules. The
/// NIC (`VhostNet`) is generic over this protocol, so one datapath suite runs on both.
///
/// Eventfds are passed as the owning `EventFD` type, borrowed: the device takes its own reference
/// (the kernel's `eventfd_ctx_fdget`, a `dup` in process), so the caller's value may go away.
/// Vring 0 is RX and vring 1 is TX (net.c `VHOST_NET_VQ_RX`/`VHOST_NET_VQ_TX`).
public protocol VhostBackend: ~Copyable {
    /// What the device is, for messages: `/dev/vhost-net`, `in-process device`.
    var backendName: String { get }

    /// `VHOST_SET_OWNER`: binds the device to this process (and starts the kernel's worker).
    func setOwner() throws(VhostError)
    /// `VHOST_RESET_OWNER`: drops every setting; the device can be set up again.
    func resetOwner() throws(VhostError)
    /// `VHOST_GET_FEATURES`: the offered bits 0...63.
    func features() throws(VhostError) -> VirtioFeatures
    /// `VHOST_SET_FEATURES`: the negotiated bits 0...63.
    func setFeatures(_ features: VirtioFeatures) throws(VhostError)
    /// The offered feature bits as 64-bit words (bit `64 × i + b` is bit `b` of word `i`), for
    /// features beyond bit 63 (`VHOST_GET_FEATURES_ARRAY`, Linux 6.17). The default asks
    /// `features()` and reports no bit above 63.
    func featureWords(count: Int) throws(VhostError) -> [UInt64]
    /// Negotiates feature words; the default accepts only words beyond the first that are zero.
    func setFeatureWords(_ words: [UInt64]) throws(VhostError)
    /// `VHOST_GET_BACKEND_FEATURES`.
    func backendFeatures() throws(VhostError) -> VhostBackendFeatures
    /// `VHOST_SET_BACKEND_FEATURES`.
    func setBackendFeatures(_ features: VhostBackendFeatures) throws(VhostError)
    /// `VHOST_SET_MEM_TABLE`: the GPA → HVA table every descriptor address goes through.
    /// The memory it names must stay mapped until a later table no longer names it, or the
    /// device is closed: the device reads and writes it at any time.
    func setMemoryTable(_ table: MemoryTable) throws(VhostError)
    /// `VHOST_SET_VRING_NUM`.
    func setVringNum(index: UInt32, num: UInt32) throws(VhostError)
    /// `VHOST_SET_VRING_BASE`: where the device starts reading the avail ring.
    func setVringBase(index: UInt32, base: UInt32) throws(VhostError)
    /// `VHOST_GET_VRING_BASE`: the vring's `last_avail_idx`.
    func vringBase(index: UInt32) throws(VhostError) -> UInt32
    /// `VHOST_SET_VRING_ADDR`: the ring parts' host addresses (kept by the device until changed).
    func setVringAddress(index: UInt32, _ addresses: VringAddresses) throws(VhostError)
    /// `VHOST_SET_VRING_KICK`: the eventfd the driver writes to make the device look at the ring.
    func setVringKick(index: UInt32, _ event: borrowing EventFD) throws(VhostError)
    /// `VHOST_SET_VRING_CALL`: the eventfd the device signals when it wants the driver's attention.
    func setVringCall(index: UInt32, _ event: borrowing EventFD) throws(VhostError)
    /// `VHOST_SET_VRING_ERR`: the eventfd the device signals on a ring error (`vq_err`).
    func setVringErr(index: UInt32, _ event: borrowing EventFD) throws(VhostError)
    /// The same ioctl with fd -1: unbinds the kick, call or error eventfd.
    func unbindVring(index: UInt32, _ doorbell: VringDoorbell) throws(VhostError)
    /// `VHOST_SET_VRING_BUSYLOOP_TIMEOUT`, in microseconds.
    func setVringBusyloopTimeout(index: UInt32, microseconds: UInt32) throws(VhostError)
    /// `VHOST_GET_VRING_BUSYLOOP_TIMEOUT`.
    func vringBusyloopTimeout(index: UInt32) throws(VhostError) -> UInt32
    /// `VHOST_SET_LOG_BASE`: the dirty log's host address (kept by the device until changed).
    func setLogBase(_ address: HostAddress) throws(VhostError)
    /// `VHOST_SET_LOG_FD`: the eventfd the device signals when it logged a used-ring update.
    func setLogFD(_ event: borrowing EventFD) throws(VhostError)
    /// `VHOST_NET_SET_BACKEND`: the socket whose frames the vring carries.
    func setBackend<Port: NetworkPort & ~Copyable>(index: UInt32, _ port: borrowing Port) throws(VhostError)
    /// `VHOST_NET_SET_BACKEND` with fd -1: detaches the vring's backend.
    func detachBackend(index: UInt32) throws(VhostError)
    /// The fd device-IOTLB messages are read from and written to (the vhost fd itself), or nil
    /// for a device without an IOTLB.
    var iotlbDescriptor: Int32? { get }
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
}

/// A socket a vhost-net vring can carry frames through (net.c `get_socket`): a tap queue, or the
/// device end of a frame pipe for the in-process device. One message is one frame, preceded by
/// the virtio-net header when the features put it on the socket side.
public protocol NetworkPort: ~Copyable {
    /// The socket's fd, handed to `VHOST_NET_SET_BACKEND`.
    var fd: Int32 { get }
    /// The interface's name, for messages.
    var name: String { get }
    /// Prepares the socket for the datapath before it is attached: the header length on the
    /// socket side (nil: none, the device adds it), what the driver accepts on RX, and the link.
    func prepare(headerLength: Int?, receiveOffloads: Tap.Offloads, linkUp: Bool) throws(VhostError)
    /// The largest payload the host side may send (the interface's MTU), or nil when unbounded.
    func maximumTransmissionUnit() throws(VhostError) -> Int?
}
