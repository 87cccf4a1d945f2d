import Glibc
import Synchronization
import Vhost
import Virtio

/// An IOMMU in front of guest memory, as a VMM's vIOMMU is for a device with
/// `VIRTIO_F_ACCESS_PLATFORM`: the driver puts I/O virtual addresses (IOVA = GPA + `offset`, so
/// never equal to the GPA) in the descriptors and in `VHOST_SET_VRING_ADDR`, and the kernel asks
/// for every page it cannot translate with a MISS on the vhost fd. A thread answers each MISS
/// with an UPDATE for that 4 KiB page (QEMU's vhost_device_iotlb_miss answers per vIOMMU page),
/// with the page's permission: rings read-write, TX buffers read-only, RX buffers write-only.
///
/// For fault tests a page can be withheld (its MISS is recorded, never answered: the queue
/// stalls, vhost.c translate_desc -EAGAIN) or given another permission (a write into a
/// read-only page is vq_err "Translation failure", with no MISS).
public final class EmulatedIOMMU: @unchecked Sendable {
    public static let pageSize: UInt64 = 4096

    struct Page { var host: UInt64; var access: IOTLBMessage.Access }
    struct State {
        var pages: [UInt64: Page] = [:]
        var withheld: Set<UInt64> = []
        var misses: [IOTLBMessage] = []
        var updates = 0
        var failures: [String] = []
    }

    /// What the driver adds to a guest-physical address to make its IOVA.
    public let offset: UInt64
    private let state = Locked(State())
    private let stopping = Atomic<Bool>(false)
    private var thread: WorkerThread?

    /// Told of every IOTLB message the IOMMU reads and writes (`--trace`), on the IOMMU's own
    /// thread: set it before the device starts.
    public let observer: IoctlObserver?

    public init(offset: UInt64, observer: IoctlObserver? = nil) { self.offset = offset; self.observer = observer }

    deinit { stop() }

    /// The IOVA of a guest-physical address.
    public func iova(_ address: GuestAddress) -> UInt64 { address.rawValue + offset }

    /// Maps every page `buffer` touches with `access` (added to what the page already has).
    func map(_ buffer: GuestBuffer, access: IOTLBMessage.Access) {
        let first = buffer.guestAddress.rawValue & ~(EmulatedIOMMU.pageSize - 1)
        let last = (buffer.guestAddress.rawValue + UInt64(max(buffer.length, 1)) - 1) & ~(EmulatedIOMMU.pageSize - 1)
        let hostBase = UInt64(UInt(bitPattern: buffer.host)) - (buffer.guestAddress.rawValue - first)
        state.withLock { s in
            var page = first, host = hostBase
            while page <= last {
                let key = page + offset
                s.pages[key] = Page(host: host, access: s.pages[key].map { $0.access.union(access) } ?? access)
                page += EmulatedIOMMU.pageSize
                host += EmulatedIOMMU.pageSize
            }
        }
    }

    /// Maps a queue's memory: its ring read-write, its buffers for the direction the device uses
    /// them (indirect tables are read).
    func map(_ memory: QueueMemory, deviceWrites: Bool) {
        map(memory.ringBlock, access: .readWrite)
        let data: IOTLBMessage.Access = deviceWrites ? .write : .read
        for buffer in memory.buffers + memory.headers { map(buffer, access: data) }
        for table in memory.tables { map(table, access: .read) }
    }

    /// The UPDATE for the page holding `iova`, or nil when it is unmapped or withheld.
    func update(for iova: UInt64) -> IOTLBMessage? {
        let key = iova & ~(EmulatedIOMMU.pageSize - 1)
        return state.withLock { s in
            guard !s.withheld.contains(key), let page = s.pages[key] else { return nil }
            return IOTLBMessage(kind: .update, iova: key, length: EmulatedIOMMU.pageSize, userAddress: page.host, access: page.access)
        }
    }

    /// Sends UPDATEs for every page of `buffer` at once (before the kernel asks): the used ring
    /// must be mapped before `NET_SET_BACKEND`, which reads and writes it through the IOTLB
    /// (vhost.c vhost_vq_init_access; QEMU's vhost_dev_start prefaults it the same way).
    func preload(_ buffer: GuestBuffer, fd: Int32, observer: IoctlObserver?) throws(VhostError) {
        var page = buffer.guestAddress.rawValue & ~(EmulatedIOMMU.pageSize - 1)
        let end = buffer.guestAddress.rawValue + UInt64(buffer.length)
        while page < end {
            if let update = update(for: page + offset) { try update.write(to: fd, observer: observer) }
            page += EmulatedIOMMU.pageSize
        }
    }

    /// Starts answering MISS messages read from `fd` on a thread of its own.
    func start(fd: Int32, observer: IoctlObserver?) {
        guard thread == nil else { return }
        stopping.store(false, ordering: .releasing)
        thread = WorkerThread { [self] in
            while !stopping.load(ordering: .acquiring) {
                do {
                    guard let message = try IOTLBMessage.read(from: fd, milliseconds: 50, observer: observer), message.kind == .miss else { continue }
                    let reply = state.withLock { s -> IOTLBMessage? in
                        s.misses.append(message)
                        if s.misses.count > 4096 { s.misses.removeFirst(s.misses.count - 4096) }
                        return nil
                    } ?? update(for: message.iova)
                    guard let reply else { continue }
                    try reply.write(to: fd, observer: observer)
                    state.withLock { $0.updates += 1 }
                } catch {
                    state.withLock { $0.failures.append("\(error)") }
                    usleep(10_000)
                }
            }
        }
    }

    /// Stops the thread (before the device's fd is closed).
    func stop() {
        stopping.store(true, ordering: .releasing)
        thread?.join()
        thread = nil
    }

    // MARK: inspection and faults

    /// MISS messages the kernel sent, oldest first (the last 4096).
    public var misses: [IOTLBMessage] { state.withLock { $0.misses } }
    /// UPDATEs sent in answer.
    public var updates: Int { state.withLock { $0.updates } }
    /// Errors of the answering thread (a write the kernel refused).
    public var failures: [String] { state.withLock { $0.failures } }

    /// Stops answering MISSes for the page holding `iova`: the device stalls on it.
    public func withhold(pageOf iova: UInt64) { _ = state.withLock { $0.withheld.insert(iova & ~(EmulatedIOMMU.pageSize - 1)) } }

    /// Answers the page holding `iova` again, including the MISSes already recorded for it.
    public func release(pageOf iova: UInt64, fd: Int32, observer: IoctlObserver? = nil) throws(VhostError) {
        let key = iova & ~(EmulatedIOMMU.pageSize - 1)
        _ = state.withLock { $0.withheld.remove(key) }
        if let update = update(for: key) { try update.write(to: fd, observer: observer) }
    }

    /// Gives the page holding `iova` another permission from now on: the kernel's cached
    /// mapping is dropped with an INVALIDATE, and the next MISS gets the new one.
    public func setAccess(_ access: IOTLBMessage.Access, pageOf iova: UInt64, fd: Int32, observer: IoctlObserver? = nil) throws(VhostError) {
        let key = iova & ~(EmulatedIOMMU.pageSize - 1)
        state.withLock { s in if s.pages[key] != nil { s.pages[key]!.access = access } }
        try IOTLBMessage(kind: .invalidate, iova: key, length: EmulatedIOMMU.pageSize).write(to: fd, observer: observer)
    }
}
