/// IP fragments (RFC 791 for IPv4, RFC 8200 §4.5 for IPv6): reassembling the fragments of a
/// datagram, and cutting one into fragments that fit a link's MTU.

/// Reassembles datagrams from their fragments, with bounded memory: at most `maximumPending`
/// datagrams at once (the oldest goes first), none larger than 65535 bytes, and any datagram
/// with overlapping fragments discarded whole (RFC 5722). Pure state: no clock, no I/O.
public struct FragmentReassembler: Sendable {
    /// What identifies a datagram's fragments: both addresses (an IPv4 address in the low 32
    /// bits), the identification and, for IPv4, the protocol.
    public struct Key: Hashable, Sendable {
        /// 4 or 6.
        public var version: UInt8
        /// The source address (IPv4 in the low 32 bits).
        public var source: IPv6Address
        /// The destination address (IPv4 in the low 32 bits).
        public var destination: IPv6Address
        /// The identification field.
        public var identification: UInt32
        /// The upper-layer protocol (IPv4's field; for IPv6 the fragment header's next header).
        public var protocolNumber: UInt8
        /// The key of an IPv4 fragment.
        public init(_ ip: IPv4Packet) {
            version = 4
            source = IPv6Address(high: 0, low: UInt64(ip.source.value))
            destination = IPv6Address(high: 0, low: UInt64(ip.destination.value))
            identification = UInt32(ip.identification)
            protocolNumber = ip.protocolNumber
        }
        /// The key of an IPv6 fragment (the upper-layer protocol is not part of it).
        public init(_ ip: IPv6Packet, identification: UInt32) {
            version = 6
            source = ip.source
            destination = ip.destination
            self.identification = identification
            protocolNumber = 0
        }
    }

    /// What adding a fragment did.
    public enum Outcome: Sendable, Equatable {
        /// Kept: more fragments are needed.
        case incomplete
        /// The last missing fragment: the datagram's upper-layer bytes, whole.
        case complete([UInt8])
        /// Discarded, with the datagram so far (overlap, a length that does not add up, too large).
        case discarded(String)
    }

    private struct Pending: Sendable {
        var data: [UInt8] = []
        /// Ranges received, sorted, disjoint.
        var ranges: [Range<Int>] = []
        /// The datagram's length, once the last fragment (M = 0) arrived.
        var total: Int?
        var age: UInt64
    }

    /// The largest datagram (upper-layer bytes) accepted.
    public var maximumDatagram = 65535
    /// Datagrams reassembled at once.
    public var maximumPending = 16
    private var pending: [Key: Pending] = [:]
    private var clock: UInt64 = 0
    /// Datagrams given up to make room for newer ones.
    public private(set) var evicted: UInt64 = 0

    /// A reassembler with nothing pending.
    public init() {}

    /// Datagrams waiting for fragments.
    public var pendingCount: Int { pending.count }

    /// Adds the fragment that holds `data` at `offset` of the datagram `key`; `more` is its M flag.
    public mutating func add(_ key: Key, offset: Int, more: Bool, data: UnsafeRawBufferPointer) -> Outcome {
        let (end, overflow) = offset.addingReportingOverflow(data.count)
        guard offset >= 0, !overflow, end <= maximumDatagram else {
            pending[key] = nil
            return .discarded("a fragment ending at byte \(offset) + \(data.count) is past the largest datagram (\(maximumDatagram))")
        }
        // Every fragment but the last carries a multiple of 8 bytes (RFC 8200 §4.5; RFC 791's
        // offsets are in units of 8), and holds something.
        guard !more || (data.count > 0 && data.count % 8 == 0) else {
            pending[key] = nil
            return .discarded("a fragment of \(data.count) bytes with more to follow is not a multiple of 8")
        }
        // The entry is taken out of the table while it changes and put back at the end: a copy
        // left in the table would make every fragment copy the datagram's bytes (copy-on-write),
        // up to 64 KiB per fragment for a sender who sends small ones.
        var entry: Pending
        if let existing = pending.removeValue(forKey: key) {
            entry = existing
        } else {
            if pending.count >= maximumPending, let oldest = pending.min(by: { $0.value.age < $1.value.age })?.key {
                pending[oldest] = nil
                evicted &+= 1
            }
            clock &+= 1
            entry = Pending(age: clock)
        }
        let range = offset..<end
        if !more {
            if let total = entry.total, total != end {
                return .discarded("two last fragments end at \(total) and \(end)")
            }
            if let last = entry.ranges.last, last.upperBound > end {
                return .discarded("the last fragment ends at \(end), before bytes already received")
            }
            entry.total = end
        } else if let total = entry.total, end > total {
            return .discarded("a fragment runs to \(end), past the datagram's end \(total)")
        }
        if entry.ranges.contains(range) {
            // The same fragment again (a retransmission): nothing new.
            pending[key] = entry
            return .incomplete
        }
        if entry.ranges.contains(where: { $0.overlaps(range) }) {
            return .discarded("fragments overlap at \(range)")
        }
        if entry.data.count < end { entry.data.append(contentsOf: [UInt8](repeating: 0, count: end &- entry.data.count)) }
        entry.data.withUnsafeMutableBytes { buffer in
            guard let base = buffer.baseAddress, let from = data.baseAddress, !data.isEmpty else { return }
            (base + offset).copyMemory(from: from, byteCount: data.count)
        }
        let insertAt = entry.ranges.firstIndex { $0.lowerBound > range.lowerBound } ?? entry.ranges.count
        entry.ranges.insert(range, at: insertAt)
        if let total = entry.total, covers(entry.ranges, total) {
            return .complete(Array(entry.data.prefix(total)))
        }
        pending[key] = entry
        return .incomplete
    }

    /// Whether sorted disjoint ranges cover 0..<total without a hole.
    private func covers(_ ranges: [Range<Int>], _ total: Int) -> Bool {
        var next = 0
        for r in ranges {
            guard r.lowerBound == next else { return false }
            next = r.upperBound
        }
        return next == total
    }
}

/// Cutting a datagram's upper-layer bytes into fragments.
public enum Fragmentation {
    /// The ranges of `length` upper-layer bytes, each at most `maximum` bytes rounded down to a
    /// multiple of 8 (every fragment but the last carries a multiple of 8). `maximum` must be at least 8.
    public static func ranges(length: Int, maximum: Int) -> [Range<Int>] {
        precondition(maximum >= 8, "a fragment carries at least 8 bytes")
        let step = maximum & ~7
        return stride(from: 0, to: max(length, 1), by: step).map { $0..<min(length, $0 + step) }
    }
}
