import Virtio

/// A split ring plus buffers in one heap block, with a fake guest-physical base, for tests
/// that run the driver against the device model without a kernel.
final class TestRingMemory: @unchecked Sendable {
    let queueSize: UInt16
    let block: UnsafeMutableRawPointer
    let size: Int
    /// Guest-physical address of `block` (deliberately unlike its host address).
    let guestBase: UInt64 = 0x4000_0000
    let ring: SplitRing
    let buffersOffset: Int

    init(queueSize: UInt16, bufferBytes: Int = 64 * 1024) {
        self.queueSize = queueSize
        let layout = SplitRingLayout.offsets(queueSize: Int(queueSize))
        buffersOffset = (layout.total + 4095) & ~4095
        size = buffersOffset + bufferBytes
        block = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        block.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        ring = SplitRing(queueSize: queueSize, descriptors: block + layout.descriptors, avail: block + layout.avail, used: block + layout.used)
    }

    deinit { block.deallocate() }

    /// Guest address of byte `offset` of the buffer area.
    func bufferAddress(_ offset: Int) -> UInt64 { guestBase + UInt64(buffersOffset + offset) }

    var translate: @Sendable (UInt64, UInt32) -> UnsafeMutableRawPointer? {
        let base = guestBase, size = size
        nonisolated(unsafe) let block = block
        return { address, length in
            guard address >= base, address - base + UInt64(length) <= UInt64(size) else { return nil }
            return block + Int(address - base)
        }
    }
}
