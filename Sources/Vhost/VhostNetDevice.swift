import CVhost
import Glibc
import SystemPackage
import Virtio

/// The owner of one `/dev/vhost-net` fd: one virtio-net queue pair in the kernel, with vring 0
/// for RX and vring 1 for TX. Each method is one ioctl, named as the kernel names it; a failure
/// throws `VhostError.ioctl` with the request, its arguments and the errno.
///
/// Closing the fd (when the owner goes away) stops the kernel's worker and drops its hold on
/// this process's memory (net.c vhost_net_release), synchronously. Whoever owns guest memory
/// must therefore let this value go first: `VhostNetSession` is declared that way.
public struct VhostNetDevice: ~Copyable, VhostBackend {
    public static let defaultPath = "/dev/vhost-net"
    /// vhost-net's vrings (drivers/vhost/net.c VHOST_NET_VQ_RX / VHOST_NET_VQ_TX).
    public static let receiveQueueIndex: UInt32 = 0
    public static let transmitQueueIndex: UInt32 = 1

    public let fd: FileDescriptor
    public let path: String
    public var observer: IoctlObserver?

    public var backendName: String { path }
    /// The vhost fd carries the IOTLB messages (vhost.c vhost_chr_read_iter, vhost_chr_write_iter).
    public var iotlbDescriptor: Int32? { fd.rawValue }

    /// Opens the device. ENOENT → "load it with modprobe vhost_net"; EACCES/EPERM → "needs root".
    public init(path: String = VhostNetDevice.defaultPath, observer: IoctlObserver? = nil) throws(VhostError) {
        self.path = path
        self.observer = observer
        do {
            fd = try FileDescriptor.open(FilePath(path), .readWrite, options: [.closeOnExec])
        } catch let errno as Errno {
            switch errno {
            case .noSuchFileOrDirectory, .noSuchAddressOrDevice, .operationNotSupportedByDevice:
                throw .deviceMissing(path: path)
            case .permissionDenied, .notPermitted:
                throw .permissionDenied(path: path, errno: errno)
            default:
                throw .system(call: "open", detail: path, errno: errno)
            }
        } catch {
            throw .system(call: "open", detail: path, errno: .ioError)
        }
        observer?(IoctlEvent(name: "open", arguments: path, result: .success(fd.rawValue), payload: .name(path)))
    }

    deinit { try? fd.close() }

    private var raw: Int32 { fd.rawValue }

    // MARK: owner and features

    public func setOwner() throws(VhostError) {
        try performIoctl(.setOwner, "", observer: observer) { request in cvhost_ioctl_none(raw, request) }
    }

    public func resetOwner() throws(VhostError) {
        try performIoctl(.resetOwner, "", observer: observer) { request in cvhost_ioctl_none(raw, request) }
    }

    public func features() throws(VhostError) -> VirtioFeatures {
        var value: UInt64 = 0
        try performIoctl(.getFeatures, "", payload: .word(value), observer: observer) { request in cvhost_ioctl_ptr(raw, request, &value) }
        observer?(IoctlEvent(name: "  → features", arguments: VirtioFeatures(rawValue: value).description, result: .success(0)))
        return VirtioFeatures(rawValue: value)
    }

    public func setFeatures(_ features: VirtioFeatures) throws(VhostError) {
        var value = features.rawValue
        try performIoctl(.setFeatures, features.description, payload: .word(value), observer: observer) { request in cvhost_ioctl_ptr(raw, request, &value) }
    }

    /// `VHOST_GET_FEATURES_ARRAY` (Linux 6.17): `count` words of offered features, bit
    /// `64 × i + b` in bit `b` of word `i`. Kernels without it treat the request as a vring ioctl
    /// (EPERM, ENOTTY or ENOBUFS); then the 64-bit `VHOST_GET_FEATURES` answers, with no bit
    /// above 63 (QEMU's vhost_kernel_get_features does the same).
    public func featureWords(count: Int) throws(VhostError) -> [UInt64] {
        if let words = try? extendedFeatureWords(count: count) { return words }
        return [try features().rawValue] + [UInt64](repeating: 0, count: max(0, count - 1))
    }

    /// `VHOST_GET_FEATURES_ARRAY` itself, without a fallback: throws the kernel's answer when it
    /// has no feature array.
    public func extendedFeatureWords(count: Int) throws(VhostError) -> [UInt64] {
        var buffer = [UInt64](repeating: 0, count: 1 + max(0, count))
        buffer[0] = UInt64(count)
        try performIoctl(.getFeaturesArray, "count: \(count)", payload: .words(Array(buffer.dropFirst())), observer: observer) { request in
            buffer.withUnsafeMutableBytes { cvhost_ioctl_ptr(raw, request, $0.baseAddress) }
        }
        let words = Array(buffer.dropFirst())
        observer?(IoctlEvent(name: "  → features", arguments: words.map { "0x" + String($0, radix: 16) }.joined(separator: ", "), result: .success(0)))
        return words
    }

    /// Negotiates feature words: with a bit above 63, `VHOST_SET_FEATURES_ARRAY` (Linux 6.17);
    /// otherwise the 64-bit `VHOST_SET_FEATURES`, which every kernel has. Once bits above 63 are
    /// in use every later change must go through here: 7.x's 64-bit SET_FEATURES clears them.
    public func setFeatureWords(_ words: [UInt64]) throws(VhostError) {
        guard words.dropFirst().contains(where: { $0 != 0 }) else {
            try setFeatures(VirtioFeatures(rawValue: words.first ?? 0))
            return
        }
        var buffer = [UInt64(words.count)] + words
        do {
            try performIoctl(.setFeaturesArray, "count: \(words.count), " + words.map { "0x" + String($0, radix: 16) }.joined(separator: ", "), payload: .words(words), observer: observer) { request in
                buffer.withUnsafeMutableBytes { cvhost_ioctl_ptr(raw, request, $0.baseAddress) }
            }
        } catch .ioctl(let failure) where failure.errno != .notSupported {
            throw .unsupportedByKernel("feature bits above 63 (\(HighFeatures(rawValue: words.count > 1 ? words[1] : 0).featureNames.joined(separator: ", "))) need VHOST_SET_FEATURES_ARRAY (Linux 6.17); this kernel has no feature array (\(failure.errno.name))")
        }
    }

    public func backendFeatures() throws(VhostError) -> VhostBackendFeatures {
        var value: UInt64 = 0
        try performIoctl(.getBackendFeatures, "", payload: .word(value), observer: observer) { request in cvhost_ioctl_ptr(raw, request, &value) }
        return VhostBackendFeatures(rawValue: value)
    }

    public func setBackendFeatures(_ features: VhostBackendFeatures) throws(VhostError) {
        var value = features.rawValue
        try performIoctl(.setBackendFeatures, features.description, payload: .word(value), observer: observer) { request in cvhost_ioctl_ptr(raw, request, &value) }
    }

    // MARK: memory

    /// Hands the kernel the guest-physical → host-virtual table it uses to translate every
    /// descriptor address (vhost.c translate_desc).
    public func setMemoryTable(_ table: MemoryTable) throws(VhostError) {
        var bytes = table.encoded()
        try performIoctl(.setMemoryTable, table.description, payload: .memoryTable(table), observer: observer) { request in
            // SAFETY: the kernel copies the table (vhost_set_memory) before the ioctl returns;
            // the regions it names are the caller's to keep mapped (see VhostBackend).
            bytes.withUnsafeMutableBytes { cvhost_ioctl_ptr(raw, request, $0.baseAddress) }
        }
    }

    /// `VHOST_SET_LOG_BASE`: the dirty log's host address.
    public func setLogBase(_ address: HostAddress) throws(VhostError) {
        var value = address.rawValue
        // SAFETY: the kernel keeps this address and writes log bits there while LOG_ALL is on;
        // the caller (DirtyLog's owner) keeps the log mapped until the device is closed.
        try performIoctl(.setLogBase, address.description, payload: .word(address.rawValue), observer: observer) { request in cvhost_ioctl_ptr(raw, request, &value) }
    }

    /// `VHOST_SET_LOG_FD`: signalled after the kernel logs a used-ring write (vhost.c log_ctx).
    public func setLogFD(_ event: borrowing EventFD) throws(VhostError) { try setLogFD(rawFD: event.fd) }

    /// `VHOST_SET_LOG_FD` with any fd; -1 unbinds.
    public func setLogFD(rawFD: Int32) throws(VhostError) {
        var value = rawFD
        try performIoctl(.setLogFD, "fd: \(rawFD)", payload: .fd(rawFD), observer: observer) { request in cvhost_ioctl_ptr(raw, request, &value) }
    }

    // MARK: vrings

    public func setVringNum(index: UInt32, num: UInt32) throws(VhostError) { try vringState(.setVringNum, index: index, num: num) }

    public func setVringBase(index: UInt32, base: UInt32) throws(VhostError) { try vringState(.setVringBase, index: index, num: base) }

    /// Returns the vring's `last_avail_idx` (the next avail entry the kernel would read).
    public func vringBase(index: UInt32) throws(VhostError) -> UInt32 { try vringState(.getVringBase, index: index, num: 0, describe: false) }

    /// Ring addresses are this process's virtual addresses (HVA), not guest-physical.
    public func setVringAddress(index: UInt32, _ addresses: VringAddresses) throws(VhostError) {
        let logging = addresses.log != nil
        // VHOST_VRING_F_LOG is a bit number (linux/vhost_types.h), so the flag is 1 << it.
        var addr = vhost_vring_addr(index: index, flags: logging ? UInt32(1) << UInt32(VHOST_VRING_F_LOG) : 0,
                                    desc_user_addr: addresses.descriptors.rawValue, used_user_addr: addresses.used.rawValue,
                                    avail_user_addr: addresses.avail.rawValue, log_guest_addr: addresses.log?.rawValue ?? 0)
        // SAFETY: the kernel keeps these addresses and reads and writes the rings through them
        // from its worker until they are changed or the fd is closed; the ring memory's owner
        // (the session's guest memory) outlives the device.
        try performIoctl(.setVringAddress,
                         "index: \(index), desc: \(addresses.descriptors), avail: \(addresses.avail), used: \(addresses.used), log: \(hex(addresses.log?.rawValue ?? 0)), flags: \(logging ? "LOG" : "0")",
                         payload: .vringAddress(index: index, addresses), observer: observer) { request in cvhost_ioctl_ptr(raw, request, &addr) }
    }

    public func setVringKick(index: UInt32, _ event: borrowing EventFD) throws(VhostError) { try setVringKick(index: index, rawFD: event.fd) }
    public func setVringCall(index: UInt32, _ event: borrowing EventFD) throws(VhostError) { try setVringCall(index: index, rawFD: event.fd) }
    public func setVringErr(index: UInt32, _ event: borrowing EventFD) throws(VhostError) { try setVringErr(index: index, rawFD: event.fd) }

    public func unbindVring(index: UInt32, _ doorbell: VringDoorbell) throws(VhostError) {
        switch doorbell {
        case .kick: try setVringKick(index: index, rawFD: -1)
        case .call: try setVringCall(index: index, rawFD: -1)
        case .error: try setVringErr(index: index, rawFD: -1)
        }
    }

    /// `VHOST_SET_VRING_KICK` with any fd, for probing the kernel's checks (an ioctl script's
    /// closed fd or regular file). -1 unbinds.
    public func setVringKick(index: UInt32, rawFD: Int32) throws(VhostError) {
        try setVringFile(.setVringKick, index: index, fd: rawFD)
    }

    /// `VHOST_SET_VRING_CALL` with any fd. -1 unbinds.
    public func setVringCall(index: UInt32, rawFD: Int32) throws(VhostError) {
        try setVringFile(.setVringCall, index: index, fd: rawFD)
    }

    /// `VHOST_SET_VRING_ERR` with any fd. -1 unbinds.
    public func setVringErr(index: UInt32, rawFD: Int32) throws(VhostError) {
        try setVringFile(.setVringErr, index: index, fd: rawFD)
    }

    /// The worker spins this many microseconds before sleeping.
    public func setVringBusyloopTimeout(index: UInt32, microseconds: UInt32) throws(VhostError) {
        try vringState(.setVringBusyloopTimeout, index: index, num: microseconds)
    }

    public func vringBusyloopTimeout(index: UInt32) throws(VhostError) -> UInt32 {
        try vringState(.getVringBusyloopTimeout, index: index, num: 0, describe: false)
    }

    // MARK: backend

    public func setBackend<Port: NetworkPort & ~Copyable>(index: UInt32, _ port: borrowing Port) throws(VhostError) {
        try setBackend(index: index, fd: port.fd)
    }

    public func detachBackend(index: UInt32) throws(VhostError) { try setBackend(index: index, fd: -1) }

    /// `VHOST_NET_SET_BACKEND` with any fd: a tap, macvtap or packet socket attaches, -1
    /// detaches, anything else earns the kernel's answer (ENOTSOCK, EBADF).
    public func setBackend(index: UInt32, fd backendFD: Int32) throws(VhostError) {
        try setVringFile(.netSetBackend, index: index, fd: backendFD)
    }

    /// The ioctls that take a `vhost_vring_file` (a vring index and an fd).
    private func setVringFile(_ request: IoctlRequest, index: UInt32, fd file: Int32) throws(VhostError) {
        var argument = vhost_vring_file(index: index, fd: file)
        try performIoctl(request, "index: \(index), fd: \(file)", payload: .vringFile(index: index, fd: file), observer: observer) { cvhost_ioctl_ptr(raw, $0, &argument) }
    }

    /// The ioctls that take a `vhost_vring_state` (a vring index and a number); returns the number back.
    @discardableResult
    private func vringState(_ request: IoctlRequest, index: UInt32, num: UInt32, describe: Bool = true) throws(VhostError) -> UInt32 {
        var state = vhost_vring_state(index: index, num: num)
        try performIoctl(request, describe ? "index: \(index), num: \(num)" : "index: \(index)", payload: .vringState(index: state.index, num: state.num), observer: observer) { cvhost_ioctl_ptr(raw, $0, &state) }
        return state.num
    }
}
