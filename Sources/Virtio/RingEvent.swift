/// One ring operation of the driver, for `--record`: what was made available, and the kicks.
public enum RingEvent: Sendable, Equatable {
    /// `chains` chains were published on vring `queue`, holding `frameBytes` bytes of frame in
    /// all (TX) or room for them (RX), headers not counted.
    case published(queue: UInt32, chains: Int, frameBytes: Int)
    /// The driver signalled vring `queue`'s kick eventfd.
    case kicked(queue: UInt32)
}

/// Receives the driver's ring operations (see `RingEvent`).
public typealias RingObserver = @Sendable (RingEvent) -> Void
