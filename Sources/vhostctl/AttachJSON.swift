import Vhost
import VhostNet

/// `attach --json`: JSON Lines on standard output (docs/json.md): one `attached` object once set
/// up, one `stats` object per --stats interval with the counter line's fields, and one `stopped`
/// object at the end with the final counters.
struct AttachEvent: Encodable {
    struct Direction: Encodable {
        var frames: UInt64
        var bytes: UInt64
        var drops: UInt64
    }

    /// The counter line's fields, by the same names.
    struct Counters: Encodable {
        var rx: Direction
        var tx: Direction
        var kicks: UInt64
        var calls: UInt64
        var arp: UInt64
        var icmp: UInt64
        var udp: UInt64
        var ndAdvertisements: UInt64
        var ndSolicitations: UInt64
        var dad: UInt64
        var icmp6: UInt64
        var udp6: UInt64
        var reassembled: UInt64
        var fragmentsSent: UInt64
        var uso: UInt64
        var csumErrors: UInt64

        init<B: VhostBackend & ~Copyable, P: NetworkPort & ~Copyable>(_ endpoint: VirtioNetEndpoint<B, P>) {
            let rx = endpoint.receiveCounters, tx = endpoint.transmitCounters, r = endpoint.responder.counters
            self.rx = Direction(frames: rx.frames, bytes: rx.bytes, drops: rx.drops)
            self.tx = Direction(frames: tx.frames, bytes: tx.bytes, drops: tx.drops)
            // Sums of two event counters, wrapping only after 2^64 events (as the text line's).
            kicks = rx.kicks &+ tx.kicks
            calls = rx.calls &+ tx.calls
            arp = r.arpReplies
            icmp = r.icmpEchoReplies
            udp = r.udpEchoes
            ndAdvertisements = r.neighborAdvertisements
            ndSolicitations = r.neighborSolicitations
            dad = r.duplicateAddressProbesAnswered
            icmp6 = r.icmp6EchoReplies
            udp6 = r.udp6Echoes
            reassembled = r.reassembled
            fragmentsSent = r.fragmentsSent
            uso = r.segmentationOffloads
            csumErrors = r.checksumErrors
        }
    }

    /// One queue pair's counters and rates (`stats`: `queues`, one per queue pair).
    struct QueuePair: Encodable {
        struct Side: Encodable {
            var frames: UInt64
            var bytes: UInt64
            /// Frames we dropped (ours, not the tap's: see `TapCounters`).
            var drops: UInt64
            var ringErrors: UInt64
            var calls: UInt64
            var kicks: UInt64
            /// Since the previous snapshot (0 for the first).
            var framesPerSecond: Double
            var bytesPerSecond: Double
        }
        var queuePair: Int
        /// False while the backends are detached (the control socket's `stop`, or a disabled queue).
        var running: Bool
        var rx: Side
        var tx: Side

        init(_ statistics: QueuePairStatistics, rates: QueuePairRates) {
            queuePair = statistics.queuePair
            running = statistics.running
            let r = statistics.receive, t = statistics.transmit
            rx = Side(frames: r.frames, bytes: r.bytes, drops: r.drops, ringErrors: r.ringErrors, calls: r.calls, kicks: r.kicks,
                      framesPerSecond: rates.receiveFramesPerSecond, bytesPerSecond: rates.receiveBytesPerSecond)
            tx = Side(frames: t.frames, bytes: t.bytes, drops: t.drops, ringErrors: t.ringErrors, calls: t.calls, kicks: t.kicks,
                      framesPerSecond: rates.transmitFramesPerSecond, bytesPerSecond: rates.transmitBytesPerSecond)
        }
    }

    /// The tap's own counters (/sys/class/net/TAP/statistics), named from our side: the tap's
    /// tx is what the host sent toward us (our RX), its tx_dropped what never reached our ring.
    struct TapCounters: Encodable {
        var txPacketsTowardUs: UInt64
        var txDroppedTowardUs: UInt64
        var rxPacketsFromUs: UInt64
        var rxDroppedFromUs: UInt64

        init(_ statistics: TapStatistics) {
            txPacketsTowardUs = statistics.towardUsPackets
            txDroppedTowardUs = statistics.towardUsDropped
            rxPacketsFromUs = statistics.fromUsPackets
            rxDroppedFromUs = statistics.fromUsDropped
        }
    }

    /// "attached", "stats" or "stopped".
    var event: String
    /// Seconds since attach finished setting up (stats, stopped).
    var elapsedSeconds: Double?
    var counters: Counters?
    /// stats: each queue pair's counters and rates.
    var queues: [QueuePair]?
    /// stats: the tap's own counters (absent for a backend without them).
    var tap: TapCounters?
    // attached:
    var interface: String?
    var backend: String?
    var mac: String?
    var queuePairs: Int?
    var negotiatedFeatures: [String]?
    // stopped:
    /// The signal that stopped attach (absent when --duration ran out).
    var signal: Int32?
    /// Frames written to --pcap (absent without it).
    var pcapFrames: Int?
    var pcapPath: String?
}
