import CVhost
import Glibc
import SystemPackage

/// One region of guest memory: a guest-physical range backed by a host mapping.
public struct GuestMemoryRegion: Sendable, Equatable {
    public var guestAddress: GuestAddress
    public var size: Int
    /// Host virtual address of the mapping (what `userspace_addr` carries).
    public var hostAddress: HostAddress { HostAddress(host) }
    /// The mapping. Valid while the `GuestMemory` that made this region is alive.
    public nonisolated(unsafe) var host: UnsafeMutableRawPointer

    public func contains(guest address: GuestAddress, length: Int) -> Bool {
        address >= guestAddress && length >= 0 && address - guestAddress <= UInt64(size) &&
            UInt64(size) - (address - guestAddress) >= UInt64(length)
    }

    /// Whether `pointer` lies inside the mapping.
    public func contains(host pointer: UnsafeRawPointer) -> Bool {
        pointer >= UnsafeRawPointer(host) && pointer < UnsafeRawPointer(host + size)
    }
}

/// A buffer inside guest memory: both its guest-physical address (for descriptors) and its
/// host pointer (for us to read and write).
public struct GuestBuffer: Sendable {
    public var guestAddress: GuestAddress
    public nonisolated(unsafe) var host: UnsafeMutableRawPointer
    public var length: Int

    /// A buffer at `guestAddress`, mapped at `host` (which the caller got from a `GuestMemory`).
    public init(guestAddress: GuestAddress, host: UnsafeMutableRawPointer, length: Int) {
        self.guestAddress = guestAddress; self.host = host; self.length = length
    }

    public func slice(offset: Int, length: Int) -> GuestBuffer {
        precondition(offset >= 0 && length >= 0 && offset + length <= self.length, "slice out of the buffer")
        return GuestBuffer(guestAddress: guestAddress + offset, host: host + offset, length: length)
    }
}

/// The guest-physical address space: translation both ways, and the memory table the kernel
/// gets. A copyable description; the mappings belong to a `GuestMemory`.
public struct GuestMemoryMap: Sendable {
    public let regions: [GuestMemoryRegion]

    /// GPA → HVA for `length` bytes, or nil when the range is not wholly inside one region
    /// (what the kernel's translate_desc would answer with EFAULT).
    public func host(guest address: GuestAddress, length: Int) -> UnsafeMutableRawPointer? {
        for region in regions where region.contains(guest: address, length: length) {
            return region.host + Int(address - region.guestAddress)
        }
        return nil
    }

    /// HVA → GPA.
    public func guest(host pointer: UnsafeRawPointer) -> GuestAddress? {
        for region in regions where region.contains(host: pointer) {
            return region.guestAddress + (pointer - UnsafeRawPointer(region.host))
        }
        return nil
    }

    public var memoryTable: MemoryTable {
        MemoryTable(regions: regions.map {
            MemoryTable.Region(guestAddress: $0.guestAddress.rawValue, size: UInt64($0.size), userspaceAddress: $0.hostAddress.rawValue)
        })
    }

    /// The highest guest-physical address any region reaches (exclusive).
    public var guestEnd: GuestAddress { regions.map { $0.guestAddress + $0.size }.max() ?? 0 }
}

/// How guest memory is backed.
public enum GuestMemoryBacking: Sendable, Equatable {
    /// Anonymous shared memory.
    case anonymous
    /// A memfd, as QEMU's memory-backend-memfd; with `hugePages`, MFD_HUGETLB.
    case memfd(hugePages: Bool)
}

/// Guest memory the process owns: one mapping per region, each at a guest-physical address
/// that differs from its host address, as in a real VM. Buffers and rings are carved out of it
/// with a bump allocator. `deinit` unmaps everything.
///
/// SAFETY: a vhost device that was given this memory (in its table, or as ring or log
/// addresses) reads and writes it from its own thread until it is closed; the kernel checks
/// nothing when the mapping disappears under it, and a new mapping at the same address would be
/// written instead. So whoever hands this memory to a device must close the device first:
/// `VhostNetSession` owns both and releases them in that order.
public struct GuestMemory: ~Copyable {
    public struct Layout: Sendable, Equatable {
        public var guestAddress: GuestAddress
        public var size: Int
        public init(guestAddress: GuestAddress, size: Int) { self.guestAddress = guestAddress; self.size = size }
    }

    /// Where a single-region guest memory starts: 1 GiB, so GPA never equals HVA.
    public static let defaultGuestBase: GuestAddress = 0x4000_0000

    public let map: GuestMemoryMap
    public let backing: GuestMemoryBacking
    private var used: [Int]
    private let memfds: [Int32]

    public static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    public static let hugePageSize = 2 << 20

    public init(size: Int, guestAddress: GuestAddress = GuestMemory.defaultGuestBase, backing: GuestMemoryBacking = .anonymous) throws(VhostError) {
        try self.init(layout: [Layout(guestAddress: guestAddress, size: size)], backing: backing)
    }

    public init(layout: [Layout], backing: GuestMemoryBacking = .anonymous) throws(VhostError) {
        guard !layout.isEmpty else { throw .invalidConfiguration("guest memory needs at least one region") }
        let granule = backing == .memfd(hugePages: true) ? GuestMemory.hugePageSize : GuestMemory.pageSize
        let sorted = layout.sorted { $0.guestAddress < $1.guestAddress }
        for (i, region) in sorted.enumerated() {
            guard region.size > 0, region.size % granule == 0, region.guestAddress.rawValue % UInt64(granule) == 0 else {
                throw .invalidConfiguration("guest memory region at \(hex(region.guestAddress.rawValue)) of \(region.size) bytes must be a non-empty multiple of \(granule) bytes, aligned to it")
            }
            if i > 0, sorted[i - 1].guestAddress + sorted[i - 1].size > region.guestAddress {
                throw .invalidConfiguration("guest memory regions at \(hex(sorted[i - 1].guestAddress.rawValue)) and \(hex(region.guestAddress.rawValue)) overlap")
            }
        }
        var regions: [GuestMemoryRegion] = []
        var fds: [Int32] = []
        func unwind() {
            for r in regions { munmap(r.host, r.size) }
            for fd in fds { close(fd) }
        }
        for region in sorted {
            var fd: Int32 = -1
            var flags = MAP_SHARED
            if case .memfd(let huge) = backing {
                fd = cvhost_memfd("swift-vhost-guest", huge ? 1 : 0)
                if fd < 0 {
                    unwind()
                    let errno = Errno(rawValue: -fd)
                    if huge {
                        throw .system(call: "memfd_create", detail: "(MFD_HUGETLB): this kernel has no hugetlbfs support for memfd", errno: errno)
                    }
                    throw .system(call: "memfd_create", detail: "", errno: errno)
                }
                fds.append(fd)
                if ftruncate(fd, off_t(region.size)) != 0 {
                    let errno = Errno(rawValue: Glibc.errno)
                    unwind()
                    throw .system(call: "ftruncate", detail: "memfd to \(region.size) bytes", errno: errno)
                }
            } else {
                flags |= MAP_ANONYMOUS
            }
            let pointer = mmap(nil, region.size, PROT_READ | PROT_WRITE, flags, fd, 0)
            guard let pointer, pointer != UnsafeMutableRawPointer(bitPattern: -1) else {
                let errno = Errno(rawValue: Glibc.errno)
                unwind()
                if backing == .memfd(hugePages: true) {
                    throw .system(call: "mmap", detail: "of \(region.size) bytes of huge pages: no free 2 MiB huge pages; reserve some with `echo N > /proc/sys/vm/nr_hugepages`", errno: errno)
                }
                throw .system(call: "mmap", detail: "of \(region.size) bytes of guest memory", errno: errno)
            }
            regions.append(GuestMemoryRegion(guestAddress: region.guestAddress, size: region.size, host: pointer))
        }
        map = GuestMemoryMap(regions: regions)
        self.backing = backing
        used = Array(repeating: 0, count: regions.count)
        memfds = fds
    }

    deinit {
        for region in map.regions { munmap(region.host, region.size) }
        for fd in memfds { close(fd) }
    }

    /// Carves `length` bytes out of region `region` (the first one by default).
    public mutating func allocate(_ length: Int, alignment: Int = 64, region index: Int = 0) throws(VhostError) -> GuestBuffer {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "alignment must be a power of 2")
        guard index >= 0 && index < map.regions.count else {
            throw .invalidConfiguration("guest memory has \(map.regions.count) regions; there is no region \(index)")
        }
        let region = map.regions[index]
        let start = (used[index] + alignment - 1) & ~(alignment - 1)
        guard length >= 0, start + length <= region.size else {
            throw .outOfGuestMemory("guest memory region \(index) (\(region.size) bytes at \(hex(region.guestAddress.rawValue))) has \(region.size - used[index]) bytes left; \(length) more were asked for: give it more memory")
        }
        used[index] = start + length
        return GuestBuffer(guestAddress: region.guestAddress + start, host: region.host + start, length: length)
    }

    /// Bytes still free in a region.
    public func available(region index: Int = 0) -> Int { map.regions[index].size - used[index] }
}

/// `struct vhost_memory` with its `vhost_memory_region`s, as VHOST_SET_MEM_TABLE takes it:
/// u32 nregions, u32 padding (must be 0), then per region u64 guest_phys_addr, u64 memory_size,
/// u64 userspace_addr, u64 flags_padding (must be 0). Layout asserted in CVhost.c.
public struct MemoryTable: Sendable, Equatable, CustomStringConvertible {
    public struct Region: Sendable, Equatable {
        public var guestAddress: UInt64
        public var size: UInt64
        public var userspaceAddress: UInt64
        public init(guestAddress: UInt64, size: UInt64, userspaceAddress: UInt64) {
            self.guestAddress = guestAddress; self.size = size; self.userspaceAddress = userspaceAddress
        }
    }

    public var regions: [Region]
    public init(regions: [Region]) { self.regions = regions }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + 32 * regions.count)
        func put<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
        put(UInt32(regions.count))
        put(UInt32(0))
        for region in regions {
            put(region.guestAddress)
            put(region.size)
            put(region.userspaceAddress)
            put(UInt64(0))
        }
        return bytes
    }

    public var description: String {
        "nregions: \(regions.count)" + regions.map {
            ", {gpa: \(hex($0.guestAddress)), size: \(hex($0.size)), uaddr: \(hex($0.userspaceAddress))}"
        }.joined()
    }
}
