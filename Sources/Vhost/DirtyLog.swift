import Glibc
import Synchronization
import SystemPackage

/// The dirty log vhost writes when VHOST_F_LOG_ALL is on: one bit per 4 KiB page of
/// guest-physical memory, in u64 words (vhost.c log_write: bit = gpa / VHOST_PAGE_SIZE).
/// Host memory, handed over with VHOST_SET_LOG_BASE; unmapped in `deinit`.
///
/// SAFETY: the kernel sets bits with atomic user-memory ops (vhost.c set_bit_to_user) while the
/// driver reads them; a racing read sees a word before or after a bit is set, never a torn
/// value, and a page missed in one pass is seen in the next. The owner keeps the log mapped
/// until the device is closed (VhostNetSession).
public final class DirtyLog: @unchecked Sendable {
    public static let pageSize: UInt64 = 4096
    public let base: UnsafeMutableRawPointer
    public let size: Int

    /// The address `VHOST_SET_LOG_BASE` takes.
    public var hostAddress: HostAddress { HostAddress(base) }

    public init(coveringGuestBytes bytes: UInt64) throws(VhostError) {
        let pages = (bytes + DirtyLog.pageSize - 1) / DirtyLog.pageSize
        let words = Int((pages + 63) / 64)
        size = max(words * 8, 8)
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw .system(call: "mmap", detail: "of a \(size)-byte dirty log", errno: Errno(rawValue: Glibc.errno))
        }
        base = p
    }

    deinit { munmap(base, size) }

    /// Whether the page holding `guestAddress` was written since the log was last cleared.
    public func isDirty(guestAddress: GuestAddress) -> Bool {
        let page = guestAddress.rawValue / DirtyLog.pageSize
        let word = Int(page / 64)
        guard word * 8 < size else { return false }
        let value = (base + word * 8).assumingMemoryBound(to: UInt64.self).pointee
        return value & (1 << (page % 64)) != 0
    }

    public var dirtyPages: Int {
        (0..<(size / 8)).reduce(0) { $0 + (base + $1 * 8).assumingMemoryBound(to: UInt64.self).pointee.nonzeroBitCount }
    }

    public func clear() { base.initializeMemory(as: UInt8.self, repeating: 0, count: size) }

    /// Marks the page holding `address` dirty (as the kernel's set_bit_to_user would).
    public func mark(_ address: GuestAddress) {
        let page = address.rawValue / DirtyLog.pageSize
        let word = Int(page / 64)
        guard word * 8 < size else { return }
        // SAFETY: inside the mapping; an atomic OR, like the kernel's own set_bit.
        let atomic = UnsafePointer((base + word * 8).assumingMemoryBound(to: Atomic<UInt64>.self))
        atomic.pointee.bitwiseOr(1 << (page % 64), ordering: .relaxed)
    }

    /// Reads and clears the log word by word with an atomic exchange, as QEMU's vhost_log_sync
    /// does (qatomic_xchg), so that a bit the device sets meanwhile is either returned now or
    /// left for the next call, never lost. Returns the dirty pages' guest-physical addresses.
    public func sync() -> [GuestAddress] {
        var pages: [GuestAddress] = []
        for word in 0..<(size / 8) {
            // SAFETY: the log is 8-aligned (mmap) and mapped for the log's lifetime; the kernel
            // updates these words atomically (set_bit_to_user), so an atomic exchange is the
            // only access that cannot lose a concurrent bit.
            let atomic = UnsafePointer((base + word * 8).assumingMemoryBound(to: Atomic<UInt64>.self))
            var bits = atomic.pointee.exchange(0, ordering: .acquiringAndReleasing)
            while bits != 0 {
                let bit = UInt64(bits.trailingZeroBitCount)
                pages.append(GuestAddress((UInt64(word) * 64 + bit) * DirtyLog.pageSize))
                bits &= bits - 1
            }
        }
        return pages
    }
}
