import Vhost
import VhostNet
import Virtio

/// Transmits `frames` test frames in batches and checks each arrives byte for byte on a packet
/// socket bound to the tap.
func transmitAndCompare(_ pair: VhostNetQueuePair, frames total: Int, batch: Int = 100) throws {
    let socket = try PacketSocket(interfaceIndex: try pair.tap.interfaceIndex(), etherType: EthernetFrame.experimentalType)
    socket.setBuffers(bytes: 8 << 20)
    var next = 0
    while next < total {
        let count = min(batch, total - next)
        let first = next
        try pair.transmit(count: count) { i, buffer in TestFrame.write(first + i, into: buffer) }
        for sequence in first..<(first + count) {
            guard let frame = socket.receive(milliseconds: 5000) else {
                throw KernelTestFailure("frame \(sequence) never reached the packet socket")
            }
            try expect(frame == TestFrame.bytes(sequence), "frame \(sequence) differs (\(frame.count) bytes, expected \(TestFrame.length(sequence)))")
        }
        next += count
    }
    try expect(pair.transmitCounters.ringErrors == 0, "the kernel signalled \(pair.transmitCounters.ringErrors) TX vring errors")
}

/// Sends `frames` test frames from the host stack (a packet socket on the tap) in batches and
/// checks each arrives in the RX ring, in order and byte for byte. Other traffic is ignored.
/// `lengths` overrides the frame lengths (default 60...1514).
func receiveAndCompare(_ pair: VhostNetQueuePair, frames total: Int, batch: Int = 32) throws {
    let socket = try PacketSocket(interfaceIndex: try pair.tap.interfaceIndex())
    var received = 0, other = 0
    var sequence = 0
    while sequence < total {
        let count = min(batch, total - sequence)
        for s in sequence..<(sequence + count) { try socket.send(TestFrame.bytes(s)) }
        var expected = sequence
        let deadline = MonotonicClock.seconds() + 10
        var mismatch: String? = nil
        while expected < sequence + count && MonotonicClock.seconds() < deadline {
            pair.receive(milliseconds: 1000) { frame in
                let bytes = [UInt8](frame.frame)
                guard EthernetFrame.etherType(of: bytes) == EthernetFrame.experimentalType else { other += 1; return }
                if mismatch == nil && bytes != TestFrame.bytes(expected) {
                    mismatch = "frame \(expected) differs: \(bytes.count) bytes, expected \(TestFrame.length(expected))"
                }
                expected += 1
                received += 1
            }
        }
        if let mismatch { throw KernelTestFailure(mismatch) }
        try expect(expected == sequence + count, "only \(expected - sequence) of frames \(sequence)..<\(sequence + count) arrived in the ring")
        sequence += count
    }
    say("  \(received) frames received and compared, \(other) other frames (host stack traffic) ignored")
    try expect(pair.receiveCounters.ringErrors == 0, "the kernel signalled \(pair.receiveCounters.ringErrors) RX vring errors")
}

func pair(_ tap: String, _ configure: (inout VhostNetQueuePair.Configuration) -> Void = { _ in }) throws -> VhostNetQueuePair {
    var config = VhostNetQueuePair.Configuration(tapName: tap)
    configure(&config)
    return try VhostNetQueuePair(config)
}
