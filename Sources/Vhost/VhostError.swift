import SystemPackage

/// Every way the kernel-facing layer fails, each with a message that says what to do.
public enum VhostError: Error, Equatable, CustomStringConvertible {
    /// An ioctl returned an error (EFAULT and EBADF included: see `performIoctl`).
    case ioctl(IoctlFailure)
    /// `/dev/vhost-net` does not exist (module not loaded, or not built).
    case deviceMissing(path: String)
    /// Opening the device was refused (not root, or no access to the node).
    case permissionDenied(path: String, errno: Errno)
    /// Any other failure of a system call, named.
    case system(call: String, detail: String, errno: Errno)
    /// A request refused before the ioctl: the kernel would have written through an address
    /// outside memory mapped for it, or past a buffer of ours. The tool's memory stays safe
    /// whatever a script asks.
    case refused(KernelRequest, reason: String)
    /// Being replaced; only VhostScript uses it. Every other layer throws one of the
    /// cases below, which say what kind of failure it is.
    case invalidArgument(String)
    /// A configuration the library refuses before the kernel sees it, with the rule it breaks: a
    /// queue or buffer size, a combination of features, a guest memory layout, a tap name, a
    /// number of queue pairs. What the user (or the caller) asked for cannot work as given.
    case invalidConfiguration(String)
    /// Guest memory has no room for what was asked (a region is full); the message says how
    /// much was left and what to give it.
    case outOfGuestMemory(String)
    /// The call does not fit the state the object is in now: a resume without a stop, a change
    /// of the TX buffers while chains are in flight, an unplug of a region that was never
    /// hot-plugged, a migration whose dirty log did not start.
    case invalidState(String)
    /// An input file cannot be read: it does not exist, is not permitted, or a read failed.
    /// `errno` is what the system call said, when one did.
    case unreadableFile(path: String, problem: String, errno: Errno?)
    /// An output file cannot be created or written: its directory is missing or not writable,
    /// or a write failed. `errno` is what the system call said, when one did.
    case unwritableFile(path: String, problem: String, errno: Errno?)
    /// An input was read but its bytes are not what they must be (a corrupt, truncated or
    /// oversized pcap file): `problem` says what and where.
    case corruptInput(path: String, problem: String)
    /// A tap could not be created or attached.
    case tap(name: String, problem: TapProblem, reason: String)
    /// The kernel does not offer a requested feature.
    case featureUnavailable(requested: String, offered: String)
    /// The running kernel cannot do what was asked (a capability that is not a feature bit).
    case unsupportedByKernel(String)
    /// The kernel did not complete work in time (a stalled or detached vring).
    case timeout(String)
    /// The device broke the virtio protocol on a queue (virtio_ring.c BAD_RING): the queue is
    /// marked broken and carries nothing more until it is set up again. The process is unharmed.
    case brokenQueue(queue: String, reason: String)

    public var description: String {
        switch self {
        case .ioctl(let failure):
            return failure.description
        case .deviceMissing(let path):
            return "vhost-net is not available: \(path) does not exist; load it with `modprobe vhost_net`"
        case .permissionDenied(let path, let errno):
            return "cannot open \(path): \(errno.name) (\(errno)); needs root or access to \(path)"
        case .system(let call, let detail, let errno):
            return "\(call)\(detail.isEmpty ? "" : " " + detail) failed: \(errno.name) (\(errno))"
        case .refused(let request, let reason):
            return "\(request) refused before the ioctl: \(reason)"
        case .invalidArgument(let message), .invalidConfiguration(let message), .outOfGuestMemory(let message), .invalidState(let message):
            return message
        case .unreadableFile(let path, let problem, let errno):
            return "cannot read \(path): \(problem)" + (errno.map { " (\($0.name): \($0))" } ?? "")
        case .unwritableFile(let path, let problem, let errno):
            return "cannot write \(path): \(problem)" + (errno.map { " (\($0.name): \($0))" } ?? "")
        case .corruptInput(let path, let problem):
            return "\(path): \(problem)"
        case .tap(let name, _, let reason):
            return "tap \(name): \(reason)"
        case .featureUnavailable(let requested, let offered):
            return "the kernel does not offer \(requested); it offers \(offered)"
        case .unsupportedByKernel(let message):
            return "\(message) (running \(KernelInfo.release()))"
        case .timeout(let what):
            return "timed out: \(what)"
        case .brokenQueue(let queue, let reason):
            return "queue \(queue) is broken: the device broke the virtio protocol (\(reason)); it carries nothing more until set up again"
        }
    }
}

/// Why a tap could not be had.
public enum TapProblem: Sendable, Equatable {
    /// /dev/net/tun is missing (the tun module is not loaded).
    case driverMissing
    /// Not root, no CAP_NET_ADMIN, or the tap belongs to another user.
    case permission
    /// Another process has the (single-queue) tap open.
    case busy
    /// The name belongs to an interface that is not a tap of these flags, or is invalid.
    case nameTaken
    /// Asked to attach to a tap that does not exist.
    case missing
    /// Asked to create a tap that already exists.
    case exists
    case other
}

/// A failed ioctl: the typed request (which prints its arguments) and the errno.
public struct IoctlFailure: Error, Equatable, CustomStringConvertible {
    /// The request as it was issued.
    public var issued: KernelRequest
    public var errno: Errno

    public init(request: KernelRequest, errno: Errno) {
        self.issued = request; self.errno = errno
    }

    /// The request's entry in the number table.
    public var request: IoctlRequest { issued.kind }
    /// The decoded arguments.
    public var arguments: String { issued.arguments }
    /// The request's kernel name, e.g. `VHOST_SET_VRING_NUM`.
    public var name: String { request.name }

    public var description: String {
        var text = "\(issued) failed: \(errno.name) (\(errno))"
        if let hint = request.hint(for: errno) { text += "; " + hint }
        return text
    }
}

extension Errno {
    /// The symbolic name (`EINVAL`), for messages that name the errno the way the kernel does.
    public var name: String {
        switch self {
        case .notPermitted: return "EPERM"
        case .noSuchFileOrDirectory: return "ENOENT"
        case .interrupted: return "EINTR"
        case .ioError: return "EIO"
        case .badFileDescriptor: return "EBADF"
        case .resourceTemporarilyUnavailable: return "EAGAIN"
        case .noMemory: return "ENOMEM"
        case .permissionDenied: return "EACCES"
        case .badAddress: return "EFAULT"
        case .resourceBusy: return "EBUSY"
        case .fileExists: return "EEXIST"
        case .operationNotSupportedByDevice: return "ENODEV"
        case .invalidArgument: return "EINVAL"
        case .noSpace: return "ENOSPC"
        case .argListTooLong: return "E2BIG"
        case .notSupported: return "EOPNOTSUPP"
        case .noBufferSpace: return "ENOBUFS"
        case .notSocket: return "ENOTSOCK"
        case .inappropriateIOCTLForDevice: return "ENOTTY"
        case .networkDown: return "ENETDOWN"
        case .noSuchAddressOrDevice: return "ENXIO"
        case .timedOut: return "ETIMEDOUT"
        case .messageTooLong: return "EMSGSIZE"
        case .outOfRange: return "ERANGE"
        default: return "errno \(rawValue)"
        }
    }
}
