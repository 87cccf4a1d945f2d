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
        observer?(IoctlEvent(.open(path: path), result: .success(fd.rawValue)))
    }

    /// Takes a descriptor already opened on a vhost-net device (`CheckedOpen.characterDevice`),
    /// reporting the open of `path` to the observer as `init(path:)` does.
    public init(descriptor: FileDescriptor, path: String, observer: IoctlObserver? = nil) {
        fd = descriptor
        self.path = path
        self.observer = observer
        observer?(IoctlEvent(.open(path: path), result: .success(descriptor.rawValue)))
    }

    deinit { try? fd.close() }

    private var raw: Int32 { fd.rawValue }

    // MARK: the kernel encoding

    /// Encodes `request` as the kernel's ioctl on this fd: the request number, the struct it
    /// points to, and the answer read back. Every vhost request this library issues to the
    /// kernel goes through here (QEMU's vhost_kernel_call), and the observer sees each.
    @discardableResult
    public func perform(_ request: VhostRequest) throws(VhostError) -> VhostAnswer {
        let fd = raw
        let observer = observer
        // Each case fills the argument, issues it, and returns what the kernel answered.
        switch request {
        case .setOwner, .resetOwner:
            try performIoctl(.vhost(request), observer: observer) { cvhost_ioctl_none(fd, $0) }
            return .none
        case .getFeatures, .getBackendFeatures:
            var value: UInt64 = 0
            try performIoctl(.vhost(request), observer: observer, answer: { .value(value) }) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .value(value)
        case .setFeatures(let bits), .setBackendFeatures(let bits):
            var value = bits
            try performIoctl(.vhost(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .none
        case .getFeaturesArray(let count):
            // struct vhost_features_array { __u64 count; __u64 features[]; }: the kernel copies
            // its words and then clears the rest of the `count` the caller gave (net.c
            // vhost_net_ioctl), so the buffer must hold `count` words: a larger count is refused
            // here, before the kernel could write past it.
            guard count <= VhostNetDevice.maximumFeatureWords else {
                throw refuse(request, "a count of \(count) words: the kernel writes every word of it, and this tool allocates at most \(VhostNetDevice.maximumFeatureWords)")
            }
            var buffer = [UInt64](repeating: 0, count: 1 + Int(count))
            buffer[0] = count
            // SAFETY: the buffer holds the count word and `count` feature words, all the kernel writes.
            try performIoctl(.vhost(request), observer: observer, answer: { .words(Array(buffer.dropFirst())) }) { number in
                buffer.withUnsafeMutableBytes { cvhost_ioctl_ptr(fd, number, $0.baseAddress) }
            }
            return .words(Array(buffer.dropFirst()))
        case .setFeaturesArray(let words):
            var buffer = [UInt64(words.count)] + words
            try performIoctl(.vhost(request), observer: observer) { number in
                buffer.withUnsafeMutableBytes { cvhost_ioctl_ptr(fd, number, $0.baseAddress) }
            }
            return .none
        case .setMemoryTable(let table):
            var bytes = table.encoded()
            // SAFETY: the kernel copies the table (vhost_set_memory) before the ioctl returns;
            // the regions it names are the caller's to keep mapped (see VhostBackend.perform).
            try performIoctl(.vhost(request), observer: observer) { number in bytes.withUnsafeMutableBytes { cvhost_ioctl_ptr(fd, number, $0.baseAddress) } }
            return .none
        case .setLogBase(let address):
            var value = address.rawValue
            // SAFETY: the kernel keeps this address and writes log bits there while LOG_ALL is on;
            // the caller (DirtyLog's owner) keeps the log mapped until the device is closed.
            try performIoctl(.vhost(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .none
        case .setLogFD(let file):
            var value = file
            try performIoctl(.vhost(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .none
        case .setVringNum(let index, let num), .setVringBase(let index, let num), .setVringBusyloopTimeout(let index, let num),
             .setVringEndian(let index, let num):
            var state = vhost_vring_state(index: index.rawValue, num: num)
            try performIoctl(.vhost(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &state) }
            return .none
        case .getVringBase(let index), .getVringBusyloopTimeout(let index), .getVringEndian(let index):
            var state = vhost_vring_state(index: index.rawValue, num: 0)
            try performIoctl(.vhost(request), observer: observer, answer: { .value(UInt64(state.num)) }) { cvhost_ioctl_ptr(fd, $0, &state) }
            return .value(UInt64(state.num))
        case .setVringAddress(let index, let addresses):
            var addr = vhost_vring_addr(index: index.rawValue, flags: addresses.flags.rawValue,
                                        desc_user_addr: addresses.descriptors.rawValue, used_user_addr: addresses.used.rawValue,
                                        avail_user_addr: addresses.avail.rawValue, log_guest_addr: addresses.log?.rawValue ?? 0)
            // SAFETY: the kernel keeps these addresses and reads and writes the rings through them
            // from its worker until they are changed or the fd is closed; the ring memory's owner
            // (the session's guest memory, or a script's checked mapping) outlives the device.
            try performIoctl(.vhost(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &addr) }
            return .none
        case .setVringKick(let index, let file), .setVringCall(let index, let file), .setVringErr(let index, let file),
             .netSetBackend(let index, let file):
            var argument = vhost_vring_file(index: index.rawValue, fd: file)
            try performIoctl(.vhost(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &argument) }
            return .none
        case .setForkFromOwner(let mode):
            var value = mode
            try performIoctl(.vhost(request), observer: observer) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .none
        case .getForkFromOwner:
            var value: UInt8 = 0
            try performIoctl(.vhost(request), observer: observer, answer: { .value(UInt64(value)) }) { cvhost_ioctl_ptr(fd, $0, &value) }
            return .value(UInt64(value))
        case .newWorker(let id):
            var state = id
            try performIoctl(.vhost(request), observer: observer, answer: { .value(UInt64(state)) }) { cvhost_ioctl_ptr(fd, $0, &state) }
            return .value(UInt64(state))
        }
    }

    /// The most words `VHOST_GET_FEATURES_ARRAY` may ask for here (the kernel has 2 today).
    public static let maximumFeatureWords: UInt64 = 1024

    /// Reports a request refused before the ioctl to the observer, and returns the error.
    private func refuse(_ request: VhostRequest, _ reason: String) -> VhostError {
        observer?(IoctlEvent(.refused(.vhost(request), reason: reason), result: .failure(.invalidArgument)))
        return .refused(.vhost(request), reason: reason)
    }

    // MARK: features beyond bit 63

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
        if case .words(let words) = try perform(.getFeaturesArray(count: UInt64(max(0, count)))) { return words }
        return []
    }

    /// Negotiates feature words: with a bit above 63, `VHOST_SET_FEATURES_ARRAY` (Linux 6.17);
    /// otherwise the 64-bit `VHOST_SET_FEATURES`, which every kernel has. Once bits above 63 are
    /// in use every later change must go through here: 7.x's 64-bit SET_FEATURES clears them.
    public func setFeatureWords(_ words: [UInt64]) throws(VhostError) {
        guard words.dropFirst().contains(where: { $0 != 0 }) else {
            try setFeatures(VirtioFeatures(rawValue: words.first ?? 0))
            return
        }
        do {
            try perform(.setFeaturesArray(words))
        } catch .ioctl(let failure) where failure.errno != .notSupported {
            throw .unsupportedByKernel("feature bits above 63 (\(HighFeatures(rawValue: words.count > 1 ? words[1] : 0).featureNames.joined(separator: ", "))) need VHOST_SET_FEATURES_ARRAY (Linux 6.17); this kernel has no feature array (\(failure.errno.name))")
        }
    }
}
