import CVhost
import SystemPackage
import Virtio

/// Every ioctl request swift-vhost issues, in one typed table: the kernel's name, the request
/// number (from the UAPI headers, through CVhost), and the rule behind an errno where we know it.
/// Call sites name a case, never a string, and every request goes through `performIoctl`, so
/// `--trace` shows all of them: vhost, tun and the `SIOC*` interface calls alike.
public enum IoctlRequest: String, CaseIterable, Sendable {
    // linux/vhost.h
    case getFeatures = "VHOST_GET_FEATURES"
    case setFeatures = "VHOST_SET_FEATURES"
    case setOwner = "VHOST_SET_OWNER"
    case resetOwner = "VHOST_RESET_OWNER"
    case setMemoryTable = "VHOST_SET_MEM_TABLE"
    case setLogBase = "VHOST_SET_LOG_BASE"
    case setLogFD = "VHOST_SET_LOG_FD"
    case setVringNum = "VHOST_SET_VRING_NUM"
    case setVringAddress = "VHOST_SET_VRING_ADDR"
    case setVringBase = "VHOST_SET_VRING_BASE"
    case getVringBase = "VHOST_GET_VRING_BASE"
    case setVringKick = "VHOST_SET_VRING_KICK"
    case setVringCall = "VHOST_SET_VRING_CALL"
    case setVringErr = "VHOST_SET_VRING_ERR"
    case setVringEndian = "VHOST_SET_VRING_ENDIAN"
    case getVringEndian = "VHOST_GET_VRING_ENDIAN"
    case setVringBusyloopTimeout = "VHOST_SET_VRING_BUSYLOOP_TIMEOUT"
    case getVringBusyloopTimeout = "VHOST_GET_VRING_BUSYLOOP_TIMEOUT"
    case setBackendFeatures = "VHOST_SET_BACKEND_FEATURES"
    case getBackendFeatures = "VHOST_GET_BACKEND_FEATURES"
    case netSetBackend = "VHOST_NET_SET_BACKEND"
    case newWorker = "VHOST_NEW_WORKER"
    case setForkFromOwner = "VHOST_SET_FORK_FROM_OWNER"
    case getForkFromOwner = "VHOST_GET_FORK_FROM_OWNER"
    case getFeaturesArray = "VHOST_GET_FEATURES_ARRAY"
    case setFeaturesArray = "VHOST_SET_FEATURES_ARRAY"
    // linux/if_tun.h
    case tunSetInterface = "TUNSETIFF"
    case tunGetInterface = "TUNGETIFF"
    case tunSetPersist = "TUNSETPERSIST"
    case tunSetOwner = "TUNSETOWNER"
    case tunGetFeatures = "TUNGETFEATURES"
    case tunSetOffload = "TUNSETOFFLOAD"
    case tunSetSendBuffer = "TUNSETSNDBUF"
    case tunGetSendBuffer = "TUNGETSNDBUF"
    case tunSetQueue = "TUNSETQUEUE"
    case tunSetCarrier = "TUNSETCARRIER"
    case tunSetSteeringProgram = "TUNSETSTEERINGEBPF"
    case tunGetVnetHeaderSize = "TUNGETVNETHDRSZ"
    case tunSetVnetHeaderSize = "TUNSETVNETHDRSZ"
    // linux/sockios.h, on an AF_INET datagram socket
    case getInterfaceFlags = "SIOCGIFFLAGS"
    case setInterfaceFlags = "SIOCSIFFLAGS"
    case getInterfaceIndex = "SIOCGIFINDEX"
    case getInterfaceMTU = "SIOCGIFMTU"
    case setInterfaceMTU = "SIOCSIFMTU"
    case getInterfaceHardwareAddress = "SIOCGIFHWADDR"
    case setInterfaceAddress = "SIOCSIFADDR"
    case setInterfaceNetmask = "SIOCSIFNETMASK"

    /// The kernel's name for the request, as `--trace` and errors print it.
    public var name: String { rawValue }

    /// The request number.
    public var number: UInt {
        switch self {
        case .getFeatures: CVHOST_VHOST_GET_FEATURES
        case .setFeatures: CVHOST_VHOST_SET_FEATURES
        case .setOwner: CVHOST_VHOST_SET_OWNER
        case .resetOwner: CVHOST_VHOST_RESET_OWNER
        case .setMemoryTable: CVHOST_VHOST_SET_MEM_TABLE
        case .setLogBase: CVHOST_VHOST_SET_LOG_BASE
        case .setLogFD: CVHOST_VHOST_SET_LOG_FD
        case .setVringNum: CVHOST_VHOST_SET_VRING_NUM
        case .setVringAddress: CVHOST_VHOST_SET_VRING_ADDR
        case .setVringBase: CVHOST_VHOST_SET_VRING_BASE
        case .getVringBase: CVHOST_VHOST_GET_VRING_BASE
        case .setVringKick: CVHOST_VHOST_SET_VRING_KICK
        case .setVringCall: CVHOST_VHOST_SET_VRING_CALL
        case .setVringErr: CVHOST_VHOST_SET_VRING_ERR
        case .setVringEndian: CVHOST_VHOST_SET_VRING_ENDIAN
        case .getVringEndian: CVHOST_VHOST_GET_VRING_ENDIAN
        case .setVringBusyloopTimeout: CVHOST_VHOST_SET_VRING_BUSYLOOP_TIMEOUT
        case .getVringBusyloopTimeout: CVHOST_VHOST_GET_VRING_BUSYLOOP_TIMEOUT
        case .setBackendFeatures: CVHOST_VHOST_SET_BACKEND_FEATURES
        case .getBackendFeatures: CVHOST_VHOST_GET_BACKEND_FEATURES
        case .netSetBackend: CVHOST_VHOST_NET_SET_BACKEND
        case .newWorker: CVHOST_VHOST_NEW_WORKER
        case .setForkFromOwner: CVHOST_VHOST_SET_FORK_FROM_OWNER
        case .getForkFromOwner: CVHOST_VHOST_GET_FORK_FROM_OWNER
        case .getFeaturesArray: CVHOST_VHOST_GET_FEATURES_ARRAY
        case .setFeaturesArray: CVHOST_VHOST_SET_FEATURES_ARRAY
        case .tunSetInterface: CVHOST_TUNSETIFF
        case .tunGetInterface: CVHOST_TUNGETIFF
        case .tunSetPersist: CVHOST_TUNSETPERSIST
        case .tunSetOwner: CVHOST_TUNSETOWNER
        case .tunGetFeatures: CVHOST_TUNGETFEATURES
        case .tunSetOffload: CVHOST_TUNSETOFFLOAD
        case .tunSetSendBuffer: CVHOST_TUNSETSNDBUF
        case .tunGetSendBuffer: CVHOST_TUNGETSNDBUF
        case .tunSetQueue: CVHOST_TUNSETQUEUE
        case .tunSetCarrier: CVHOST_TUNSETCARRIER
        case .tunSetSteeringProgram: CVHOST_TUNSETSTEERINGEBPF
        case .tunGetVnetHeaderSize: CVHOST_TUNGETVNETHDRSZ
        case .tunSetVnetHeaderSize: CVHOST_TUNSETVNETHDRSZ
        case .getInterfaceFlags: CVHOST_SIOCGIFFLAGS
        case .setInterfaceFlags: CVHOST_SIOCSIFFLAGS
        case .getInterfaceIndex: CVHOST_SIOCGIFINDEX
        case .getInterfaceMTU: CVHOST_SIOCGIFMTU
        case .setInterfaceMTU: CVHOST_SIOCSIFMTU
        case .getInterfaceHardwareAddress: CVHOST_SIOCGIFHWADDR
        case .setInterfaceAddress: CVHOST_SIOCSIFADDR
        case .setInterfaceNetmask: CVHOST_SIOCSIFNETMASK
        }
    }

    /// Whether the request goes to a `/dev/vhost-net` fd (owner rules apply).
    public var isVhost: Bool { number >> 8 & 0xff == 0xAF }

    /// The kernel's rule behind `errno` for this request, where we know it.
    public func hint(for errno: Errno) -> String? {
        switch (self, errno) {
        case (.setVringNum, .invalidArgument):
            return "vhost.c vhost_vring_set_num: num must be a power of 2 in 1...32768"
        case (.setVringNum, .resourceBusy), (.setVringBase, .resourceBusy):
            return "the vring has a backend attached; detach it with VHOST_NET_SET_BACKEND(-1) first"
        case (.setMemoryTable, .argListTooLong):
            return "more regions than the vhost module parameter max_mem_regions allows (/sys/module/vhost/parameters/max_mem_regions)"
        case (.setMemoryTable, .notSupported):
            return "the memory table's padding must be 0"
        case (.setFeatures, .notSupported):
            return "a requested feature bit is not offered by VHOST_GET_FEATURES"
        case (.setOwner, .resourceBusy):
            return "this vhost fd already has an owner"
        case (.setForkFromOwner, .resourceBusy):
            return "the worker mode is chosen before VHOST_SET_OWNER (vhost.c vhost_dev_ioctl)"
        case (.setForkFromOwner, .notPermitted), (.getForkFromOwner, .notPermitted):
            return "this kernel has no worker-mode control (Linux 6.17, backported to 6.12.y): it treats the request as a vring ioctl"
        case (.getFeaturesArray, .notPermitted), (.setFeaturesArray, .notPermitted):
            return "this kernel has no feature array (Linux 6.17): it treats the request as a vring ioctl"
        case (_, .permissionDenied) where isVhost, (_, .notPermitted) where isVhost:
            return "the caller is not the vhost owner; call VHOST_SET_OWNER first from this process"
        case (.setVringEndian, .inappropriateIOCTLForDevice), (.getVringEndian, .inappropriateIOCTLForDevice):
            return "this kernel was built without CONFIG_VHOST_CROSS_ENDIAN_LEGACY (vhost.c vhost_set_vring_endian answers ENOIOCTLCMD); Debian's kernels are"
        case (.tunSetQueue, .invalidArgument):
            return "tun.c tun_set_queue: only a queue of a multiqueue tap detaches, and only a detached one re-attaches"
        case (.tunSetSendBuffer, .invalidArgument):
            return "tun.c: the send buffer must be above 0"
        case (.tunSetSteeringProgram, .invalidArgument):
            return "tun.c tun_set_ebpf: the fd must be a BPF_PROG_TYPE_SOCKET_FILTER program (or -1)"
        case (.netSetBackend, .noBufferSpace):
            return "vhost-net has two vrings: 0 (RX) and 1 (TX)"
        case (.netSetBackend, .badAddress):
            return "the vring is not accessible: set its size and addresses (SET_VRING_NUM, SET_VRING_ADDR) before attaching a backend"
        case (.netSetBackend, .notSocket):
            return "the fd is not a tap, macvtap or packet socket"
        case (.setVringAddress, .invalidArgument):
            return "vhost.c vhost_vring_set_addr: avail must be 2-aligned, used and log 4-aligned"
        default:
            return nil
        }
    }
}

/// One operation on a kernel object as it happened, for `--trace` and `--record`: an ioctl
/// with its typed request, the answer and the result, or the opening, closing, reading or writing
/// of a device around it.
public struct IoctlEvent: Sendable, CustomStringConvertible {
    /// What happened.
    public enum Operation: Sendable, Equatable {
        /// An ioctl, with its typed request.
        case request(KernelRequest)
        /// A device node was opened (`/dev/vhost-net`, `/dev/net/tun`).
        case open(path: String)
        /// The vhost fd was closed.
        case close
        /// An IOTLB message was read from the vhost fd.
        case iotlbRead(IOTLBMessage)
        /// An IOTLB message was written to the vhost fd.
        case iotlbWrite(IOTLBMessage)
        /// A request was refused before the ioctl, because the kernel would have written
        /// through an address outside memory mapped for it (or past a buffer of ours).
        case refused(KernelRequest, reason: String)
        /// An IOTLB message was refused before it was written to the vhost fd, because the
        /// kernel would have written through its `uaddr` range, which is not mapped for it.
        case refusedMessage(IOTLBMessage, reason: String)
    }

    public var operation: Operation
    /// The return value, or the errno.
    public var result: Result<Int32, Errno>
    /// What a GET answered (read after the call returned); `.none` for the rest.
    public var answer: VhostAnswer

    public init(_ operation: Operation, result: Result<Int32, Errno>, answer: VhostAnswer = .none) {
        self.operation = operation; self.result = result; self.answer = answer
    }

    /// The typed request, for an ioctl.
    public var request: KernelRequest? {
        if case .request(let request) = operation { return request }
        return nil
    }

    /// Whether the kernel saw the operation (false for a refusal before the ioctl).
    public var reachedKernel: Bool {
        switch operation {
        case .refused, .refusedMessage: false
        default: true
        }
    }

    /// The request's or operation's name: `VHOST_SET_VRING_NUM`, `open`, `write`.
    public var name: String {
        switch operation {
        case .request(let r), .refused(let r, _): r.kind.name
        case .open: "open"
        case .close: "close"
        case .iotlbRead: "read"
        case .iotlbWrite, .refusedMessage: "write"
        }
    }

    /// The decoded arguments.
    public var arguments: String {
        switch operation {
        case .request(let r), .refused(let r, _): r.arguments
        case .open(let path): path
        case .close: ""
        case .iotlbRead(let m), .iotlbWrite(let m), .refusedMessage(let m, _): m.description
        }
    }

    public var description: String {
        let head = "\(name)(\(arguments))"
        if case .refused(_, let reason) = operation { return "\(head) refused before the ioctl: \(reason)" }
        if case .refusedMessage(_, let reason) = operation { return "\(head) refused before the write: \(reason)" }
        switch result {
        case .success(let value):
            guard answer != .none else { return "\(head) = \(value)" }
            var text = "\(head) = \(value) → \(answer)"
            if case .request(.vhost(.getFeatures)) = operation { text += " (\(VirtioFeatures(rawValue: answer.value)))" }
            return text
        case .failure(let errno): return "\(head) = -\(errno.name)"
        }
    }
}

/// Receives every ioctl the library issues.
public typealias IoctlObserver = @Sendable (IoctlEvent) -> Void

/// The one place where ioctls are issued: runs `body` with the request's number (a CVhost
/// wrapper returning 0 or -errno), reports the event with what `answer` reads back to
/// `observer`, and throws every errno as `VhostError.ioctl` naming the request and its
/// arguments. Public so that other backends (the in-process device) report the same events;
/// `body` returns the result or -errno.
///
/// EFAULT and EBADF are thrown like any other errno: the kernel answers EFAULT legitimately in
/// some states (vhost-net's `NET_SET_BACKEND` before the ring addresses are set, a script that
/// orders ioctls wrongly on purpose), so whether one is a bug is the caller's call, made where
/// it catches the error.
@discardableResult
public func performIoctl(_ request: KernelRequest, observer: IoctlObserver?, answer: () -> VhostAnswer = { .none },
                         _ body: (UInt) -> Int32) throws(VhostError) -> Int32 {
    let rc = body(request.kind.number)
    let result: Result<Int32, Errno> = rc < 0 ? .failure(Errno(rawValue: -rc)) : .success(rc)
    // The answer is read after the call, so a GET reports what the kernel wrote.
    if let observer { observer(IoctlEvent(.request(request), result: result, answer: rc < 0 ? .none : answer())) }
    guard rc < 0 else { return rc }
    throw .ioctl(IoctlFailure(request: request, errno: Errno(rawValue: -rc)))
}

func hex(_ value: some BinaryInteger) -> String { "0x" + String(value, radix: 16) }
