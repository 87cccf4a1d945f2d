/// A guest-physical address (GPA): what descriptors carry and the memory table translates
/// (vhost.c translate_desc). Distinct from `HostAddress`, so that no integer is turned into a
/// pointer by mistake: the only way from a GPA to memory is `GuestMemoryMap.host(guest:length:)`.
public struct GuestAddress: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByIntegerLiteral {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt64) { rawValue = value }

    public static func < (a: GuestAddress, b: GuestAddress) -> Bool { a.rawValue < b.rawValue }
    /// The address `offset` bytes further.
    public static func + (a: GuestAddress, offset: Int) -> GuestAddress { GuestAddress(a.rawValue + UInt64(offset)) }
    /// Bytes from `b` up to `a`.
    public static func - (a: GuestAddress, b: GuestAddress) -> UInt64 { a.rawValue - b.rawValue }
    public var description: String { "gpa 0x" + String(rawValue, radix: 16) }
}

/// A host virtual address (HVA) in this process: what `VHOST_SET_VRING_ADDR`, `VHOST_SET_LOG_BASE`
/// and the memory table's `userspace_addr` carry. Made only from a pointer, never from a GPA.
public struct HostAddress: Hashable, Sendable, CustomStringConvertible {
    /// The address as the kernel's u64 fields take it.
    public let rawValue: UInt64

    public init(_ pointer: UnsafeRawPointer) { rawValue = UInt64(UInt(bitPattern: pointer)) }

    /// An arbitrary value, for ioctl scripts and tests that probe the kernel's checks with
    /// addresses no mapping backs. Never dereferenced by swift-vhost.
    public init(unchecked rawValue: UInt64) { self.rawValue = rawValue }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// The addresses `VHOST_SET_VRING_ADDR` takes for one vring: the three ring parts as host
/// addresses, and, for dirty logging, the used ring's guest-physical address.
public struct VringAddresses: Sendable, Equatable {
    public var descriptors: HostAddress
    public var avail: HostAddress
    public var used: HostAddress
    /// `log_guest_addr`: with `VHOST_VRING_F_LOG`, the used ring's GPA, logged on every used write.
    public var log: GuestAddress?
    /// The `flags` word: `.log` when `log` is given. Other bits are for probing the kernel
    /// (EOPNOTSUPP); the library never sets them.
    public var flags: VringAddressFlags

    /// The addresses, with `VHOST_VRING_F_LOG` set exactly when `log` is given unless `flags` says otherwise.
    public init(descriptors: HostAddress, avail: HostAddress, used: HostAddress, log: GuestAddress? = nil, flags: VringAddressFlags? = nil) {
        self.descriptors = descriptors; self.avail = avail; self.used = used; self.log = log
        self.flags = flags ?? (log == nil ? [] : .log)
    }
}
