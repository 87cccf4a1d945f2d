import VhostModel

extension InProcessVhostNetDevice {
    /// Fault injection: the next used entry the worker writes on vring `index` carries `id`
    /// instead of the chain's head, as a device that breaks the protocol would write it. For
    /// testing that the driver marks the queue broken instead of trusting it.
    public func corruptNextUsedEntry(index: UInt32, id: UInt32) {
        setNextUsedID(index: index, id: id)
    }

    /// Fault injection: the next packet the worker puts on the RX ring is reported with a used
    /// length of `length` bytes instead of what it wrote, as a device that lies about it would.
    /// For testing that the driver never reads past a buffer on the device's word.
    public func corruptNextUsedLength(_ length: UInt32) {
        setNextUsedLength(length)
    }
}
