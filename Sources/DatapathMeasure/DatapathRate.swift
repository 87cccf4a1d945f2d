import HostNetwork
import NetFormats
import Vhost
import VhostNet

/// Frame rates through a queue pair, measured one way for `vhostctl demo`, `vhostctl bench` and
/// the kernel tests.
public enum DatapathRate {
    public struct Measurement: Sendable {
        public var sent: UInt64
        /// TX: what the tap counted; RX: what the driver received.
        public var counted: UInt64
        public var seconds: Double
        public var kicks: UInt64 = 0
        public init(sent: UInt64, counted: UInt64, seconds: Double, kicks: UInt64 = 0) {
            self.sent = sent; self.counted = counted; self.seconds = seconds; self.kicks = kicks
        }
        public var framesPerSecond: Double { seconds > 0 ? Double(counted) / seconds : 0 }
    }

    /// TX (driver → vhost → tap): keeps the ring full with `frame` for `seconds`, `chunk` frames
    /// per `transmit` call; the tap's rx_packets counts what arrived.
    public static func transmit(_ pair: VhostNetQueuePair, frame: [UInt8], seconds: Double, chunk: Int) throws -> Measurement {
        try transmit(pair, until: { sent, elapsed in elapsed < seconds }, chunk: chunk) { _, buffer in
            buffer.copyBytes(from: frame)
            return frame.count
        }
    }

    /// TX of exactly `count` frames written by `fill`; the tap's rx_packets counts what arrived.
    public static func transmit(_ pair: VhostNetQueuePair, count: Int, fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws -> Measurement {
        try transmit(pair, until: { sent, _ in sent == 0 }, chunk: count, fill: fill)
    }

    /// Transmits `chunk` frames at a time while `until(sent, elapsed)` holds, and counts what the
    /// tap received (rx_packets, read before and after).
    static func transmit(_ pair: VhostNetQueuePair, until: (UInt64, Double) -> Bool, chunk: Int,
                         fill: (Int, UnsafeMutableRawBufferPointer) -> Int) throws -> Measurement {
        let before = KernelInfo.interfaceStatistic(pair.tap.name, "rx_packets") ?? 0
        let kicksBefore = pair.transmitCounters.kicks
        var sent: UInt64 = 0
        let start = ContinuousClock.now
        while until(sent, start.duration(to: .now).inSeconds) {
            let first = Int(sent)
            try pair.transmit(count: chunk) { i, buffer in fill(first + i, buffer) }
            sent += UInt64(chunk)
        }
        let elapsed = start.duration(to: .now).inSeconds
        let counted = (KernelInfo.interfaceStatistic(pair.tap.name, "rx_packets") ?? 0) - before
        return Measurement(sent: sent, counted: counted, seconds: elapsed, kicks: pair.transmitCounters.kicks - kicksBefore)
    }

    /// RX (host → tap → vhost → driver): a packet socket on the tap sends `frame` in bursts of
    /// `burst` (from this thread, so this is the path end to end); frames of its EtherType that
    /// the driver receives are counted, waiting up to `burstWait` seconds per burst. A frame
    /// that never arrives is not waited for again.
    public static func receive(_ pair: VhostNetQueuePair, frame: [UInt8], seconds: Double, burst: Int, burstWait: Double) throws -> Measurement {
        let socket = try PacketSocket(interfaceIndex: try pair.tap.interfaceIndex())
        let etherType = EthernetFrame.etherType(of: frame)
        var sent: UInt64 = 0, received: UInt64 = 0
        let start = ContinuousClock.now
        while start.duration(to: .now).inSeconds < seconds {
            for _ in 0..<burst { try socket.send(frame) }
            sent += UInt64(burst)
            let target = received + UInt64(burst)
            let deadline = ContinuousClock.now + .clampedSeconds(burstWait)
            while received < target && ContinuousClock.now < deadline {
                try pair.receive(milliseconds: 50) { f in
                    if EthernetFrame.etherType(of: f.frame) == etherType { received += 1 }
                }
            }
        }
        return Measurement(sent: sent, counted: received, seconds: start.duration(to: .now).inSeconds)
    }
}
