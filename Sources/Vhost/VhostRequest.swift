import SystemPackage
import Virtio

/// A vring of a vhost device, by index: vhost-net has two, 0 (RX) and 1 (TX) (net.c
/// `VHOST_NET_VQ_RX`/`VHOST_NET_VQ_TX`). Any 32-bit value can be written, so that a script can
/// ask the kernel about an index it does not have (ENOBUFS).
public struct VringIndex: RawRepresentable, Hashable, Sendable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt32) { rawValue = value }

    /// vhost-net's RX vring (net.c `VHOST_NET_VQ_RX`).
    public static let receive = VringIndex(0)
    /// vhost-net's TX vring (net.c `VHOST_NET_VQ_TX`).
    public static let transmit = VringIndex(1)

    public var description: String { "\(rawValue)" }
}

/// `VHOST_SET_VRING_ADDR`'s `flags` word. The kernel accepts only `VHOST_VRING_F_LOG` and
/// answers EOPNOTSUPP for any other bit (vhost.c vhost_vring_set_addr), so the library sets only
/// `.log`; a script's raw form may carry any bits.
public struct VringAddressFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `VHOST_VRING_F_LOG` (bit 0, linux/vhost_types.h): log writes to the used ring.
    public static let log = VringAddressFlags(rawValue: 1 << 0)
}

/// Every request a vhost device takes, as one typed value: the ioctls of linux/vhost.h that
/// vhost-net answers, each with its arguments. The value is what a program asks; the kernel
/// encoding (`VhostNetDevice.perform`) and the in-process model (`InProcessVhostNetDevice.perform`)
/// both decode it, `--trace` and errors print it (`description`), and the script language parses
/// into it and the recorder writes it back (`VhostRequest.syntax`).
///
/// The answer of each request comes back as a `VhostAnswer`: `.value` for the GET requests that
/// return one number, `.words` for the feature array, `.none` for the rest.
public enum VhostRequest: Sendable, Equatable, CustomStringConvertible {
    /// `VHOST_SET_OWNER`: binds the device to this process and starts its worker.
    case setOwner
    /// `VHOST_RESET_OWNER`: drops every setting.
    case resetOwner
    /// `VHOST_GET_FEATURES`: answers `.value`, the offered bits 0...63.
    case getFeatures
    /// `VHOST_SET_FEATURES` with a raw feature word.
    case setFeatures(UInt64)
    /// `VHOST_GET_FEATURES_ARRAY` (Linux 6.17) for `count` words: answers `.words`.
    case getFeaturesArray(count: UInt64)
    /// `VHOST_SET_FEATURES_ARRAY` (Linux 6.17) with these words (bit 64·i+b is bit b of word i).
    case setFeaturesArray([UInt64])
    /// `VHOST_GET_BACKEND_FEATURES`: answers `.value`.
    case getBackendFeatures
    /// `VHOST_SET_BACKEND_FEATURES` with a raw word.
    case setBackendFeatures(UInt64)
    /// `VHOST_SET_MEM_TABLE`: the GPA → HVA table, passed region by region as written.
    case setMemoryTable(MemoryTable)
    /// `VHOST_SET_LOG_BASE`: the dirty log's host address.
    case setLogBase(HostAddress)
    /// `VHOST_SET_LOG_FD` with an fd (-1 unbinds).
    case setLogFD(Int32)
    /// `VHOST_SET_VRING_NUM`.
    case setVringNum(VringIndex, UInt32)
    /// `VHOST_SET_VRING_BASE`.
    case setVringBase(VringIndex, UInt32)
    /// `VHOST_GET_VRING_BASE`: answers `.value`, the vring's `last_avail_idx`.
    case getVringBase(VringIndex)
    /// `VHOST_SET_VRING_ADDR`: the ring parts' host addresses, the log's GPA and the flags.
    case setVringAddress(VringIndex, VringAddresses)
    /// `VHOST_SET_VRING_KICK` with an fd (-1 unbinds).
    case setVringKick(VringIndex, fd: Int32)
    /// `VHOST_SET_VRING_CALL` with an fd (-1 unbinds).
    case setVringCall(VringIndex, fd: Int32)
    /// `VHOST_SET_VRING_ERR` with an fd (-1 unbinds).
    case setVringErr(VringIndex, fd: Int32)
    /// `VHOST_SET_VRING_BUSYLOOP_TIMEOUT`, in microseconds.
    case setVringBusyloopTimeout(VringIndex, UInt32)
    /// `VHOST_GET_VRING_BUSYLOOP_TIMEOUT`: answers `.value`.
    case getVringBusyloopTimeout(VringIndex)
    /// `VHOST_NET_SET_BACKEND` with an fd (-1 detaches).
    case netSetBackend(VringIndex, fd: Int32)
    /// `VHOST_SET_VRING_ENDIAN`: 0 little-endian, 1 big-endian, for legacy virtio on a
    /// cross-endian host. Only kernels built with `CONFIG_VHOST_CROSS_ENDIAN_LEGACY` take it
    /// (Debian's do not: ENOTTY after the owner and index checks).
    case setVringEndian(VringIndex, UInt32)
    /// `VHOST_GET_VRING_ENDIAN`: answers `.value`, where the kernel has it.
    case getVringEndian(VringIndex)
    /// `VHOST_SET_FORK_FROM_OWNER` (6.17, backported to 6.12.y): 1 task, 0 kthread.
    case setForkFromOwner(UInt8)
    /// `VHOST_GET_FORK_FROM_OWNER`: answers `.value`.
    case getForkFromOwner
    /// `VHOST_NEW_WORKER` with `worker_id` in the argument (only vhost-scsi routes it): answers `.value`.
    case newWorker(UInt32)

    /// The request's entry in the number table.
    public var kind: IoctlRequest {
        switch self {
        case .setOwner: .setOwner
        case .resetOwner: .resetOwner
        case .getFeatures: .getFeatures
        case .setFeatures: .setFeatures
        case .getFeaturesArray: .getFeaturesArray
        case .setFeaturesArray: .setFeaturesArray
        case .getBackendFeatures: .getBackendFeatures
        case .setBackendFeatures: .setBackendFeatures
        case .setMemoryTable: .setMemoryTable
        case .setLogBase: .setLogBase
        case .setLogFD: .setLogFD
        case .setVringNum: .setVringNum
        case .setVringBase: .setVringBase
        case .getVringBase: .getVringBase
        case .setVringAddress: .setVringAddress
        case .setVringKick: .setVringKick
        case .setVringCall: .setVringCall
        case .setVringErr: .setVringErr
        case .setVringBusyloopTimeout: .setVringBusyloopTimeout
        case .getVringBusyloopTimeout: .getVringBusyloopTimeout
        case .netSetBackend: .netSetBackend
        case .setVringEndian: .setVringEndian
        case .getVringEndian: .getVringEndian
        case .setForkFromOwner: .setForkFromOwner
        case .getForkFromOwner: .getForkFromOwner
        case .newWorker: .newWorker
        }
    }

    /// The vring the request names, for the requests that take one.
    public var vring: VringIndex? {
        switch self {
        case .setVringNum(let i, _), .setVringBase(let i, _), .getVringBase(let i), .setVringAddress(let i, _),
             .setVringKick(let i, _), .setVringCall(let i, _), .setVringErr(let i, _), .setVringBusyloopTimeout(let i, _),
             .getVringBusyloopTimeout(let i), .netSetBackend(let i, _), .setVringEndian(let i, _), .getVringEndian(let i):
            i
        default: nil
        }
    }

    /// The decoded arguments, as `--trace` and errors print them.
    public var arguments: String {
        switch self {
        case .setOwner, .resetOwner, .getFeatures, .getBackendFeatures, .getForkFromOwner: ""
        case .setFeatures(let bits): VirtioFeatures(rawValue: bits).description
        case .getFeaturesArray(let count): "count: \(count)"
        case .setFeaturesArray(let words): "count: \(words.count), " + words.map(hex).joined(separator: ", ")
        case .setBackendFeatures(let bits): VhostBackendFeatures(rawValue: bits).description
        case .setMemoryTable(let table): table.description
        case .setLogBase(let address): address.description
        case .setLogFD(let fd): "fd: \(fd)"
        case .setVringNum(let i, let n), .setVringBase(let i, let n), .setVringBusyloopTimeout(let i, let n), .setVringEndian(let i, let n):
            "index: \(i), num: \(n)"
        case .getVringBase(let i), .getVringBusyloopTimeout(let i), .getVringEndian(let i): "index: \(i)"
        case .setVringAddress(let i, let a):
            "index: \(i), desc: \(a.descriptors), avail: \(a.avail), used: \(a.used), log: \(hex(a.log?.rawValue ?? 0)), flags: \(Self.describe(a.flags))"
        case .setVringKick(let i, let fd), .setVringCall(let i, let fd), .setVringErr(let i, let fd), .netSetBackend(let i, let fd):
            "index: \(i), fd: \(fd)"
        case .setForkFromOwner(let mode): mode == 1 ? "task" : mode == 0 ? "kthread" : "\(mode)"
        case .newWorker(let id): "worker_id: \(id)"
        }
    }

    static func describe(_ flags: VringAddressFlags) -> String {
        if flags.isEmpty { return "0" }
        var parts: [String] = flags.contains(.log) ? ["LOG"] : []
        let rest = flags.rawValue & ~VringAddressFlags.log.rawValue
        if rest != 0 { parts.append(hex(rest)) }
        return parts.joined(separator: "|")
    }

    /// `NAME(arguments)`, as `--trace` prints it.
    public var description: String { "\(kind.name)(\(arguments))" }
}

/// What a request answered: nothing, one number (a GET), or feature words.
public enum VhostAnswer: Sendable, Equatable, CustomStringConvertible {
    case none
    case value(UInt64)
    case words([UInt64])

    /// The number a GET answered (the first word for `.words`; 0 for `.none`).
    public var value: UInt64 {
        switch self {
        case .none: 0
        case .value(let v): v
        case .words(let w): w.first ?? 0
        }
    }

    public var description: String {
        switch self {
        case .none: ""
        case .value(let v): v > 0xffff ? hex(v) : "\(v)"
        case .words(let w): w.map(hex).joined(separator: ", ")
        }
    }
}

/// Every request a tun/tap fd takes that the library issues (linux/if_tun.h), as one typed value.
/// `Tap.perform` encodes it; `--trace` and errors print it.
public enum TunRequest: Sendable, Equatable, CustomStringConvertible {
    /// `TUNSETIFF`: create or attach the interface `name` with these `IFF_*` flags.
    case setInterface(name: String, flags: UInt16)
    /// `TUNGETIFF`: answers `.value`, the `IFF_*` flags of the interface this fd is a queue of
    /// (tun.c tun_get_iff; `Tap(adopting:)` reads the name too).
    case getInterface
    /// `TUNSETPERSIST`.
    case setPersist(Bool)
    /// `TUNSETOWNER`: the uid that may open the tap later.
    case setOwner(UInt32)
    /// `TUNGETFEATURES`: answers `.value`, the `IFF_*` flags the driver supports.
    case getFeatures
    /// `TUNSETOFFLOAD`: the `TUN_F_*` offloads the reader accepts.
    case setOffload(UInt32)
    /// `TUNSETSNDBUF`: the socket's send buffer in bytes (INT_MAX enables vhost's TX batching).
    case setSendBuffer(Int32)
    /// `TUNGETSNDBUF`: answers `.value`, the socket's send buffer in bytes.
    case getSendBuffer
    /// `TUNSETQUEUE`: `attach` true re-attaches a queue detached before (`IFF_ATTACH_QUEUE`),
    /// false detaches this fd's queue of a multiqueue tap (`IFF_DETACH_QUEUE`): tun.c tun_set_queue.
    case setQueue(attach: Bool)
    /// `TUNSETCARRIER`: the link's carrier on or off (tun.c tun_net_change_carrier).
    case setCarrier(Bool)
    /// `TUNSETSTEERINGEBPF`: the queue of each frame the host sends is the return value of this
    /// `BPF_PROG_TYPE_SOCKET_FILTER` program (by fd; -1 detaches), as a u16, modulo the number of
    /// queues (tun.c tun_ebpf_select_queue). The tap keeps its own reference to the program.
    case setSteeringProgram(fd: Int32)
    /// `TUNGETVNETHDRSZ`: answers `.value`.
    case getVnetHeaderSize
    /// `TUNSETVNETHDRSZ`.
    case setVnetHeaderSize(Int32)

    /// The request's entry in the number table.
    public var kind: IoctlRequest {
        switch self {
        case .setInterface: .tunSetInterface
        case .getInterface: .tunGetInterface
        case .setPersist: .tunSetPersist
        case .setOwner: .tunSetOwner
        case .getFeatures: .tunGetFeatures
        case .setOffload: .tunSetOffload
        case .setSendBuffer: .tunSetSendBuffer
        case .getSendBuffer: .tunGetSendBuffer
        case .setQueue: .tunSetQueue
        case .setCarrier: .tunSetCarrier
        case .setSteeringProgram: .tunSetSteeringProgram
        case .getVnetHeaderSize: .tunGetVnetHeaderSize
        case .setVnetHeaderSize: .tunSetVnetHeaderSize
        }
    }

    /// The decoded arguments, as `--trace` and errors print them.
    public var arguments: String {
        switch self {
        case .setInterface(let name, let flags): "name: \(name), flags: \(hex(flags))"
        case .setPersist(let on): on ? "1" : "0"
        case .setOwner(let uid): "\(uid)"
        case .getFeatures, .getVnetHeaderSize, .getSendBuffer, .getInterface: ""
        case .setQueue(let attach): attach ? "flags: IFF_ATTACH_QUEUE" : "flags: IFF_DETACH_QUEUE"
        case .setCarrier(let on): on ? "1" : "0"
        case .setSteeringProgram(let fd): "fd: \(fd)"
        case .setOffload(let bits): hex(bits)
        case .setSendBuffer(let bytes), .setVnetHeaderSize(let bytes): "\(bytes)"
        }
    }

    public var description: String { "\(kind.name)(\(arguments))" }
}

/// The `SIOC*` interface requests (linux/sockios.h) the library issues, on an `AF_INET` socket.
public enum InterfaceRequest: Sendable, Equatable, CustomStringConvertible {
    case getIndex(name: String)
    case getFlags(name: String)
    case setFlags(name: String, flags: Int16)
    case getMTU(name: String)
    case setMTU(name: String, mtu: Int32)
    case getHardwareAddress(name: String)
    /// `SIOCSIFADDR` with an IPv4 address in host order.
    case setAddress(name: String, ipv4: UInt32)
    /// `SIOCSIFNETMASK` with an IPv4 netmask in host order.
    case setNetmask(name: String, ipv4: UInt32)

    /// The request's entry in the number table.
    public var kind: IoctlRequest {
        switch self {
        case .getIndex: .getInterfaceIndex
        case .getFlags: .getInterfaceFlags
        case .setFlags: .setInterfaceFlags
        case .getMTU: .getInterfaceMTU
        case .setMTU: .setInterfaceMTU
        case .getHardwareAddress: .getInterfaceHardwareAddress
        case .setAddress: .setInterfaceAddress
        case .setNetmask: .setInterfaceNetmask
        }
    }

    /// The decoded arguments, as `--trace` and errors print them.
    public var arguments: String {
        func dotted(_ a: UInt32) -> String { "\(a >> 24).\(a >> 16 & 0xff).\(a >> 8 & 0xff).\(a & 0xff)" }
        return switch self {
        case .getIndex(let name), .getFlags(let name), .getMTU(let name), .getHardwareAddress(let name): name
        case .setFlags(let name, let flags): "\(name), flags: \(hex(UInt16(bitPattern: flags)))"
        case .setMTU(let name, let mtu): "\(name), mtu: \(mtu)"
        case .setAddress(let name, let a), .setNetmask(let name, let a): "\(name), \(dotted(a))"
        }
    }

    public var description: String { "\(kind.name)(\(arguments))" }
}

/// Any request the library issues, for observers: a vhost, tun or interface request.
public enum KernelRequest: Sendable, Equatable, CustomStringConvertible {
    case vhost(VhostRequest)
    case tun(TunRequest)
    case interface(InterfaceRequest)

    /// The request's entry in the number table.
    public var kind: IoctlRequest {
        switch self {
        case .vhost(let r): r.kind
        case .tun(let r): r.kind
        case .interface(let r): r.kind
        }
    }

    /// The decoded arguments.
    public var arguments: String {
        switch self {
        case .vhost(let r): r.arguments
        case .tun(let r): r.arguments
        case .interface(let r): r.arguments
        }
    }

    public var description: String { "\(kind.name)(\(arguments))" }
}
