import Synchronization

/// The three parts of a split virtqueue (virtio 1.x §2.7) in memory shared with the device.
///
/// Layout, little-endian, `n` = queue size:
/// - descriptor table: `n` × { addr u64, len u32, flags u16, next u16 } (16 bytes each), 16-aligned
/// - avail ring: flags u16, idx u16, ring[n] u16, used_event u16 (with EVENT_IDX), 2-aligned
/// - used ring:  flags u16, idx u16, ring[n] { id u32, len u32 }, avail_event u16, 4-aligned
///
/// `avail->idx` and `used->idx` are the indices the two sides publish to each other;
/// they are accessed as `Atomic<UInt16>` in the shared memory, as swift-system's IORing
/// does for its kernel-shared head and tail. The flags and event words, which one side
/// writes while the other may read them, are `Atomic<UInt16>` too, accessed relaxed.
///
/// Memory: `SplitRing` only holds pointers. Whoever allocated or mapped the three parts (a
/// `NetQueue`'s guest memory, a test's `TestRingMemory`) owns them and must outlive every
/// `SplitRing`, driver and device made over them; that is the lifetime every `// SAFETY:`
/// comment below relies on.
///
/// Ordering: every plain (non-atomic) access below touches an entry that one side owns at the
/// time. A descriptor and its avail slot belong to the driver until its release store of
/// `avail->idx` hands them over, and the device reads them only after an acquire load of that
/// index has seen it; a used entry belongs to the device until its release store of
/// `used->idx`, and the driver reads it only after an acquire load. The flags and event words
/// are hints whose every value is valid, ordered by the full fences in `publish`,
/// `enableInterrupts`, `enableNotify` and `shouldSignal`.
///
/// Access: every member is `package`. A `SplitRing` is raw pointers into memory shared with a
/// device, and its `@unchecked Sendable` holds only under the rules above, which this package's
/// driver, device model, queues and tests keep. Outside the package a driver or device is made
/// from the three parts' pointers (`SplitVirtqueueDriver.init(queueSize:descriptors:avail:used:…)`),
/// and nothing can be read or written through a ring. The type itself is still `public` only
/// because `VhostScript.ScriptRunner.ring(_:)` (being rewritten) returns one; it becomes
/// `@usableFromInline package` once that method is `package` too.
// SAFETY (@unchecked Sendable): the pointers are shared between the driver's and the device's
// threads on purpose; every access below is an atomic or touches an entry one side owns at the
// time (see "Ordering" above).
@usableFromInline package struct SplitRing: @unchecked Sendable {
    /// Entries in each part: a power of 2 in 1...32768.
    @usableFromInline package let queueSize: UInt16
    /// The descriptor table (`n` × 16 bytes).
    @usableFromInline package let descriptors: UnsafeMutableRawPointer
    /// The avail ring (driver → device).
    @usableFromInline package let avail: UnsafeMutableRawPointer
    /// The used ring (device → driver).
    @usableFromInline package let used: UnsafeMutableRawPointer

    /// Wraps three parts laid out as `SplitRingLayout` says; the memory must stay valid while
    /// the ring is used (see the type's comment).
    package init(queueSize: UInt16, descriptors: UnsafeMutableRawPointer, avail: UnsafeMutableRawPointer, used: UnsafeMutableRawPointer) {
        precondition(SplitRingLayout.isValidQueueSize(Int(queueSize)), "queue size \(queueSize) is not a power of 2 in 1...32768")
        self.queueSize = queueSize
        self.descriptors = descriptors
        self.avail = avail
        self.used = used
    }

    @usableFromInline @inline(__always) var mask: UInt16 { queueSize &- 1 }

    // MARK: descriptor table

    /// Reads descriptor `index` (which must be < `queueSize`).
    @inlinable @inline(__always) package func descriptor(_ index: UInt16) -> Descriptor {
        // SAFETY: index < queueSize keeps the 16 bytes inside the table, which the ring's owner
        // keeps alive; the reader owns the entry at this point (see the type's comment).
        let base = descriptors + Int(index) * SplitRingLayout.descriptorSize
        return Descriptor(
            address: UInt64(littleEndian: base.loadUnaligned(as: UInt64.self)),
            length: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
            flags: DescriptorFlags(rawValue: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self))),
            next: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 14, as: UInt16.self)))
    }

    /// Writes descriptor `index` (which must be < `queueSize`); the driver does so only for
    /// descriptors it has not made available yet.
    @inlinable @inline(__always) package func setDescriptor(_ index: UInt16, _ d: Descriptor) {
        // SAFETY: in bounds as in `descriptor`; the device reads the entry only after the
        // driver's release store of avail->idx that follows this write.
        let base = descriptors + Int(index) * SplitRingLayout.descriptorSize
        base.storeBytes(of: d.address.littleEndian, as: UInt64.self)
        base.storeBytes(of: d.length.littleEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: d.flags.rawValue.littleEndian, toByteOffset: 12, as: UInt16.self)
        base.storeBytes(of: d.next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    // MARK: avail ring

    // SAFETY: the avail ring starts 2-aligned (SplitRingLayout.availAlignment), so its u16
    // fields may be bound to UInt16/Atomic<UInt16>; all offsets below stay inside
    // availRingSize(queueSize:).
    @usableFromInline @inline(__always) var availFlagsPointer: UnsafePointer<Atomic<UInt16>> {
        UnsafePointer(avail.assumingMemoryBound(to: Atomic<UInt16>.self))
    }
    /// `avail->idx`: written by the driver with a release store, read by the device with an acquire load.
    @inlinable @inline(__always) package var availIndex: UnsafePointer<Atomic<UInt16>> {
        UnsafePointer((avail + 2).assumingMemoryBound(to: Atomic<UInt16>.self))
    }
    @usableFromInline @inline(__always) func availSlot(_ slot: UInt16) -> UnsafeMutablePointer<UInt16> {
        (avail + 4 + 2 * Int(slot & mask)).assumingMemoryBound(to: UInt16.self)
    }
    /// `used_event` (EVENT_IDX): the used index at which the driver wants the next interrupt.
    @inlinable @inline(__always) package var usedEvent: UnsafePointer<Atomic<UInt16>> {
        UnsafePointer((avail + 4 + 2 * Int(queueSize)).assumingMemoryBound(to: Atomic<UInt16>.self))
    }

    /// `avail->flags`: written by the driver, read by the device as a hint (any value is valid).
    package var availFlags: AvailFlags {
        // SAFETY: a 2-aligned u16 inside the avail ring, written by one side while the other
        // reads it, so an atomic (relaxed: a hint ordered by the full fences of
        // disableInterrupts/enableInterrupts and shouldSignal).
        get { AvailFlags(rawValue: UInt16(littleEndian: availFlagsPointer.pointee.load(ordering: .relaxed))) }
        nonmutating set { availFlagsPointer.pointee.store(newValue.rawValue.littleEndian, ordering: .relaxed) }
    }

    /// The head in avail ring slot `index & (queueSize - 1)`.
    @inlinable package func availEntry(_ index: UInt16) -> UInt16 {
        // SAFETY: the slot is masked into the ring; the device reads it only below an avail->idx
        // it has loaded with acquire, after the driver's write.
        UInt16(littleEndian: availSlot(index).pointee)
    }
    /// Writes `head` into avail ring slot `index & (queueSize - 1)`; the driver does so only
    /// beyond the avail->idx it has published.
    @inlinable package func setAvailEntry(_ index: UInt16, head: UInt16) {
        // SAFETY: masked into the ring; published later by the release store of avail->idx.
        availSlot(index).pointee = head.littleEndian
    }

    // MARK: used ring

    // SAFETY: the used ring starts 4-aligned (SplitRingLayout.usedAlignment); all offsets below
    // stay inside usedRingSize(queueSize:).
    @usableFromInline @inline(__always) var usedFlagsPointer: UnsafePointer<Atomic<UInt16>> {
        UnsafePointer(used.assumingMemoryBound(to: Atomic<UInt16>.self))
    }
    /// `used->idx`: written by the device with a release store, read by the driver with an acquire load.
    @inlinable @inline(__always) package var usedIndex: UnsafePointer<Atomic<UInt16>> {
        UnsafePointer((used + 2).assumingMemoryBound(to: Atomic<UInt16>.self))
    }
    /// `avail_event` (EVENT_IDX): the avail index at which the device wants the next kick.
    @inlinable @inline(__always) package var availEvent: UnsafePointer<Atomic<UInt16>> {
        UnsafePointer((used + 4 + 8 * Int(queueSize)).assumingMemoryBound(to: Atomic<UInt16>.self))
    }

    /// `used->flags`: written by the device, read by the driver as a hint (any value is valid).
    @inlinable package var usedFlags: UsedFlags {
        // SAFETY: a 4-aligned u16 inside the used ring, written by one side while the other
        // reads it, so an atomic (relaxed: a hint ordered by the full fences of publish and
        // enableNotify).
        get { UsedFlags(rawValue: UInt16(littleEndian: usedFlagsPointer.pointee.load(ordering: .relaxed))) }
        nonmutating set { usedFlagsPointer.pointee.store(newValue.rawValue.littleEndian, ordering: .relaxed) }
    }

    /// The element in used ring slot `index & (queueSize - 1)`.
    @inlinable package func usedEntry(_ index: UInt16) -> UsedElement {
        // SAFETY: masked into the ring; the driver reads it only below a used->idx loaded with
        // acquire, after the device's write and release store.
        let base = used + 4 + 8 * Int(index & mask)
        return UsedElement(
            id: UInt32(littleEndian: base.loadUnaligned(as: UInt32.self)),
            length: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
    }

    /// Writes `element` into used ring slot `index & (queueSize - 1)`; the device does so only
    /// beyond the used->idx it has published.
    package func setUsedEntry(_ index: UInt16, _ element: UsedElement) {
        // SAFETY: masked into the ring; published later by the release store of used->idx.
        let base = used + 4 + 8 * Int(index & mask)
        base.storeBytes(of: element.id.littleEndian, as: UInt32.self)
        base.storeBytes(of: element.length.littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    /// Zeroes all three parts (flags, indices, entries), as a fresh ring must be before
    /// `VHOST_NET_SET_BACKEND`: the kernel reads `used->idx` at attach time (vhost.c vhost_vq_init_access).
    package func reset() {
        // SAFETY: exactly the three parts' sizes; done before either side runs, so no one else
        // reads the memory meanwhile.
        descriptors.initializeMemory(as: UInt8.self, repeating: 0, count: SplitRingLayout.descriptorTableSize(queueSize: Int(queueSize)))
        avail.initializeMemory(as: UInt8.self, repeating: 0, count: SplitRingLayout.availRingSize(queueSize: Int(queueSize)))
        used.initializeMemory(as: UInt8.self, repeating: 0, count: SplitRingLayout.usedRingSize(queueSize: Int(queueSize)))
    }
}

/// One entry of the descriptor table (`struct vring_desc`).
public struct Descriptor: Equatable, Sendable {
    /// Guest-physical address of the buffer.
    public var address: UInt64
    /// Length of the buffer in bytes.
    public var length: UInt32
    /// `VRING_DESC_F_*`.
    public var flags: DescriptorFlags
    /// The next descriptor of the chain when `flags` has `.next`.
    public var next: UInt16
    /// A descriptor with the given fields.
    public init(address: UInt64, length: UInt32, flags: DescriptorFlags, next: UInt16) {
        self.address = address; self.length = length; self.flags = flags; self.next = next
    }
}

/// `vring_desc.flags`.
public struct DescriptorFlags: OptionSet, Sendable, Hashable {
    /// The little-endian-decoded bits.
    public var rawValue: UInt16
    /// Flags from their bits.
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `VRING_DESC_F_NEXT`
    @inlinable public static var next: Self { Self(rawValue: 1) }
    /// `VRING_DESC_F_WRITE`: device-writable.
    @inlinable public static var write: Self { Self(rawValue: 2) }
    /// `VRING_DESC_F_INDIRECT`: the buffer is a table of descriptors.
    @inlinable public static var indirect: Self { Self(rawValue: 4) }
}

/// `vring_avail.flags`.
public struct AvailFlags: OptionSet, Sendable {
    /// The bits.
    public var rawValue: UInt16
    /// Flags from their bits.
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `VRING_AVAIL_F_NO_INTERRUPT`
    @inlinable public static var noInterrupt: Self { Self(rawValue: 1) }
}

/// `vring_used.flags`.
public struct UsedFlags: OptionSet, Sendable {
    /// The bits.
    public var rawValue: UInt16
    /// Flags from their bits.
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `VRING_USED_F_NO_NOTIFY`
    @inlinable public static var noNotify: Self { Self(rawValue: 1) }
}

/// One entry of the used ring (`struct vring_used_elem`).
public struct UsedElement: Equatable, Sendable {
    /// The head of the chain the device used (with IN_ORDER: of a batch's last chain).
    public var id: UInt32
    /// Bytes the device wrote into the chain's writable buffers (0 for TX).
    public var length: UInt32
    /// An element with the given fields.
    public init(id: UInt32, length: UInt32) { self.id = id; self.length = length }
}

/// Sizes and alignments of the split ring parts (virtio 1.x §2.7, and vhost.c vq_access_ok).
public enum SplitRingLayout {
    /// Bytes of one `vring_desc`.
    public static let descriptorSize = 16
    /// Bytes of one `vring_used_elem`.
    public static let usedElementSize = 8
    /// Required alignment of the descriptor table.
    public static let descriptorAlignment = 16
    /// Required alignment of the avail ring.
    public static let availAlignment = 2
    /// Required alignment of the used ring.
    public static let usedAlignment = 4
    /// vhost.c vhost_vring_set_num: num must be a power of 2 and at most 0xffff, so 32768.
    public static let maximumQueueSize = 32768

    /// Whether `n` is a queue size vhost accepts: a power of 2 in 1...32768.
    public static func isValidQueueSize(_ n: Int) -> Bool { n >= 1 && n <= maximumQueueSize && n & (n - 1) == 0 }

    /// Bytes of the descriptor table.
    public static func descriptorTableSize(queueSize n: Int) -> Int { 16 * n }
    /// flags + idx + ring[n] + used_event (always reserved, used with EVENT_IDX).
    public static func availRingSize(queueSize n: Int) -> Int { 4 + 2 * n + 2 }
    /// flags + idx + ring[n] + avail_event (always reserved, used with EVENT_IDX).
    public static func usedRingSize(queueSize n: Int) -> Int { 4 + 8 * n + 2 }

    /// Offsets of the three parts when laid out in one block: descriptors at 0, avail right
    /// after, used at the next 4-byte boundary.
    public static func offsets(queueSize n: Int) -> (descriptors: Int, avail: Int, used: Int, total: Int) {
        let avail = descriptorTableSize(queueSize: n)
        let usedStart = (avail + availRingSize(queueSize: n) + usedAlignment - 1) & ~(usedAlignment - 1)
        return (0, avail, usedStart, usedStart + usedRingSize(queueSize: n))
    }
}

/// virtio 1.x §2.7.10 / linux virtio_ring.h vring_need_event: whether an index moving from
/// `old` to `new` crossed the other side's `event` index.
@inline(__always)
public func vringNeedEvent(event: UInt16, new: UInt16, old: UInt16) -> Bool {
    (new &- event &- 1) < (new &- old)
}
