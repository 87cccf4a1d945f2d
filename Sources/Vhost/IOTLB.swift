import CVhost
import Glibc
import SystemPackage

/// One device-IOTLB message on a vhost fd (linux/vhost_types.h `struct vhost_msg_v2` with its
/// `struct vhost_iotlb_msg`): 72 bytes, `type` (u32, VHOST_IOTLB_MSG_V2 = 2) and `asid` (u32) at
/// 0 and 4, then iova, size, uaddr (u64 at 8, 16, 24), perm and the message type (u8 at 32, 33).
/// With `VIRTIO_F_ACCESS_PLATFORM` the kernel writes a MISS for every address it cannot
/// translate; the driver's IOMMU answers with an UPDATE (vhost.c vhost_iotlb_miss,
/// vhost_chr_write_iter).
public struct IOTLBMessage: Sendable, Equatable, CustomStringConvertible {
    /// `VHOST_IOTLB_*`.
    public enum Kind: UInt8, Sendable { case miss = 1, update = 2, invalidate = 3, accessFail = 4, batchBegin = 5, batchEnd = 6 }
    /// `VHOST_ACCESS_*`: what the device may do through a mapping, or wanted to do on a MISS.
    public struct Access: OptionSet, Sendable, Hashable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let read = Self(rawValue: 1)
        public static let write = Self(rawValue: 2)
        public static let readWrite: Self = [.read, .write]
    }

    public static let size = 72
    /// `VHOST_IOTLB_MSG_V2`.
    public static let versionTwo: UInt32 = 2

    public var kind: Kind
    public var iova: UInt64
    public var length: UInt64
    public var userAddress: UInt64
    public var access: Access

    public init(kind: Kind, iova: UInt64, length: UInt64 = 0, userAddress: UInt64 = 0, access: Access = []) {
        self.kind = kind; self.iova = iova; self.length = length; self.userAddress = userAddress; self.access = access
    }

    /// The 72 bytes of a `vhost_msg_v2`.
    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: IOTLBMessage.size)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: IOTLBMessage.versionTwo.littleEndian, as: UInt32.self)
            raw.storeBytes(of: iova.littleEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: length.littleEndian, toByteOffset: 16, as: UInt64.self)
            raw.storeBytes(of: userAddress.littleEndian, toByteOffset: 24, as: UInt64.self)
            raw.storeBytes(of: access.rawValue, toByteOffset: 32, as: UInt8.self)
            raw.storeBytes(of: kind.rawValue, toByteOffset: 33, as: UInt8.self)
        }
        return bytes
    }

    /// Decodes a `vhost_msg` or `vhost_msg_v2` (they differ only in bytes 4–7); nil for anything else.
    public init?(decoding bytes: [UInt8]) {
        guard bytes.count >= 40 else { return nil }
        let value: (Int) -> UInt64 = { offset in (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) } }
        let outer = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
        guard outer == 1 || outer == 2, let kind = Kind(rawValue: bytes[33]) else { return nil }
        self.init(kind: kind, iova: value(8), length: value(16), userAddress: value(24), access: Access(rawValue: bytes[32]))
    }

    public var description: String {
        "IOTLB \(kind)(iova: 0x\(String(iova, radix: 16)), size: 0x\(String(length, radix: 16)), uaddr: 0x\(String(userAddress, radix: 16)), perm: \(access.contains(.read) ? "r" : "-")\(access.contains(.write) ? "w" : "-"))"
    }
}

extension IOTLBMessage {
    /// Reads the next message on the vhost fd `fd`, waiting up to `milliseconds`; nil on timeout.
    /// The kernel answers EBADFD when no IOTLB exists (ACCESS_PLATFORM off).
    public static func read(from fd: Int32, milliseconds: Int32, observer: IoctlObserver? = nil) throws(VhostError) -> IOTLBMessage? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, milliseconds) > 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: IOTLBMessage.size)
        let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            if errno == .resourceTemporarilyUnavailable || errno == .interrupted { return nil }
            throw .system(call: "read", detail: "IOTLB message", errno: errno)
        }
        let message = IOTLBMessage(decoding: Array(bytes.prefix(n)))
        if let message { observer?(IoctlEvent(.iotlbRead(message), result: .success(Int32(n)))) }
        return message
    }

    /// Writes the message to the vhost fd `fd`; one the kernel cannot apply is EFAULT.
    public func write(to fd: Int32, observer: IoctlObserver? = nil) throws(VhostError) {
        let bytes = encoded()
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let result: Result<Int32, Errno> = n < 0 ? .failure(Errno(rawValue: Glibc.errno)) : .success(Int32(n))
        observer?(IoctlEvent(.iotlbWrite(self), result: result))
        if case .failure(let errno) = result { throw .system(call: "write", detail: "\(self)", errno: errno) }
    }
}

extension VhostNetDevice {
    /// Reads the next IOTLB message the kernel queued (a MISS), waiting up to `milliseconds`.
    public func readIOTLBMessage(milliseconds: Int32) throws(VhostError) -> IOTLBMessage? {
        try IOTLBMessage.read(from: fd.rawValue, milliseconds: milliseconds, observer: observer)
    }

    /// Writes an IOTLB message (UPDATE, INVALIDATE) to the kernel.
    public func writeIOTLBMessage(_ message: IOTLBMessage) throws(VhostError) {
        try message.write(to: fd.rawValue, observer: observer)
    }
}
