import CVhost
import SystemPackage

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
    case tunSetPersist = "TUNSETPERSIST"
    case tunSetOwner = "TUNSETOWNER"
    case tunGetFeatures = "TUNGETFEATURES"
    case tunSetOffload = "TUNSETOFFLOAD"
    case tunSetSendBuffer = "TUNSETSNDBUF"
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
        case .tunSetPersist: CVHOST_TUNSETPERSIST
        case .tunSetOwner: CVHOST_TUNSETOWNER
        case .tunGetFeatures: CVHOST_TUNGETFEATURES
        case .tunSetOffload: CVHOST_TUNSETOFFLOAD
        case .tunSetSendBuffer: CVHOST_TUNSETSNDBUF
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
    public var isVhost: Bool { rawValue.hasPrefix("VHOST_") }

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

/// One ioctl as it happened, for `--trace`: the request's name, its decoded arguments and
/// the result (the return value, or the errno).
public struct IoctlEvent: Sendable, CustomStringConvertible {
    /// The request's name, or a pseudo-event such as `open` or `  → features`.
    public var name: String
    public var arguments: String
    public var result: Result<Int32, Errno>
    /// The request, for a real ioctl (nil for pseudo-events).
    public var request: IoctlRequest?
    /// What the ioctl carried, read after it returned (so a GET's answer is in it), for programs
    /// that replay events: `--record` turns these into script lines.
    public var payload: IoctlPayload

    public init(name: String, arguments: String, result: Result<Int32, Errno>, request: IoctlRequest? = nil, payload: IoctlPayload = .none) {
        self.name = name; self.arguments = arguments; self.result = result
        self.request = request; self.payload = payload
    }

    public var description: String {
        switch result {
        case .success(let value): return "\(name)(\(arguments)) = \(value)"
        case .failure(let errno): return "\(name)(\(arguments)) = -\(errno.name)"
        }
    }
}

/// An ioctl's argument in typed form, as the kernel saw it (or, for a GET, as it answered).
public enum IoctlPayload: Sendable, Equatable {
    case none
    /// A 64-bit word: features, backend features, the log base, a header size, a worker mode.
    case word(UInt64)
    /// `VHOST_GET/SET_FEATURES_ARRAY`'s words.
    case words([UInt64])
    case memoryTable(MemoryTable)
    /// `vhost_vring_state`: an index and a number (num, base, busyloop timeout).
    case vringState(index: UInt32, num: UInt32)
    /// `vhost_vring_file`: an index and an fd (kick, call, err, backend).
    case vringFile(index: UInt32, fd: Int32)
    case vringAddress(index: UInt32, VringAddresses)
    /// An fd on its own (`VHOST_SET_LOG_FD`).
    case fd(Int32)
    /// An interface or device name (`TUNSETIFF`, `open`).
    case name(String)
}

/// Receives every ioctl the library issues.
public typealias IoctlObserver = @Sendable (IoctlEvent) -> Void

/// The one place where ioctls are issued: runs `body` with the request's number (a CVhost
/// wrapper returning 0 or -errno),
/// reports the event to `observer`, and throws every errno as `VhostError.ioctl` naming the
/// request and its arguments. Public so that other backends (the in-process device) report
/// the same events; `body` returns the result or -errno.
///
/// EFAULT and EBADF are thrown like any other errno: the kernel answers EFAULT legitimately in
/// some states (vhost-net's `NET_SET_BACKEND` before the ring addresses are set, a script that
/// orders ioctls wrongly on purpose), so whether one is a bug is the caller's call, made where
/// it catches the error.
@discardableResult
public func performIoctl(_ request: IoctlRequest, _ arguments: @autoclosure () -> String, payload: @autoclosure () -> IoctlPayload = .none,
                  observer: IoctlObserver?, _ body: (UInt) -> Int32) throws(VhostError) -> Int32 {
    let rc = body(request.number)
    let result: Result<Int32, Errno> = rc < 0 ? .failure(Errno(rawValue: -rc)) : .success(rc)
    // The payload is read after the call, so a GET reports what the kernel wrote.
    if let observer { observer(IoctlEvent(name: request.name, arguments: arguments(), result: result, request: request, payload: payload())) }
    guard rc < 0 else { return rc }
    throw .ioctl(IoctlFailure(request: request, arguments: arguments(), errno: Errno(rawValue: -rc)))
}

func hex(_ value: some BinaryInteger) -> String { "0x" + String(value, radix: 16) }
