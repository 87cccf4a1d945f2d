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

    /// "attached", "stats" or "stopped".
    var event: String
    /// Seconds since attach finished setting up (stats, stopped).
    var elapsedSeconds: Double?
    var counters: Counters?
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
