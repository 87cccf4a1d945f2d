import CVhost
import Glibc
import SystemPackage
import Virtio

/// The owner of one `/dev/vhost-net` fd: one virtio-net queue pair in the kernel, with vring 0
/// for RX and vring 1 for TX. Each method is one ioctl, named as the kernel names it; a failure
/// throws `VhostError.ioctl` with the request, its arguments and the errno.
/// The fd is closed when the owner goes away, which also stops the kernel's worker.
public struct VhostNetDevice: ~Copyable {
    public static let defaultPath = "/dev/vhost-net"
    /// vhost-net's vrings (drivers/vhost/net.c VHOST_NET_VQ_RX / VHOST_NET_VQ_TX).
    public static let receiveQueueIndex: UInt32 = 0
    public static let transmitQueueIndex: UInt32 = 1

    public let fd: FileDescriptor
    public let path: String
    public var observer: IoctlObserver?
    /// When false, EFAULT and EBADF are thrown like any errno instead of trapping (for running
    /// user-written ioctl sequences, where they are the script's mistake, not ours).
    public var faultsAreBugs = true

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
        observer?(IoctlEvent(name: "open", arguments: path, result: .success(fd.rawValue)))
    }

    deinit { try? fd.close() }

    private var raw: Int32 { fd.rawValue }

    // MARK: owner and features

    public func setOwner() throws(VhostError) {
        try performIoctl("VHOST_SET_OWNER", "", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_none(raw, CVHOST_VHOST_SET_OWNER) }
    }

    public func resetOwner() throws(VhostError) {
        try performIoctl("VHOST_RESET_OWNER", "", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_none(raw, CVHOST_VHOST_RESET_OWNER) }
    }

    public func features() throws(VhostError) -> VirtioFeatures {
        var value: UInt64 = 0
        try performIoctl("VHOST_GET_FEATURES", "", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_GET_FEATURES, &value) }
        observer?(IoctlEvent(name: "  → features", arguments: VirtioFeatures(rawValue: value).description, result: .success(0)))
        return VirtioFeatures(rawValue: value)
    }

    public func setFeatures(_ features: VirtioFeatures) throws(VhostError) {
        var value = features.rawValue
        try performIoctl("VHOST_SET_FEATURES", features.description, observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_FEATURES, &value) }
    }

    public func backendFeatures() throws(VhostError) -> VhostBackendFeatures {
        var value: UInt64 = 0
        try performIoctl("VHOST_GET_BACKEND_FEATURES", "", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_GET_BACKEND_FEATURES, &value) }
        return VhostBackendFeatures(rawValue: value)
    }

    public func setBackendFeatures(_ features: VhostBackendFeatures) throws(VhostError) {
        var value = features.rawValue
        try performIoctl("VHOST_SET_BACKEND_FEATURES", features.description, observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_BACKEND_FEATURES, &value) }
    }

    // MARK: memory

    /// Hands the kernel the guest-physical → host-virtual table it uses to translate every
    /// descriptor address (vhost.c translate_desc).
    public func setMemoryTable(_ table: MemoryTable) throws(VhostError) {
        var bytes = table.encoded()
        try performIoctl("VHOST_SET_MEM_TABLE", table.description, observer: observer, faultsAreBugs: faultsAreBugs) {
            bytes.withUnsafeMutableBytes { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_MEM_TABLE, $0.baseAddress) }
        }
    }

    // MARK: vrings

    public func setVringNum(index: UInt32, num: UInt32) throws(VhostError) {
        var state = vhost_vring_state(index: index, num: num)
        try performIoctl("VHOST_SET_VRING_NUM", "index: \(index), num: \(num)", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_VRING_NUM, &state) }
    }

    public func setVringBase(index: UInt32, base: UInt32) throws(VhostError) {
        var state = vhost_vring_state(index: index, num: base)
        try performIoctl("VHOST_SET_VRING_BASE", "index: \(index), num: \(base)", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_VRING_BASE, &state) }
    }

    /// Returns the vring's `last_avail_idx` (the next avail entry the kernel would read).
    public func vringBase(index: UInt32) throws(VhostError) -> UInt32 {
        var state = vhost_vring_state(index: index, num: 0)
        try performIoctl("VHOST_GET_VRING_BASE", "index: \(index)", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_GET_VRING_BASE, &state) }
        return state.num
    }

    /// Ring addresses are this process's virtual addresses (HVA), not guest-physical.
    public func setVringAddress(index: UInt32, descriptors: UInt64, avail: UInt64, used: UInt64, log: UInt64 = 0, logging: Bool = false) throws(VhostError) {
        var addr = vhost_vring_addr(index: index, flags: logging ? UInt32(1) << UInt32(VHOST_VRING_F_LOG) : 0, // VHOST_VRING_F_LOG is a bit number
                                    desc_user_addr: descriptors, used_user_addr: used, avail_user_addr: avail, log_guest_addr: log)
        try performIoctl("VHOST_SET_VRING_ADDR",
                         "index: \(index), desc: \(hex(descriptors)), avail: \(hex(avail)), used: \(hex(used)), log: \(hex(log)), flags: \(logging ? "LOG" : "0")",
                         observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_VRING_ADDR, &addr) }
    }

    /// fd -1 unbinds.
    public func setVringKick(index: UInt32, fd eventFD: Int32) throws(VhostError) {
        var file = vhost_vring_file(index: index, fd: eventFD)
        try performIoctl("VHOST_SET_VRING_KICK", "index: \(index), fd: \(eventFD)", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_VRING_KICK, &file) }
    }

    public func setVringCall(index: UInt32, fd eventFD: Int32) throws(VhostError) {
        var file = vhost_vring_file(index: index, fd: eventFD)
        try performIoctl("VHOST_SET_VRING_CALL", "index: \(index), fd: \(eventFD)", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_VRING_CALL, &file) }
    }

    public func setVringErr(index: UInt32, fd eventFD: Int32) throws(VhostError) {
        var file = vhost_vring_file(index: index, fd: eventFD)
        try performIoctl("VHOST_SET_VRING_ERR", "index: \(index), fd: \(eventFD)", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_VRING_ERR, &file) }
    }

    /// The worker spins this many microseconds before sleeping.
    public func setVringBusyloopTimeout(index: UInt32, microseconds: UInt32) throws(VhostError) {
        var state = vhost_vring_state(index: index, num: microseconds)
        try performIoctl("VHOST_SET_VRING_BUSYLOOP_TIMEOUT", "index: \(index), num: \(microseconds)", observer: observer, faultsAreBugs: faultsAreBugs) {
            cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_VRING_BUSYLOOP_TIMEOUT, &state)
        }
    }

    public func vringBusyloopTimeout(index: UInt32) throws(VhostError) -> UInt32 {
        var state = vhost_vring_state(index: index, num: 0)
        try performIoctl("VHOST_GET_VRING_BUSYLOOP_TIMEOUT", "index: \(index)", observer: observer, faultsAreBugs: faultsAreBugs) {
            cvhost_ioctl_ptr(raw, CVHOST_VHOST_GET_VRING_BUSYLOOP_TIMEOUT, &state)
        }
        return state.num
    }

    /// Attaches (tap fd) or detaches (-1) the backend of a vring.
    public func setBackend(index: UInt32, fd backendFD: Int32) throws(VhostError) {
        var file = vhost_vring_file(index: index, fd: backendFD)
        try performIoctl("VHOST_NET_SET_BACKEND", "index: \(index), fd: \(backendFD)", observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_NET_SET_BACKEND, &file) }
    }

    /// `VHOST_SET_LOG_BASE`: the dirty log's host address.
    public func setLogBase(_ address: UInt64) throws(VhostError) {
        var value = address
        try performIoctl("VHOST_SET_LOG_BASE", hex(address), observer: observer, faultsAreBugs: faultsAreBugs) { cvhost_ioctl_ptr(raw, CVHOST_VHOST_SET_LOG_BASE, &value) }
    }
}
