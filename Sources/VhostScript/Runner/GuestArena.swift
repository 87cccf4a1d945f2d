import Vhost
import Virtio

/// Guest memory the script mapped, handing out guest-physical ranges for `alloc`, rings and the
/// frame buffers: a bump pointer per region that skips ranges the script chose itself (`ring
/// … at=`, rings named by address). All arithmetic is overflow-checked, and each claim is
/// passed over once, so allocation costs O(log n) however a script interleaves them.
final class GuestArena {
    let memory: GuestMemory
    /// The open device was given addresses in this memory (a table, a ring, an IOTLB mapping):
    /// it stays mapped until that device is closed.
    var handedToDevice = false
    /// Bytes mapped.
    let bytes: UInt64
    private var regions: [BumpRegion]

    /// A dirty log (`log SIZE`), not guest memory: the kernel's log bits must land in one.
    let holdsLog: Bool

    init(_ memory: consuming GuestMemory, holdsLog: Bool = false) {
        self.holdsLog = holdsLog
        let regions = memory.map.regions.map { BumpRegion(start: $0.guestAddress.rawValue, length: UInt64($0.size)) }
        bytes = memory.map.regions.reduce(0) { $0 + UInt64($1.size) }
        self.memory = memory
        self.regions = regions
    }

    /// The host ranges of the mapping, as the device may be allowed to write through them.
    var hostRanges: [(start: UInt64, length: UInt64)] { memory.map.regions.map { ($0.hostAddress.rawValue, UInt64($0.size)) } }

    /// Takes `size` bytes aligned to `alignment` (a power of 2): their GPA, or nil when no region has room.
    func allocate(_ size: UInt64, alignment: UInt64) -> UInt64? {
        for i in regions.indices {
            if let gpa = regions[i].allocate(size, alignment: alignment) { return gpa }
        }
        return nil
    }

    /// Records that the script put something at `[start, start + size)`: later allocations avoid it.
    func claim(_ start: UInt64, size: UInt64) {
        let (end, overflow) = start.addingReportingOverflow(size)
        for i in regions.indices { regions[i].claim(start: start, end: overflow ? UInt64.max : end) }
    }
}

/// One region's bump allocator: `next` only grows; `ahead` holds the claims that end beyond it,
/// as a binary min-heap by start, so the allocator meets them in address order.
struct BumpRegion {
    let start: UInt64
    /// Exclusive; regions never reach 2^64 (the parser and `memory` check it).
    let end: UInt64
    var next: UInt64
    var ahead: [(start: UInt64, end: UInt64)] = []

    init(start: UInt64, length: UInt64) {
        self.start = start
        let (end, overflow) = start.addingReportingOverflow(length)
        self.end = overflow ? UInt64.max : end
        next = start
    }

    static func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64? {
        let (sum, overflow) = value.addingReportingOverflow(alignment &- 1)
        return overflow ? nil : sum & ~(alignment &- 1)
    }

    mutating func allocate(_ size: UInt64, alignment: UInt64) -> UInt64? {
        guard alignment > 0, alignment & (alignment - 1) == 0, var candidate = BumpRegion.alignUp(next, alignment) else { return nil }
        while true {
            let (candidateEnd, overflow) = candidate.addingReportingOverflow(size)
            guard !overflow, candidateEnd <= end else { return nil }
            // Claims wholly behind the candidate no longer matter.
            while let top = ahead.first, top.end <= candidate { popFirst() }
            if let top = ahead.first, top.start < candidateEnd {
                // The first claim in address order overlaps: go past it.
                guard let after = BumpRegion.alignUp(top.end, alignment) else { return nil }
                popFirst()
                candidate = after
                continue
            }
            next = candidateEnd
            return candidate
        }
    }

    mutating func claim(start claimStart: UInt64, end claimEnd: UInt64) {
        guard claimEnd > next, claimStart < end, claimEnd > start else { return }
        ahead.append((claimStart, claimEnd))
        var child = ahead.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard ahead[child].start < ahead[parent].start else { break }
            ahead.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func popFirst() {
        guard !ahead.isEmpty else { return }
        ahead.swapAt(0, ahead.count - 1)
        ahead.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < ahead.count, ahead[left].start < ahead[smallest].start { smallest = left }
            if right < ahead.count, ahead[right].start < ahead[smallest].start { smallest = right }
            guard smallest != parent else { return }
            ahead.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
