import Vhost
import Virtio

/// Where the kernel sets dirty-log bits: one bit per 4 KiB page of guest-physical memory, at
/// `log_base + page / 8` (vhost.c log_write), for every write through the memory table once
/// `VHOST_F_LOG_ALL` is acked, and for the used ring of a vring whose addresses carry
/// `VHOST_VRING_F_LOG`, at its `log_guest_addr` (log_used). vhost.c checks those bytes with
/// `access_ok` only, and its log base is 0 until `SET_LOG_BASE`: a log too small for the
/// memory, or none, would let the kernel set bits in whatever else this process maps there.
/// The runner refuses a request after which that could happen, as it refuses ring addresses
/// outside mapped memory (`VhostRequest.writableRangeProblem`).
struct LogReach {
    /// The log's host address as the device holds it (0 before `SET_LOG_BASE`).
    var base: UInt64 = 0
    var logAll = false
    var table: [MemoryTable.Region] = []
    var addresses: [VringIndex: VringAddresses] = [:]
    var sizes: [VringIndex: UInt32] = [:]

    static let logAllBit: UInt64 = 1 << 26

    /// The host bytes of the log that cover `length` bytes of guest memory at `gpa`, or nil when
    /// the arithmetic leaves 64 bits (then nothing can cover them).
    static func logBytes(base: UInt64, gpa: UInt64, length: UInt64) -> (start: UInt64, length: UInt64)? {
        guard length > 0 else { return (base, 0) }
        let (last, o1) = gpa.addingReportingOverflow(length - 1)
        let first = gpa / 4096 / 8, end = last / 4096 / 8
        let (start, o2) = base.addingReportingOverflow(first)
        guard !o1, !o2 else { return nil }
        return (start, end - first + 1)
    }

    /// Why the kernel could set a log bit outside `mapped` in this state, or nil. The runner
    /// passes the dirty logs it mapped (`ScriptSession.logRanges`), not all its memory.
    func problem(mapped: MappedRanges) -> String? {
        var reached: [(what: String, gpa: UInt64, length: UInt64)] = []
        if logAll {
            for region in table where region.size > 0 { reached.append(("memory at gpa 0x\(String(region.guestAddress, radix: 16))", region.guestAddress, region.size)) }
        }
        for (index, a) in addresses.sorted(by: { $0.key.rawValue < $1.key.rawValue }) where a.flags.contains(.log) {
            let num = UInt64(sizes[index] ?? 1)
            reached.append(("vring \(index)'s used ring logged at gpa 0x\(String(a.log?.rawValue ?? 0, radix: 16))", a.log?.rawValue ?? 0, 6 + 8 * num))
        }
        for (what, gpa, length) in reached {
            guard let bytes = LogReach.logBytes(base: base, gpa: gpa, length: length), mapped.contains(bytes.start, length: bytes.length) else {
                let where_ = base == 0 ? "no dirty log (the kernel's log base is 0)" : "the dirty log at 0x\(String(base, radix: 16))"
                return "\(what) (\(length) bytes) would be logged by the kernel through \(where_), outside memory mapped for it: map a `log` large enough and give it with set-log-base first"
            }
        }
        return nil
    }

    /// The state the device would hold if it accepted `request`.
    func applying(_ request: VhostRequest) -> LogReach {
        var next = self
        switch request {
        case .setFeatures(let bits): next.logAll = bits & LogReach.logAllBit != 0
        case .setFeaturesArray(let words): next.logAll = (words.first ?? 0) & LogReach.logAllBit != 0
        case .setLogBase(let address): next.base = address.rawValue
        case .setMemoryTable(let table): next.table = table.regions
        case .setVringAddress(let index, let a): next.addresses[index] = a
        case .setVringNum(let index, let num): next.sizes[index] = num
        case .resetOwner: next = LogReach()
        default: break
        }
        return next
    }
}
