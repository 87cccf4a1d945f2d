import Virtio

// How each request is written in a script, and read back from one: the script language's table
// of request commands is `VhostRequest.syntax` and `TunRequest.syntax`, and the recorder writes a
// request with `scriptValues`. A new request adds its case, its entry here, its kernel encoding
// and its model answer; the parser, the runner and the recorder take it from these tables.

/// One parameter of a request as a script writes it.
public struct RequestParameter: Sendable {
    /// What a script may write for the parameter, and what the runner turns it into.
    public enum Kind: Sendable, Equatable {
        /// A vring index (any 32-bit number, so wrong ones reach the kernel).
        case vring
        /// A whole number that must fit the kernel field's `bits` (8, 16, 32, 64).
        case unsigned(bits: Int)
        /// A signed 32-bit number (a size the kernel takes as `int`).
        case signed32
        /// Virtio feature names (low and high) or `0x` bits, several allowed: feature words.
        case features
        /// vhost backend feature names or `0x` bits.
        case backendFeatures
        /// An fd: `-1`, `eventfd` (a fresh one), `closed` (a number just closed), `file` (a
        /// regular file), `tap` (the script's tap or port), or a number.
        case fd
        /// One of these words, each standing for a number.
        case choice([String: UInt64])
        /// A guest-physical address in the script's guest memory, given to the kernel as the
        /// host address it maps to (checked over its full length before the ioctl).
        case guestAddress
        /// Memory-table regions as triples `GPA SIZE AT`: the region's guest address and size,
        /// and the GPA of the script's memory whose host address becomes `userspace_addr`.
        /// None: the script's guest memory, region by region.
        case memoryRegions
        /// Descriptor-address flags: `LOG`, `0`, or any number (the kernel judges the bits).
        case vringAddressFlags
        /// TUNSETOFFLOAD names (`csum tso4 …`) or `0x` bits.
        case offloads
    }

    public var name: String
    public var kind: Kind
    public var required: Bool
    /// Takes every remaining positional argument.
    public var variadic: Bool
    /// The largest number this tool passes for the parameter, when it is less than the field's
    /// width allows: a bound of ours (the buffer the answer is read into), not the kernel's rule.
    public var maximum: UInt64?

    public init(_ name: String, _ kind: Kind, required: Bool = true, variadic: Bool = false, maximum: UInt64? = nil) {
        self.name = name; self.kind = kind; self.required = required; self.variadic = variadic; self.maximum = maximum
    }
}

/// A request argument as the runner resolved it, and as the recorder reads it back.
public enum RequestValue: Sendable, Equatable {
    case number(UInt64)
    case words([UInt64])
    case fd(Int32)
    case host(HostAddress)
    case table(MemoryTable)
}

/// The script form of one kind of request: the command name, its parameters, the name its
/// answer is kept under (`expect base 17`), and how the resolved arguments build the request.
public struct RequestSyntax<Request: Sendable>: Sendable {
    public var kind: IoctlRequest
    /// The command: the ioctl's name in lower case without `VHOST_` / `TUN`, words joined by `-`.
    public var name: String
    public var parameters: [RequestParameter]
    /// The name of the answer, for requests that answer a value.
    public var answer: String?
    public var summary: String
    /// Builds the request from the resolved arguments, by parameter name (absent optional
    /// parameters are missing). Nil when an argument is not of its kind (the parser prevents it).
    public var build: @Sendable ([String: RequestValue]) -> Request?

    init(_ kind: IoctlRequest, _ name: String, _ parameters: [RequestParameter] = [], answer: String? = nil, _ summary: String,
         build: @escaping @Sendable ([String: RequestValue]) -> Request?) {
        self.kind = kind; self.name = name; self.parameters = parameters; self.answer = answer; self.summary = summary; self.build = build
    }

    init(_ kind: IoctlRequest, _ name: String, answer: String? = nil, _ summary: String,
         build: @escaping @Sendable ([String: RequestValue]) -> Request?) {
        self.init(kind, name, [], answer: answer, summary, build: build)
    }
}

extension RequestValue {
    var number: UInt64? { if case .number(let n) = self { return n }; if case .words(let w) = self { return w.first ?? 0 }; return nil }
    var fd: Int32? { if case .fd(let f) = self { return f }; return nil }
}

private extension Dictionary where Key == String, Value == RequestValue {
    func vring(_ name: String = "index") -> VringIndex? { self[name]?.number.map { VringIndex(UInt32(truncatingIfNeeded: $0)) } }
    func u32(_ name: String) -> UInt32? { self[name]?.number.map { UInt32(truncatingIfNeeded: $0) } }
}

extension VhostRequest {
    static let fdChoices: [String] = ["-1", "eventfd", "closed", "file"]

    /// Every vhost request as the script language writes it.
    public static let syntax: [RequestSyntax<VhostRequest>] = [
        .init(.setOwner, "set-owner", "VHOST_SET_OWNER") { _ in .setOwner },
        .init(.resetOwner, "reset-owner", "VHOST_RESET_OWNER") { _ in .resetOwner },
        .init(.getFeatures, "get-features", answer: "features", "VHOST_GET_FEATURES") { _ in .getFeatures },
        .init(.setFeatures, "set-features", [.init("features", .features, variadic: true)], "VHOST_SET_FEATURES: names, or 0x bits") {
            $0["features"]?.number.map { .setFeatures($0) }
        },
        .init(.getFeaturesArray, "get-features-array", [.init("count", .unsigned(bits: 64), required: false, maximum: VhostNetDevice.maximumFeatureWords)], answer: "features",
              "VHOST_GET_FEATURES_ARRAY (Linux 6.17): COUNT words, default 2") { .getFeaturesArray(count: $0["count"]?.number ?? 2) },
        .init(.setFeaturesArray, "set-features-array", [.init("features", .features, variadic: true)],
              "VHOST_SET_FEATURES_ARRAY: names (high ones too), or 0x words") {
            if case .words(let words)? = $0["features"] { return .setFeaturesArray(words) }
            return $0["features"]?.number.map { .setFeaturesArray([$0, 0]) }
        },
        .init(.getBackendFeatures, "get-backend-features", answer: "backend-features", "VHOST_GET_BACKEND_FEATURES") { _ in .getBackendFeatures },
        .init(.setBackendFeatures, "set-backend-features", [.init("features", .backendFeatures, variadic: true)], "VHOST_SET_BACKEND_FEATURES") {
            $0["features"]?.number.map { .setBackendFeatures($0) }
        },
        .init(.setMemoryTable, "set-mem-table", [.init("regions", .memoryRegions, required: false, variadic: true)],
              "VHOST_SET_MEM_TABLE: the guest memory's regions, or raw regions GPA SIZE AT... (any sizes, overlapping too; AT is a GPA of mapped memory)") {
            if case .table(let table)? = $0["regions"] { return .setMemoryTable(table) }
            return nil
        },
        .init(.setLogBase, "set-log-base", "VHOST_SET_LOG_BASE with the log mapped by `log`") {
            if case .host(let address)? = $0["log"] { return .setLogBase(address) }
            return nil
        },
        .init(.setLogFD, "set-log-fd", [.init("fd", .fd, required: false)], "VHOST_SET_LOG_FD [fd=-1|eventfd|closed|file|N]") {
            $0["fd"]?.fd.map { .setLogFD($0) }
        },
        .init(.setVringNum, "set-vring-num", [.init("index", .vring), .init("num", .unsigned(bits: 32))], "VHOST_SET_VRING_NUM") {
            guard let i = $0.vring(), let n = $0.u32("num") else { return nil }
            return .setVringNum(i, n)
        },
        .init(.setVringBase, "set-vring-base", [.init("index", .vring), .init("base", .unsigned(bits: 32))], "VHOST_SET_VRING_BASE") {
            guard let i = $0.vring(), let n = $0.u32("base") else { return nil }
            return .setVringBase(i, n)
        },
        .init(.getVringBase, "get-vring-base", [.init("index", .vring)], answer: "base", "VHOST_GET_VRING_BASE: the kernel's last_avail_idx") {
            $0.vring().map { .getVringBase($0) }
        },
        .init(.setVringAddress, "set-vring-addr",
              [.init("index", .vring), .init("desc", .guestAddress, required: false), .init("avail", .guestAddress, required: false),
               .init("used", .guestAddress, required: false), .init("log", .unsigned(bits: 64), required: false),
               .init("flags", .vringAddressFlags, required: false)],
              "VHOST_SET_VRING_ADDR: the ring laid out by `ring`, or other GPAs; LOG=GPA sets VHOST_VRING_F_LOG unless flags= says otherwise") {
            guard let i = $0.vring(), case .host(let d)? = $0["desc"], case .host(let a)? = $0["avail"], case .host(let u)? = $0["used"] else { return nil }
            let log = $0["log"]?.number.map { GuestAddress($0) }
            let flags = $0["flags"]?.number.map { VringAddressFlags(rawValue: UInt32(truncatingIfNeeded: $0)) }
            return .setVringAddress(i, VringAddresses(descriptors: d, avail: a, used: u, log: log, flags: flags))
        },
        .init(.setVringKick, "set-vring-kick", [.init("index", .vring), .init("fd", .fd, required: false)], "VHOST_SET_VRING_KICK INDEX [fd=-1|eventfd|closed|file|N]") {
            guard let i = $0.vring(), let f = $0["fd"]?.fd else { return nil }
            return .setVringKick(i, fd: f)
        },
        .init(.setVringCall, "set-vring-call", [.init("index", .vring), .init("fd", .fd, required: false)], "VHOST_SET_VRING_CALL INDEX [fd=…]") {
            guard let i = $0.vring(), let f = $0["fd"]?.fd else { return nil }
            return .setVringCall(i, fd: f)
        },
        .init(.setVringErr, "set-vring-err", [.init("index", .vring), .init("fd", .fd, required: false)], "VHOST_SET_VRING_ERR INDEX [fd=…]") {
            guard let i = $0.vring(), let f = $0["fd"]?.fd else { return nil }
            return .setVringErr(i, fd: f)
        },
        .init(.setVringBusyloopTimeout, "set-vring-busyloop-timeout", [.init("index", .vring), .init("microseconds", .unsigned(bits: 32))],
              "VHOST_SET_VRING_BUSYLOOP_TIMEOUT") {
            guard let i = $0.vring(), let n = $0.u32("microseconds") else { return nil }
            return .setVringBusyloopTimeout(i, n)
        },
        .init(.getVringBusyloopTimeout, "get-vring-busyloop-timeout", [.init("index", .vring)], answer: "busyloop-timeout",
              "VHOST_GET_VRING_BUSYLOOP_TIMEOUT") { $0.vring().map { .getVringBusyloopTimeout($0) } },
        .init(.netSetBackend, "set-backend", [.init("index", .vring), .init("fd", .fd)], "VHOST_NET_SET_BACKEND INDEX tap|-1|eventfd|closed|file|N") {
            guard let i = $0.vring(), let f = $0["fd"]?.fd else { return nil }
            return .netSetBackend(i, fd: f)
        },
        .init(.setVringEndian, "set-vring-endian", [.init("index", .vring), .init("endian", .choice(["little": 0, "big": 1]))],
              "VHOST_SET_VRING_ENDIAN INDEX little|big|N (kernels with CONFIG_VHOST_CROSS_ENDIAN_LEGACY only)") {
            guard let i = $0.vring(), let n = $0.u32("endian") else { return nil }
            return .setVringEndian(i, n)
        },
        .init(.getVringEndian, "get-vring-endian", [.init("index", .vring)], answer: "endian", "VHOST_GET_VRING_ENDIAN") {
            $0.vring().map { .getVringEndian($0) }
        },
        .init(.setForkFromOwner, "set-fork-owner", [.init("mode", .choice(["task": 1, "kthread": 0]), maximum: 0xff)],
              "VHOST_SET_FORK_FROM_OWNER: task (1) or kthread (0), or any byte; before set-owner") {
            $0["mode"]?.number.map { .setForkFromOwner(UInt8(truncatingIfNeeded: $0)) }
        },
        .init(.getForkFromOwner, "get-fork-owner", answer: "fork-owner", "VHOST_GET_FORK_FROM_OWNER: 1 task, 0 kthread") { _ in .getForkFromOwner },
        .init(.newWorker, "new-worker", [.init("id", .unsigned(bits: 32), required: false)], answer: "worker",
              "VHOST_NEW_WORKER (vhost-net does not route it: the kernel's answer)") { .newWorker($0.u32("id") ?? 0) },
    ]

    /// The request's arguments by parameter name, as the recorder writes them back.
    public var scriptValues: [String: RequestValue] {
        switch self {
        case .setOwner, .resetOwner, .getFeatures, .getBackendFeatures, .getForkFromOwner: [:]
        case .setFeatures(let bits), .setBackendFeatures(let bits): ["features": .number(bits)]
        case .getFeaturesArray(let count): ["count": .number(count)]
        case .setFeaturesArray(let words): ["features": .words(words)]
        case .setMemoryTable(let table): ["regions": .table(table)]
        case .setLogBase(let address): ["log": .host(address)]
        case .setLogFD(let fd): ["fd": .fd(fd)]
        case .setVringNum(let i, let n): ["index": .number(UInt64(i.rawValue)), "num": .number(UInt64(n))]
        case .setVringEndian(let i, let n): ["index": .number(UInt64(i.rawValue)), "endian": .number(UInt64(n))]
        case .getVringEndian(let i): ["index": .number(UInt64(i.rawValue))]
        case .setVringBase(let i, let n): ["index": .number(UInt64(i.rawValue)), "base": .number(UInt64(n))]
        case .setVringBusyloopTimeout(let i, let n): ["index": .number(UInt64(i.rawValue)), "microseconds": .number(UInt64(n))]
        case .getVringBase(let i), .getVringBusyloopTimeout(let i): ["index": .number(UInt64(i.rawValue))]
        case .setVringAddress(let i, let a):
            ["index": .number(UInt64(i.rawValue)), "desc": .host(a.descriptors), "avail": .host(a.avail), "used": .host(a.used)]
                .merging(a.log.map { ["log": .number($0.rawValue)] } ?? [:]) { x, _ in x }
                .merging(a.flags == (a.log == nil ? [] : .log) ? [:] : ["flags": .number(UInt64(a.flags.rawValue))]) { x, _ in x }
        case .setVringKick(let i, let fd), .setVringCall(let i, let fd), .setVringErr(let i, let fd), .netSetBackend(let i, let fd):
            ["index": .number(UInt64(i.rawValue)), "fd": .fd(fd)]
        case .setForkFromOwner(let mode): ["mode": .number(UInt64(mode))]
        case .newWorker(let id): id == 0 ? [:] : ["id": .number(UInt64(id))]
        }
    }

    /// This request's entry in `syntax`.
    public var syntax: RequestSyntax<VhostRequest> { Self.syntax.first { $0.kind == kind }! }

    /// Where the kernel could write outside memory mapped for it, if this request were issued:
    /// nil when every address the kernel may write through (used ring, log, memory-table
    /// regions) lies wholly inside `mapped`, else why not. `vringSizes` are the sizes set with
    /// `SET_VRING_NUM` (the kernel's default is 1 before it); `eventIndex` adds the used ring's
    /// avail_event word. All arithmetic is overflow-checked, as rust-vmm's
    /// `VringConfigData::is_valid` checks it.
    public func writableRangeProblem(mapped: MappedRanges, vringSizes: [VringIndex: UInt32], addresses: [VringIndex: VringAddresses]) -> String? {
        func ringProblem(_ index: VringIndex, _ a: VringAddresses, num: UInt32) -> String? {
            // vhost.c vq_access_ok / vhost_vq_access_ok: desc 16·n, avail 4+2n+2, used 4+8n+2.
            let n = UInt64(num)
            let parts: [(String, HostAddress, UInt64)] = [("descriptor table", a.descriptors, 16 * n), ("avail ring", a.avail, 6 + 2 * n),
                                                         ("used ring", a.used, 6 + 8 * n)]
            for (name, address, length) in parts where !mapped.contains(address.rawValue, length: length) {
                return "vring \(index)'s \(name) at \(address) (\(length) bytes for \(num) entries) runs outside memory mapped for the device"
            }
            return nil
        }
        switch self {
        case .setVringAddress(let i, let a):
            return ringProblem(i, a, num: vringSizes[i] ?? 1)
        case .setVringNum(let i, let num):
            // A larger ring makes the addresses given earlier cover more.
            guard let a = addresses[i], num <= 0xffff else { return nil }
            return ringProblem(i, a, num: num)
        case .setMemoryTable(let table):
            for region in table.regions where !mapped.contains(region.userspaceAddress, length: region.size) {
                return "memory region at gpa 0x\(String(region.guestAddress, radix: 16)) of \(region.size) bytes names host memory 0x\(String(region.userspaceAddress, radix: 16)) that is not mapped for the device"
            }
            return nil
        default:
            return nil
        }
    }
}

/// Host address ranges mapped for a device to use (guest memory, a dirty log): what a request
/// may let the kernel write through.
public struct MappedRanges: Sendable, Equatable {
    public var ranges: [(start: UInt64, length: UInt64)]
    public init(_ ranges: [(start: UInt64, length: UInt64)] = []) { self.ranges = ranges }

    public static func == (a: MappedRanges, b: MappedRanges) -> Bool {
        a.ranges.elementsEqual(b.ranges) { $0.start == $1.start && $0.length == $1.length }
    }

    /// Whether `[start, start + length)` lies inside one range; a length of 0 counts as inside
    /// any range that holds `start` or ends there. Overflow never wraps into a range.
    public func contains(_ start: UInt64, length: UInt64) -> Bool {
        let (end, overflow) = start.addingReportingOverflow(length)
        guard !overflow else { return false }
        return ranges.contains { r in
            let (rangeEnd, o) = r.start.addingReportingOverflow(r.length)
            return !o && start >= r.start && end <= rangeEnd
        }
    }
}

extension TunRequest {
    /// TUNSETOFFLOAD's names as scripts write them (linux/if_tun.h `TUN_F_*`).
    public static let offloadNames: [String: UInt64] = ["csum": 0x1, "tso4": 0x2, "tso6": 0x4, "tso-ecn": 0x8, "ufo": 0x10, "uso4": 0x20, "uso6": 0x40,
                                                        "udp-tunnel-gso": 0x80, "udp-tunnel-gso-csum": 0x100]

    /// The tun requests a script issues on its tap (the tap itself is made by `tap NAME`).
    public static let syntax: [RequestSyntax<TunRequest>] = [
        .init(.tunSetVnetHeaderSize, "set-vnet-hdr-size", [.init("size", .signed32)], "TUNSETVNETHDRSZ on the tap") {
            $0["size"]?.number.map { .setVnetHeaderSize(Int32(truncatingIfNeeded: $0)) }
        },
        .init(.tunGetVnetHeaderSize, "get-vnet-hdr-size", answer: "vnet-hdr-size", "TUNGETVNETHDRSZ on the tap") { _ in .getVnetHeaderSize },
        .init(.tunSetOffload, "set-offloads", [.init("offloads", .offloads, required: false, variadic: true)],
              "TUNSETOFFLOAD on the tap: csum tso4 tso6 tso-ecn ufo uso4 uso6 udp-tunnel-gso udp-tunnel-gso-csum, or 0x bits (none: all off)") {
            .setOffload(UInt32(truncatingIfNeeded: $0["offloads"]?.number ?? 0))
        },
        .init(.tunSetSendBuffer, "set-sndbuf", [.init("bytes", .signed32)], "TUNSETSNDBUF on the tap (2147483647 enables vhost's TX batching)") {
            $0["bytes"]?.number.map { .setSendBuffer(Int32(truncatingIfNeeded: $0)) }
        },
        .init(.tunGetSendBuffer, "get-sndbuf", answer: "sndbuf", "TUNGETSNDBUF on the tap") { _ in .getSendBuffer },
        .init(.tunSetQueue, "set-queue", [.init("action", .choice(["attach": 1, "detach": 0]))],
              "TUNSETQUEUE on the tap: detach this queue of a multiqueue tap, or attach it again") {
            $0["action"]?.number.map { .setQueue(attach: $0 != 0) }
        },
        .init(.tunSetCarrier, "set-carrier", [.init("state", .choice(["on": 1, "off": 0]))], "TUNSETCARRIER on the tap: the carrier on or off") {
            $0["state"]?.number.map { .setCarrier($0 != 0) }
        },
        .init(.tunGetFeatures, "get-tun-features", answer: "tun-features", "TUNGETFEATURES on the tap: the IFF_* flags the driver supports") { _ in .getFeatures },
    ]

    /// The request's arguments by parameter name, as the recorder writes them back.
    public var scriptValues: [String: RequestValue] {
        switch self {
        case .setVnetHeaderSize(let n): ["size": .number(UInt64(UInt32(bitPattern: n)))]
        case .setSendBuffer(let n): ["bytes": .number(UInt64(UInt32(bitPattern: n)))]
        case .setOffload(let bits): ["offloads": .number(UInt64(bits))]
        case .setQueue(let attach): ["action": .number(attach ? 1 : 0)]
        case .setCarrier(let on): ["state": .number(on ? 1 : 0)]
        default: [:]
        }
    }

    /// This request's entry in `syntax`, if scripts write it (TUNSETIFF is `tap NAME`).
    public var syntax: RequestSyntax<TunRequest>? { Self.syntax.first { $0.kind == kind } }
}
