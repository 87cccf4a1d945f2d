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

    /// The last ring error the device model reported on a vring, for messages.
    public func lastRingError(index: UInt32) -> String? { core.withState { $0.vring(index)?.lastError } }

    private func ioctl(_ request: IoctlRequest, _ arguments: @autoclosure () -> String,
                       _ body: (inout InProcessDeviceCore.State) -> Errno?) throws(VhostError) {
        let failure = core.withState { body(&$0) }
        core.wake()
        try performIoctl(request, arguments(), observer: observer) { _ in failure.map { -$0.rawValue } ?? 0 }
    }

    /// A vring ioctl: EPERM before SET_OWNER (vhost_dev_check_owner), ENOBUFS for an index ≥ 2
    /// (vhost_vring_ioctl), then `body`'s answer.
    private func vringIoctl(_ request: IoctlRequest, _ arguments: @autoclosure () -> String, index: UInt32,
                            _ body: (InProcessDeviceCore.Vring) -> Errno?) throws(VhostError) {
        try ioctl(request, arguments()) { state in
            guard let vring = state.checkedVring(index) else { return state.owned ? .noBufferSpace : .notPermitted }
            return body(vring)
        }
    }

    // MARK: owner and features

    public func setOwner() throws(VhostError) {
        try ioctl(.setOwner, "") { state in
            // vhost.c vhost_dev_set_owner: EBUSY when there is one already.
            guard !state.owned else { return .resourceBusy }
            state.owned = true
            return nil
        }
        core.startWorker()
    }

    public func resetOwner() throws(VhostError) {
        try ioctl(.resetOwner, "") { state in
            guard state.owned else { return .notPermitted }
            return nil
        }
        // vhost_net_reset_owner: stop, flush, then vhost_dev_reset_owner drops every setting.
        core.stopWorker()
        core.withState { state in
            state.rx.closeAll()
            state.tx.closeAll()
            state = InProcessDeviceCore.State(offered: state.offered, maxMemoryRegions: state.maxMemoryRegions)
        }
    }

    public func features() throws(VhostError) -> VirtioFeatures {
        let offered = core.withState { $0.offered }
        try ioctl(.getFeatures, "") { _ in nil }
        observer?(IoctlEvent(name: "  → features", arguments: offered.description, result: .success(0)))
        return offered
    }

    public func setFeatures(_ features: VirtioFeatures) throws(VhostError) {
        try ioctl(.setFeatures, features.description) { state in
            // net.c vhost_net_ioctl: EOPNOTSUPP for a bit not offered; vhost_net_set_features:
            // EFAULT for LOG_ALL without a usable log.
            guard features.isSubset(of: state.offered) else { return .notSupported }
            if features.contains(.logAll) && state.logBase == nil { return .badAddress }
            state.acked = features
            return nil
        }
    }

    public func backendFeatures() throws(VhostError) -> VhostBackendFeatures {
        try ioctl(.getBackendFeatures, "") { _ in nil }
        return []
    }

    public func setBackendFeatures(_ features: VhostBackendFeatures) throws(VhostError) {
        try ioctl(.setBackendFeatures, features.description) { _ in features.isEmpty ? nil : .notSupported }
    }

    // MARK: memory

    public func setMemoryTable(_ table: MemoryTable) throws(VhostError) {
        try ioctl(.setMemoryTable, table.description) { state in
            guard state.owned else { return .notPermitted }
            // vhost.c vhost_set_memory: E2BIG above max_mem_regions.
            guard table.regions.count <= state.maxMemoryRegions else { return .argListTooLong }
            // vhost_iotlb_add_range: a region that wraps or is empty is EINVAL... the kernel adds
            // each region; an empty one is refused there.
            for region in table.regions where region.size == 0 || region.guestAddress &+ region.size < region.guestAddress {
                _ = region
                return .invalidArgument
            }
            state.table = table.regions
            return nil
        }
    }

    public func setLogBase(_ address: HostAddress) throws(VhostError) {
        try ioctl(.setLogBase, address.description) { state in
            guard state.owned else { return .notPermitted }
            state.logBase = address
            return nil
        }
    }

    /// Accepted and kept; the in-process device logs nothing (it does not offer LOG_ALL).
    public func setLogFD(_ event: borrowing EventFD) throws(VhostError) {
        try ioctl(.setLogFD, "fd: \(event.fd)") { state in state.owned ? nil : .notPermitted }
    }

    // MARK: vrings

    public func setVringNum(index: UInt32, num: UInt32) throws(VhostError) {
        try vringIoctl(.setVringNum, "index: \(index), num: \(num)", index: index) { vring in
            // vhost.c vhost_vring_set_num: EBUSY while attached; EINVAL for 0, > 0xffff, not a power of 2.
            guard vring.backend < 0 else { return .resourceBusy }
            guard num > 0, num <= 0xffff, num & (num - 1) == 0 else { return .invalidArgument }
            vring.num = num
            return nil
        }
    }

    public func setVringBase(index: UInt32, base: UInt32) throws(VhostError) {
        try vringIoctl(.setVringBase, "index: \(index), num: \(base)", index: index) { vring in
            guard vring.backend < 0 else { return .resourceBusy }
            guard base <= 0xffff else { return .invalidArgument }
            vring.lastAvail = UInt16(base)
            return nil
        }
    }

    public func vringBase(index: UInt32) throws(VhostError) -> UInt32 {
        var value: UInt32 = 0
        try vringIoctl(.getVringBase, "index: \(index)", index: index) { vring in
            value = UInt32(vring.model?.lastAvailIndex ?? vring.lastAvail)
            return nil
        }
        return value
    }

    public func setVringAddress(index: UInt32, _ addresses: VringAddresses) throws(VhostError) {
        try vringIoctl(.setVringAddress, "index: \(index), desc: \(addresses.descriptors), avail: \(addresses.avail), used: \(addresses.used)", index: index) { vring in
            // vhost.c vhost_vring_set_addr: avail 2-aligned, used and log 4-aligned.
            guard addresses.avail.rawValue % 2 == 0, addresses.used.rawValue % 4 == 0,
                  (addresses.log?.rawValue ?? 0) % 4 == 0 else { return .invalidArgument }
            vring.addresses = addresses
            return nil
        }
    }

    public func setVringKick(index: UInt32, _ event: borrowing EventFD) throws(VhostError) { try bind(.kick, index, event.fd) }
    public func setVringCall(index: UInt32, _ event: borrowing EventFD) throws(VhostError) { try bind(.call, index, event.fd) }
    public func setVringErr(index: UInt32, _ event: borrowing EventFD) throws(VhostError) { try bind(.error, index, event.fd) }
    public func unbindVring(index: UInt32, _ doorbell: VringDoorbell) throws(VhostError) { try bind(doorbell, index, -1) }

    private func bind(_ doorbell: VringDoorbell, _ index: UInt32, _ fd: Int32) throws(VhostError) {
        let request: IoctlRequest = doorbell == .kick ? .setVringKick : doorbell == .call ? .setVringCall : .setVringErr
        try vringIoctl(request, "index: \(index), fd: \(fd)", index: index) { vring in
            // The kernel takes its own reference (eventfd_ctx_fdget); a dup is ours.
            var own: Int32 = -1
            if fd >= 0 {
                own = dup(fd)
                guard own >= 0 else { return Errno(rawValue: Glibc.errno) }
            }
            switch doorbell {
            case .kick: replace(&vring.kick, own)
            case .call: replace(&vring.call, own)
            case .error: replace(&vring.error, own)
            }
            return nil
        }
    }

    public func setVringBusyloopTimeout(index: UInt32, microseconds: UInt32) throws(VhostError) {
        try vringIoctl(.setVringBusyloopTimeout, "index: \(index), num: \(microseconds)", index: index) { vring in
            vring.busyloopTimeout = microseconds
            return nil
        }
    }

    public func vringBusyloopTimeout(index: UInt32) throws(VhostError) -> UInt32 {
        var value: UInt32 = 0
        try vringIoctl(.getVringBusyloopTimeout, "index: \(index)", index: index) { vring in
            value = vring.busyloopTimeout
            return nil
        }
        return value
    }

    // MARK: backend

    public func setBackend<Port: NetworkPort & ~Copyable>(index: UInt32, _ port: borrowing Port) throws(VhostError) {
        try setBackend(index: index, fd: port.fd)
    }

    public func detachBackend(index: UInt32) throws(VhostError) { try setBackend(index: index, fd: -1) }

    /// `VHOST_NET_SET_BACKEND` with any fd, checked as net.c vhost_net_set_backend checks it.
    public func setBackend(index: UInt32, fd: Int32) throws(VhostError) {
        try ioctl(.netSetBackend, "index: \(index), fd: \(fd)") { state in
            guard state.owned else { return .notPermitted }
            // net.c vhost_net_set_backend: ENOBUFS for an index ≥ 2, then EFAULT when the ring is
            // not accessible, and only then the fd.
            guard let vring = state.vring(index) else { return .noBufferSpace }
            guard vring.num > 0, let addresses = vring.addresses, state.ringIsInTable(addresses, num: Int(vring.num)) else { return .badAddress }
            if fd < 0 {
                vring.detach()
                return nil
            }
            guard InProcessDeviceCore.isFramePipe(fd) else { return .notSocket }
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
            vring.model!.push(received: buffers)
            if vring.model!.shouldSignal() { vring.signal(vring.call) }
            packets += 1
            bytes += socketLength
        }
    }
}
