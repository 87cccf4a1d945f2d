import CVhost
import Glibc
import Synchronization
import SystemPackage
import Vhost
import Virtio

/// A vhost-net device in this process: the `Virtio` device model serving the rings from a
/// worker thread, with the rules of drivers/vhost/vhost.c and net.c, and a `FramePipeEnd` as its
/// backend instead of a tap. It stands in for `/dev/vhost-net` where there is none (unit tests,
/// machines without the module), as crosvm's fake device does for its tests.
///
/// What it does as the kernel does: the owner rule (EPERM before `SET_OWNER`, EBUSY twice), the
/// feature check (EOPNOTSUPP), `max_mem_regions` (E2BIG), `SET_VRING_NUM`/`BASE` checks (EINVAL,
/// EBUSY while attached), `SET_VRING_ADDR` alignment (EINVAL) and flags (EOPNOTSUPP), the backend
/// checks (ENOBUFS for an index ≥ 2, EFAULT before the ring is set up, ENOTSOCK for anything but
/// a frame pipe); `last_used_idx` read from `used->idx` at attach; TX and RX handled like
/// net.c `handle_tx`/`handle_rx` (notifications off while draining, the race-free re-enable, at
/// most 256 packets or 512 KiB per run, the error eventfd on `vq_err` and a stop until the next
/// kick, MRG_RXBUF with `num_buffers`, IN_ORDER batches, frames too big for a buffer discarded).
///
/// Where it differs, by design: descriptors must lie in one memory-table region each, and the
/// rings must lie inside the table (the kernel reaches any address of the owner; an in-process
/// device that did could crash its own process), or the attach fails with EFAULT; it offers no
/// `ACCESS_PLATFORM` (no IOTLB) and no `LOG_ALL` (no dirty log); no busy-polling (the timeout
/// is stored and reported only).
public struct InProcessVhostNetDevice: ~Copyable, VhostBackend {
    /// What it offers: what the 7.x kernel's vhost-net offers (GET_FEATURES 0x10b3d008000), less
    /// ACCESS_PLATFORM and LOG_ALL.
    public static let defaultFeatures: VirtioFeatures = [.netMergeableRxBuffers, .notifyOnEmpty, .anyLayout, .indirectDescriptors,
                                                         .eventIndex, .version1, .inOrder, .ringReset]

    /// What `VHOST_GET_BACKEND_FEATURES` answers: net.c's `VHOST_NET_BACKEND_FEATURES`.
    public static let backendFeatures: VhostBackendFeatures = .iotlbMessageV2

    let core: InProcessDeviceCore
    public var observer: IoctlObserver?

    public var backendName: String { "in-process device" }
    /// No IOTLB: the in-process device does not offer ACCESS_PLATFORM.
    public var iotlbDescriptor: Int32? { nil }

    /// A device offering `features`, with the kernel's default `max_mem_regions` of 64.
    public init(features: VirtioFeatures = InProcessVhostNetDevice.defaultFeatures, maxMemoryRegions: Int = 64,
                observer: IoctlObserver? = nil) throws(VhostError) {
        core = try InProcessDeviceCore(offered: features, maxMemoryRegions: maxMemoryRegions)
        self.observer = observer
    }

    /// Closing the device stops its worker (joined here), as closing the vhost fd does.
    deinit { core.close() }

    /// Frames the worker could not hand to the pipe (its host end stopped reading), like a
    /// tap's drops.
    public var transmitDrops: UInt64 { core.withState { $0.transmitDrops } }
    /// Frames discarded because an RX buffer could not hold them (net.c "Discarded rx packet").
    public var receiveDiscards: UInt64 { core.withState { $0.receiveDiscards } }
    /// How often the worker signalled each vring's error eventfd (`vq_err`).
    public func ringErrors(index: UInt32) -> UInt64 { core.withState { $0.vring(index)?.errors ?? 0 } }
    /// The hook of VhostTestSupport's `corruptNextUsedEntry(index:id:)`: the next used entry
    /// the worker writes on vring `index` carries `id` instead of the chain's head. The worker
    /// applies it where it writes used entries, so the hook stays with it; the API is in the
    /// test-support target, which no product links.
    package func setNextUsedID(index: UInt32, id: UInt32) {
        core.withState { $0.vring(index)?.corruptUsedID = id }
    }
    /// The hook of VhostTestSupport's `corruptNextUsedLength(length:)`: the next RX packet's
    /// last used entry says `length` bytes instead of what the device wrote.
    package func setNextUsedLength(_ length: UInt32) {
        core.withState { $0.rx.corruptUsedLength = length }
    }

    /// The last ring error the device model reported on a vring, for messages.
    public func lastRingError(index: UInt32) -> String? { core.withState { $0.vring(index)?.lastError } }

    // MARK: the one entry point

    /// Decodes `request` as drivers/vhost/vhost.c and net.c would, under the device's lock, and
    /// reports it to the observer as the kernel encoding does. Requests vhost-net does not route
    /// (the worker ioctls) get the kernel's answer for an unknown vring ioctl.
    @discardableResult
    public func perform(_ request: VhostRequest) throws(VhostError) -> VhostAnswer {
        var answer = VhostAnswer.none
        let failure: Errno? = core.withState { state in
            let (errno, value) = InProcessVhostNetDevice.decode(request, &state)
            answer = value
            return errno
        }
        core.wake()
        switch request {
        case .setOwner where failure == nil: core.startWorker()
        case .resetOwner where failure == nil:
            // vhost_net_reset_owner: stop, flush, then vhost_dev_reset_owner drops every setting.
            core.stopWorker()
            core.withState { state in
                state.rx.closeAll()
                state.tx.closeAll()
                state = InProcessDeviceCore.State(offered: state.offered, maxMemoryRegions: state.maxMemoryRegions)
            }
        default: break
        }
        try performIoctl(.vhost(request), observer: observer, answer: { answer }) { _ in failure.map { -$0.rawValue } ?? 0 }
        return answer
    }

    /// The model's answer to one request: the errno (nil for success) and what it returns.
    static func decode(_ request: VhostRequest, _ state: inout InProcessDeviceCore.State) -> (Errno?, VhostAnswer) {
        // vhost_net_ioctl → vhost_dev_ioctl: SET_OWNER, the feature ioctls and the worker mode
        // work without an owner; everything else checks the owner first (EPERM).
        switch request {
        case .setOwner:
            // vhost.c vhost_dev_set_owner: EBUSY when there is one already.
            guard !state.owned else { return (.resourceBusy, .none) }
            state.owned = true
            return (nil, .none)
        case .getFeatures:
            return (nil, .value(state.offered.rawValue))
        case .setFeatures(let bits):
            // net.c vhost_net_ioctl: EOPNOTSUPP for a bit not offered; vhost_net_set_features:
            // EFAULT for LOG_ALL without a usable log.
            let features = VirtioFeatures(rawValue: bits)
            guard features.isSubset(of: state.offered) else { return (.notSupported, .none) }
            if features.contains(.logAll) && state.logBase == nil { return (.badAddress, .none) }
            state.acked = features
            return (nil, .none)
        case .getFeaturesArray(let count):
            // net.c (6.17): the offered words, then zeros up to `count`.
            let words = Int(Swift.min(count, VhostNetDevice.maximumFeatureWords))
            return (nil, .words(Array(([state.offered.rawValue] + [UInt64](repeating: 0, count: Swift.max(0, words - 1))).prefix(words))))
        case .setFeaturesArray(let words):
            guard words.dropFirst().allSatisfy({ $0 == 0 }) else { return (.notSupported, .none) }
            return decode(.setFeatures(words.first ?? 0), &state)
        case .getBackendFeatures:
            // net.c VHOST_NET_BACKEND_FEATURES: IOTLB_MSG_V2, offered whatever the features
            // (seen on 6.1: the session sets 0x2 on both backends).
            return (nil, .value(InProcessVhostNetDevice.backendFeatures.rawValue))
        case .setBackendFeatures(let bits):
            // net.c vhost_net_ioctl: EOPNOTSUPP for a bit not offered. Without ACCESS_PLATFORM
            // (which this device does not offer) no IOTLB message ever flows.
            return (bits & ~InProcessVhostNetDevice.backendFeatures.rawValue == 0 ? nil : .notSupported, .none)
        case .getForkFromOwner:
            return (nil, .value(state.forkFromOwner ? 1 : 0))
        case .setForkFromOwner(let mode):
            // vhost.c vhost_dev_ioctl (6.17): EBUSY once there is an owner, EINVAL for a mode not 0 or 1.
            guard !state.owned else { return (.resourceBusy, .none) }
            guard mode <= 1 else { return (.invalidArgument, .none) }
            state.forkFromOwner = mode == 1
            return (nil, .none)
        default:
            break
        }
        guard state.owned else { return (.notPermitted, .none) }
        switch request {
        case .resetOwner:
            return (nil, .none)
        case .setMemoryTable(let table):
            // vhost.c vhost_set_memory: E2BIG above max_mem_regions; a region that is empty or
            // wraps fails vhost_iotlb_add_range, which vhost_set_memory answers with EFAULT.
            // Overlapping regions are accepted, as the kernel accepts them.
            guard table.regions.count <= state.maxMemoryRegions else { return (.argListTooLong, .none) }
            for region in table.regions {
                let (_, wraps) = region.guestAddress.addingReportingOverflow(region.size)
                if region.size == 0 || wraps { return (.badAddress, .none) }
            }
            state.table = table.regions
            return (nil, .none)
        case .setLogBase(let address):
            state.logBase = address
            return (nil, .none)
        case .setLogFD(let fd):
            // Accepted and kept as the kernel keeps it (eventfd_ctx_fdget); nothing is logged here.
            if fd >= 0 && !InProcessDeviceCore.isEventFD(fd) { return (InProcessDeviceCore.fdProblem(fd), .none) }
            return (nil, .none)
        default:
            break
        }
        // vhost_vring_ioctl: the index comes first (ENOBUFS for one the device does not have).
        guard let index = request.vring ?? (request.kind == .newWorker ? VringIndex(0) : nil) else { return (.inappropriateIOCTLForDevice, .none) }
        if case .newWorker(let id) = request {
            // vhost-net does not route the worker ioctls: vhost_vring_ioctl reads the first u32
            // (worker_id) as an index, then finds no such request (ENOTTY).
            return (id >= 2 ? .noBufferSpace : .inappropriateIOCTLForDevice, .none)
        }
        guard let vring = state.vring(index.rawValue) else { return (.noBufferSpace, .none) }
        switch request {
        case .setVringNum(_, let num):
            // vhost.c vhost_vring_set_num: EBUSY while attached; EINVAL for 0, > 0xffff, not a power of 2.
            guard vring.backend < 0 else { return (.resourceBusy, .none) }
            guard num > 0, num <= 0xffff, num & (num - 1) == 0 else { return (.invalidArgument, .none) }
            vring.num = num
        case .setVringBase(_, let base):
            guard vring.backend < 0 else { return (.resourceBusy, .none) }
            guard base <= 0xffff else { return (.invalidArgument, .none) }
            vring.lastAvail = UInt16(base)
        case .getVringBase:
            return (nil, .value(UInt64(vring.model?.lastAvailIndex ?? vring.lastAvail)))
        case .setVringAddress(_, let addresses):
            // vhost.c vhost_vring_set_addr: EOPNOTSUPP for a flag other than LOG; then avail
            // 2-aligned, used and log 4-aligned (EINVAL).
            guard addresses.flags.subtracting(.log).isEmpty else { return (.notSupported, .none) }
            guard addresses.avail.rawValue % 2 == 0, addresses.used.rawValue % 4 == 0,
                  (addresses.log?.rawValue ?? 0) % 4 == 0 else { return (.invalidArgument, .none) }
            vring.addresses = addresses
        case .setVringKick(_, let fd), .setVringCall(_, let fd), .setVringErr(_, let fd):
            // The kernel takes its own reference (eventfd_ctx_fdget: EBADF for no file, EINVAL
            // for a file that is not an eventfd); a dup is ours.
            var own: Int32 = -1
            if fd >= 0 {
                guard InProcessDeviceCore.isEventFD(fd) else { return (InProcessDeviceCore.fdProblem(fd), .none) }
                own = dup(fd)
                guard own >= 0 else { return (Errno(rawValue: Glibc.errno), .none) }
            }
            switch request {
            case .setVringKick: replace(&vring.kick, own)
            case .setVringCall: replace(&vring.call, own)
            default: replace(&vring.error, own)
            }
        case .setVringBusyloopTimeout(_, let microseconds):
            vring.busyloopTimeout = microseconds
        case .getVringBusyloopTimeout:
            return (nil, .value(UInt64(vring.busyloopTimeout)))
        case .netSetBackend(_, let fd):
            return (setBackend(vring, fd: fd, &state), .none)
        case .setVringEndian, .getVringEndian:
            // vhost.c without CONFIG_VHOST_CROSS_ENDIAN_LEGACY (Debian's kernels): ENOIOCTLCMD,
            // which reaches the caller as ENOTTY, after the owner and index checks.
            return (.inappropriateIOCTLForDevice, .none)
        default:
            return (.inappropriateIOCTLForDevice, .none)
        }
        return (nil, .none)
    }

    /// `VHOST_NET_SET_BACKEND` with any fd, checked as net.c vhost_net_set_backend checks it.
    private static func setBackend(_ vring: InProcessDeviceCore.Vring, fd: Int32, _ state: inout InProcessDeviceCore.State) -> Errno? {
        // net.c vhost_net_set_backend: EFAULT when the ring is not accessible, and only then the fd.
        guard vring.num > 0, let addresses = vring.addresses, state.ringIsInTable(addresses, num: Int(vring.num)) else { return .badAddress }
        if fd < 0 {
            vring.detach()
            return nil
        }
        guard InProcessDeviceCore.isFramePipe(fd) else { return fcntl(fd, F_GETFD) < 0 ? .badFileDescriptor : .notSocket }
        vring.detach()
        // vhost.c vhost_vq_init_access: last_used_idx comes from used->idx; signalled_used
        // starts invalid. The model reads them from the ring.
        guard vring.attach(features: state.acked, translate: state.translator()) else { return .badAddress }
        let own = dup(fd)
        guard own >= 0 else { vring.detach(); return Errno(rawValue: Glibc.errno) }
        vring.backend = own
        vring.wantsSocket = true
        // net.c vhost_net_enable_vq → vhost_poll_start: polling the socket starts, and a
        // socket that is ready already (always, for TX: the pipe is writable) runs the
        // handler at once, so chains published while detached are taken without a kick.
        vring.requeued = true
        return nil
    }
}

private func replace(_ fd: inout Int32, _ new: Int32) {
    if fd >= 0 { Glibc.close(fd) }
    fd = new
}

/// The device's state and its worker thread. Every ioctl and every run of the worker holds the
/// lock, as the kernel's handlers hold each vring's mutex.
final class InProcessDeviceCore: @unchecked Sendable {
    /// One vring: what the ioctls set, and the device model once a backend is attached.
    final class Vring: @unchecked Sendable {  // guarded by the core's lock
        let index: UInt32
        var num: UInt32 = 0
        var lastAvail: UInt16 = 0
        var addresses: VringAddresses?
        var kick: Int32 = -1, call: Int32 = -1, error: Int32 = -1, backend: Int32 = -1
        var busyloopTimeout: UInt32 = 0
        var model: SplitVirtqueueDevice?
        /// Whether the worker polls the backend socket (RX with buffers to fill).
        var wantsSocket = false
        /// The handler ran out of weight and must run again without waiting.
        var requeued = false
        var errors: UInt64 = 0
        var lastError: String?
        /// Fault injection: the id to write in the next used entry instead of the head.
        var corruptUsedID: UInt32?
        /// Fault injection (RX): the length to write in the next packet's last used entry.
        var corruptUsedLength: UInt32?

        /// The head to report for `head`: itself, unless a corruption was injected.
        func reportedHead(_ head: UInt16) -> UInt16 {
            guard let id = corruptUsedID else { return head }
            corruptUsedID = nil
            return UInt16(truncatingIfNeeded: id)
        }

        init(index: UInt32) { self.index = index }

        /// Makes the device model over the ring (vhost_vq_init_access). False when an address is
        /// null, which the caller answers with EFAULT.
        func attach(features: VirtioFeatures, translate: @escaping @Sendable (UInt64, UInt32) -> UnsafeMutableRawPointer?) -> Bool {
            // SAFETY: ringIsInTable checked that all three parts lie inside memory the driver
            // registered with SET_MEM_TABLE, which the driver keeps mapped until the device is
            // closed (the VhostBackend contract); the model shares it through Atomic indices.
            guard let addresses, let descriptors = UnsafeMutableRawPointer(bitPattern: UInt(addresses.descriptors.rawValue)),
                  let avail = UnsafeMutableRawPointer(bitPattern: UInt(addresses.avail.rawValue)),
                  let used = UnsafeMutableRawPointer(bitPattern: UInt(addresses.used.rawValue)) else { return false }
            let ring = SplitRing(queueSize: UInt16(num), descriptors: descriptors, avail: avail, used: used)
            let vhostHeaderLength = features.contains(.vhostNetVirtioNetHeader) ? features.netHeaderLength : 0
            model = SplitVirtqueueDevice(ring: ring, direction: index == 0 ? .receive : .transmit,
                                         eventIndex: features.contains(.eventIndex), notifyOnEmpty: features.contains(.notifyOnEmpty),
                                         inOrder: features.contains(.inOrder), vhostHeaderLength: vhostHeaderLength,
                                         base: lastAvail, translate: translate)
            return true
        }

        func detach() {
            if let last = model?.lastAvailIndex { lastAvail = last }
            model = nil
            replace(&backend, -1)
            wantsSocket = false
            requeued = false
        }

        func closeAll() {
            detach()
            replace(&kick, -1); replace(&call, -1); replace(&error, -1)
        }

        func signal(_ fd: Int32) {
            guard fd >= 0 else { return }
            var one: UInt64 = 1
            _ = write(fd, &one, 8)
        }

        /// vq_err: the message, and the error eventfd.
        func ringError(_ message: String) {
            errors += 1
            lastError = message
            signal(error)
        }
    }

    /// The memory table, read by the worker and written by SET_MEM_TABLE, both under the lock.
    final class TableBox: @unchecked Sendable {
        var regions: [MemoryTable.Region] = []
    }

    struct State: Sendable {
        let offered: VirtioFeatures
        let maxMemoryRegions: Int
        var owned = false
        /// `VHOST_SET_FORK_FROM_OWNER`'s mode: true for a task of the owner (the default of
        /// `fork_from_owner_default`), false for a kthread. The model's worker is a thread either way.
        var forkFromOwner = true
        var acked: VirtioFeatures = []
        /// The memory table, shared with the device models' translators: SET_MEM_TABLE is
        /// allowed while running, and translation always uses the current table (vhost.c
        /// vhost_set_memory swaps vq->umem under each vring's mutex; here, the core's lock).
        let currentTable = TableBox()
        var table: [MemoryTable.Region] {
            get { currentTable.regions }
            nonmutating set { currentTable.regions = newValue }
        }
        var logBase: HostAddress?
        var transmitDrops: UInt64 = 0
        var receiveDiscards: UInt64 = 0
        let rx = Vring(index: 0), tx = Vring(index: 1)

        init(offered: VirtioFeatures, maxMemoryRegions: Int) {
            self.offered = offered
            self.maxMemoryRegions = maxMemoryRegions
        }

        func vring(_ index: UInt32) -> Vring? { index == 0 ? rx : index == 1 ? tx : nil }
        /// A vring for a vring ioctl: nil before SET_OWNER (EPERM) or for an index ≥ 2 (ENOBUFS).
        func checkedVring(_ index: UInt32) -> Vring? { owned ? vring(index) : nil }

        /// Whether the three ring parts lie inside the table (vq_access_ok, made strict; see the type's doc).
        func ringIsInTable(_ a: VringAddresses, num: Int) -> Bool {
            func inside(_ address: HostAddress, _ length: Int) -> Bool {
                table.contains { r in address.rawValue >= r.userspaceAddress && address.rawValue + UInt64(length) <= r.userspaceAddress + r.size }
            }
            return inside(a.descriptors, SplitRingLayout.descriptorTableSize(queueSize: num))
                && inside(a.avail, SplitRingLayout.availRingSize(queueSize: num))
                && inside(a.used, SplitRingLayout.usedRingSize(queueSize: num))
        }

        /// GPA → HVA through the current table (vhost.c translate_desc), within one region.
        func translator() -> @Sendable (UInt64, UInt32) -> UnsafeMutableRawPointer? {
            let box = currentTable
            return { address, length in
                for r in box.regions where address >= r.guestAddress && address - r.guestAddress <= r.size
                    && r.size - (address - r.guestAddress) >= UInt64(length) {
                    // SAFETY: the region is memory the driver registered and keeps mapped while
                    // the device is open; the range was just checked to lie inside it.
                    return UnsafeMutableRawPointer(bitPattern: UInt(r.userspaceAddress + (address - r.guestAddress)))
                }
                return nil
            }
        }
    }

    private let lock: Locked<State>
    /// Wakes the worker after an ioctl changed what it polls, and for shutdown.
    private let wakeup: Int32
    private let running = Atomic<Bool>(false)
    private var thread: WorkerThread?

    init(offered: VirtioFeatures, maxMemoryRegions: Int) throws(VhostError) {
        let fd = cvhost_eventfd(0, 1)
        guard fd >= 0 else { throw .system(call: "eventfd", detail: "", errno: Errno(rawValue: -fd)) }
        wakeup = fd
        lock = Locked(State(offered: offered, maxMemoryRegions: maxMemoryRegions))
    }

    deinit { Glibc.close(wakeup) }

    func withState<R>(_ body: (inout State) -> R) -> R { lock.withLock { body(&$0) } }

    func wake() {
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
    }

    /// Whether `fd` is the device end of a frame pipe: an AF_UNIX SOCK_SEQPACKET socket. Anything
    /// else is refused as net.c get_socket refuses what is not a tap, macvtap or packet socket.
    /// Whether `fd` is an eventfd (what eventfd_ctx_fdget accepts): /proc/self/fd names it
    /// `anon_inode:[eventfd]`.
    static func isEventFD(_ fd: Int32) -> Bool {
        var buffer = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        guard n > 0 else { return false }
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self) == "anon_inode:[eventfd]"
    }

    /// The kernel's answer for an fd that is not an eventfd: EBADF when no file is open under
    /// that number (fdget), EINVAL for another kind of file (eventfd_ctx_fileget).
    static func fdProblem(_ fd: Int32) -> Errno {
        fcntl(fd, F_GETFD) < 0 ? .badFileDescriptor : .invalidArgument
    }

    static func isFramePipe(_ fd: Int32) -> Bool {
        var type: Int32 = 0, domain: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else { return false }
        length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0 else { return false }
        return type == Int32(SOCK_SEQPACKET.rawValue) && domain == AF_UNIX
    }

    // MARK: the worker

    func startWorker() {
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread = WorkerThread { [self] in serve() }
    }

    func stopWorker() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        wake()
        thread?.join()
        thread = nil
    }

    func close() {
        stopWorker()
        withState { state in
            state.rx.closeAll()
            state.tx.closeAll()
        }
    }

    /// The worker: sleeps in poll on the kick eventfds, the RX backend socket (while RX has
    /// buffers) and the wake-up eventfd, and runs handle_tx/handle_rx as the kernel's worker does.
    private func serve() {
        while running.load(ordering: .acquiring) {
            var fds: [pollfd] = [pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0)]
            let (txKick, rxKick, rxSocket, requeued) = withState { state -> (Int32, Int32, Int32, Bool) in
                (state.tx.kick, state.rx.kick, state.rx.wantsSocket && state.rx.model != nil ? state.rx.backend : -1,
                 state.tx.requeued || state.rx.requeued)
            }
            for fd in [txKick, rxKick, rxSocket] { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&fds, nfds_t(fds.count), requeued ? 0 : 1000)
            guard running.load(ordering: .acquiring) else { return }
            if ready > 0 && fds[0].revents != 0 { drain(wakeup) }
            let kickedTX = fds[1].revents != 0, kickedRX = fds[2].revents != 0, socketReady = fds[3].revents != 0
            withState { state in
                if kickedTX {
                    drain(state.tx.kick)
                    state.tx.model?.kick()
                }
                if kickedRX {
                    drain(state.rx.kick)
                    state.rx.model?.kick()
                    state.rx.wantsSocket = true
                }
                if kickedTX || state.tx.requeued { handleTransmit(&state) }
                if kickedRX || socketReady || state.rx.requeued { handleReceive(&state) }
            }
        }
    }

    private func drain(_ fd: Int32) {
        guard fd >= 0 else { return }
        var value: UInt64 = 0
        _ = read(fd, &value, 8)
    }

    /// net.c vhost_exceeds_weight: at most this much per run, then the handler is requeued.
    static let packetWeight = 256
    static let byteWeight = 512 * 1024

    /// The header the device adds or strips itself (vhost_hlen: VHOST_NET_F_VIRTIO_NET_HDR);
    /// otherwise the socket side carries it (sock_hlen) and frames pass through whole.
    private func vhostHeaderLength(_ state: State) -> Int {
        state.acked.contains(.vhostNetVirtioNetHeader) ? state.acked.netHeaderLength : 0
    }

    /// net.c handle_tx (the copy path): pop chains, send each as one message, return it with
    /// length 0 (with IN_ORDER, one used element for the run: 7.x vhost_add_used_n_in_order),
    /// signal as the driver asked.
    private func handleTransmit(_ state: inout State) {
        let vring = state.tx
        vring.requeued = false
        guard vring.backend >= 0, vring.model != nil else { return }
        let strip = vhostHeaderLength(state)
        let inOrder = state.acked.contains(.inOrder)
        vring.model!.disableNotify()
        var packets = 0, bytes = 0
        var batch: (last: UInt16, count: UInt16)? = nil
        func flush() {
            guard let pending = batch else { return }
            batch = nil
            vring.model!.pushInOrder([.init(element: UsedElement(id: UInt32(pending.last), length: 0), count: pending.count)])
            if vring.model!.shouldSignal() { vring.signal(vring.call) }
        }
        while true {
            if packets >= Self.packetWeight || bytes >= Self.byteWeight { vring.requeued = true; break }
            let chain: SplitVirtqueueDevice.Chain?
            do { chain = try vring.model!.pop() } catch {
                vring.ringError("\(error)")
                break
            }
            guard let chain else {
                flush()
                if vring.model!.enableNotify() { vring.model!.disableNotify(); continue }
                break
            }
            var frame: [UInt8] = []
            frame.reserveCapacity(chain.readableLength)
            // SAFETY: each segment was translated through the table and lies inside registered memory.
            for segment in chain.readable { frame.append(contentsOf: UnsafeRawBufferPointer(start: segment.pointer, count: segment.length)) }
            if strip > 0 { frame.removeFirst(min(strip, frame.count)) }
            if !send(frame, on: vring.backend) { state.transmitDrops += 1 }
            let head = vring.reportedHead(chain.head)
            if inOrder {
                batch = (head, (batch?.count ?? 0) + 1)
            } else {
                vring.model!.push(head: head, length: 0)
                if vring.model!.shouldSignal() { vring.signal(vring.call) }
            }
            packets += 1
            bytes += frame.count
        }
        flush()
    }

    /// Sends one message without blocking the worker for long: a tap never blocks its writer, it
    /// drops; a pipe whose reader is slow gets a second from us, then the frame counts as dropped.
    private func send(_ frame: [UInt8], on fd: Int32) -> Bool {
        for attempt in 0..<2 {
            let n = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n == frame.count { return true }
            guard n < 0, Glibc.errno == EAGAIN, attempt == 0 else { return false }
            var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&entry, 1, 1000)
        }
        return false
    }

    /// net.c handle_rx: for each message waiting on the socket, gather buffers (get_rx_bufs),
    /// copy header and frame in, write num_buffers, add the used entries together
    /// (vhost_add_used_n, or one per packet with IN_ORDER), signal as the driver asked.
    private func handleReceive(_ state: inout State) {
        let vring = state.rx
        vring.requeued = false
        guard vring.backend >= 0, vring.model != nil else { return }
        let prepend = vhostHeaderLength(state)
        let mergeable = state.acked.contains(.netMergeableRxBuffers)
        // 6.1 and 6.12 write num_buffers with MRG_RXBUF only; 7.x, whose feature set this device
        // offers, also with VERSION_1 (net.c handle_rx).
        let writesNumBuffers = mergeable || state.acked.contains(.version1)
        vring.model!.disableNotify()
        var packets = 0, bytes = 0
        while true {
            if packets >= Self.packetWeight || bytes >= Self.byteWeight { vring.requeued = true; break }
            // The next message's length, without taking it (peek_head_len).
            let socketLength = recv(vring.backend, nil, 0, Int32(MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT))
            guard socketLength >= 0 else { break }
            // net.c handle_rx loops while peek_head_len is non-zero. A 0 here is the end of the
            // stream: the host end of the pipe was closed (a tap never does this). Stop watching
            // the socket until the next kick, or poll would report the hang-up forever.
            guard socketLength > 0 else { vring.wantsSocket = false; break }
            let gathering: SplitVirtqueueDevice.ReceiveGathering
            do {
                gathering = try vring.model!.gatherReceiveBuffers(frameLength: socketLength, headerLength: prepend, mergeable: mergeable)
            } catch {
                vring.ringError("\(error)")
                break
            }
            var buffers: SplitVirtqueueDevice.ReceiveBuffers
            switch gathering {
            case .buffers(let gathered):
                buffers = gathered
            case .notEnoughBuffers:
                // No buffers: wait for a kick (vhost_enable_notify re-checks for the race).
                if vring.model!.enableNotify() { vring.model!.disableNotify(); continue }
                vring.wantsSocket = false
                return
            case .overrun:
                // Without MRG_RXBUF one buffer must hold it all: net.c has put the buffer back
                // and drops the frame ("Discarded rx packet").
                var byte: UInt8 = 0
                _ = recv(vring.backend, &byte, 1, Int32(MSG_TRUNC | MSG_DONTWAIT))
                state.receiveDiscards += 1
                continue
            }
            var data = [UInt8](repeating: 0, count: prepend + socketLength)
            let n = data.withUnsafeMutableBytes { recv(vring.backend, $0.baseAddress! + prepend, socketLength, Int32(MSG_DONTWAIT)) }
            guard n == socketLength else { vring.model!.discard(buffers); break }
            data.withUnsafeBytes { _ = buffers.write($0, at: 0) }
            if writesNumBuffers && prepend + socketLength >= VirtioNetHeader.mergeableLength { _ = buffers.writeNumBuffers() }
            if let id = vring.corruptUsedID {
                vring.corruptUsedID = nil
                buffers.usedElements[0].id = id
                buffers.inOrderUsed.element.id = id
            }
            if let length = vring.corruptUsedLength {
                vring.corruptUsedLength = nil
                buffers.usedElements[buffers.usedElements.count - 1].length = length
                buffers.inOrderUsed.element.length = length
            }
            vring.model!.push(received: buffers)
            if vring.model!.shouldSignal() { vring.signal(vring.call) }
            packets += 1
            bytes += socketLength
        }
    }
}
