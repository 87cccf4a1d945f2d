// attach's receive path as pktgen's sink, without a kernel: a VirtioNetEndpoint (attach's
// endpoint, its responder answering ARP, ping and UDP echo on port 7) on the in-process device,
// fed 64-byte UDP frames to port 9 (which nothing serves) in batches of 256, one
// `service` per batch once the device has put the whole batch on the RX ring. With `--sleep`
// each turn is attach's whole turn: `service(milliseconds: 1)` with attach's adaptive RX
// coalescing, which after taking the batch arms the queue and sleeps in epoll until the 1 ms
// delay passes (no frame comes); without it `service(milliseconds: 0)`, the receive path alone.
// Benchmarks/endpoint-sink counts the instructions inside `service` with callgrind
// (--toggle-collect), for N and 2N frames, and prints the difference / N: what one received
// frame costs attach's thread, repeatably (the profile of a real kernel under TCG samples too
// few of them to compare two builds).
//
//   endpoint-sink [--frames N] [--batch N] [--sleep]
#if canImport(Glibc)
import Glibc
#endif
import NetFormats
import Vhost
import VhostModel
import VhostNet

var frames = 51_200, batch = 256, sleeps = false
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--frames":
        guard let text = arguments.popFirst(), let n = Int(text), n > 0, n % 256 == 0 else {
            print("endpoint-sink: --frames wants a positive multiple of 256"); exit(2)
        }
        frames = n
    case "--batch":
        guard let text = arguments.popFirst(), let n = Int(text), n > 0, 256 % n == 0 else {
            print("endpoint-sink: --batch wants a power of 2 from 1 to 256 (frames per turn; the ring holds 256)"); exit(2)
        }
        batch = n
    case "--sleep": sleeps = true
    default:
        print("usage: endpoint-sink [--frames N] [--batch N] [--sleep]"); exit(2)
    }
}

let endpointMAC = MACAddress(0x52, 0x54, 0x00, 0xbe, 0x4c, 0x01)
let endpointIP = IPv4Address(10, 79, 0, 2)
var config = EndpointConfiguration(tapName: "vhu-sink")
config.ipv4 = IPv4Interface(address: endpointIP, prefixLength: 24)
config.udpEchoPort = 7
config.mac = endpointMAC
// attach's default: adaptive coalescing up to half the ring, each sleep at most 1 ms.
config.datapath.receiveCoalescing = ReceiveCoalescingSetting.adaptive.coalescing(queueSize: config.datapath.queueSize, eventIndex: true, mode: .interrupt)
/// The host end of the endpoint's frame pipe (noncopyable: kept in its box).
final class HostEnd { var end: FramePipeEnd? }
let host = HostEnd()
let endpoint: VirtioNetEndpoint<InProcessVhostNetDevice, FramePipeEnd>
do {
    endpoint = try VirtioNetEndpoint<InProcessVhostNetDevice, FramePipeEnd>(config) { pairConfig, logger throws(VhostError) in
        var pipe = try FramePipe(name: pairConfig.tapName)
        host.end = pipe.takeHostEnd()
        return try VirtioNetQueuePair(pairConfig, device: try InProcessVhostNetDevice(), port: pipe.takeDeviceEnd()!, logger: logger)
    }
} catch {
    print("endpoint-sink: the endpoint did not start: \(error)"); exit(1)
}
guard host.end != nil else { print("endpoint-sink: no host end"); exit(1) }

// pktgen's frame: 64 bytes on the wire (4 of them the FCS), UDP from 10.79.0.1:9 to port 9,
// behind the device's zero 12-byte virtio-net header.
let udp = UDPDatagram.build(source: IPv4Address(10, 79, 0, 1), destination: endpointIP, sourcePort: 9, destinationPort: 9,
                            payload: [UInt8](repeating: 0, count: 18)[...])
let frame = IPv4Packet.frame(destinationMAC: endpointMAC, sourceMAC: MACAddress(0x52, 0x54, 0x00, 0xbe, 0x4c, 0x02),
                             source: IPv4Address(10, 79, 0, 1), destination: endpointIP, protocolNumber: IPv4Packet.protocolUDP, payload: udp)
let message = [UInt8](repeating: 0, count: 12) + frame

var received = 0
for _ in 0..<(frames / batch) {
    do {
        for _ in 0..<batch { try host.end!.send(message) }
        var waited = 0
        while endpoint.pairs[0].withReceiveDriver({ $0.usedPending }) < batch {
            usleep(200); waited += 1
            if waited > 25_000 { print("endpoint-sink: the device put \(endpoint.pairs[0].withReceiveDriver { $0.usedPending }) of \(batch) frames on the ring in 5 s"); exit(1) }
        }
        received += try endpoint.service(milliseconds: sleeps ? 1 : 0)
    } catch {
        print("endpoint-sink: \(error)"); exit(1)
    }
}
let ignored = endpoint.responder.counters.ignored
print("endpoint-sink: \(received) frames received, \(ignored) ignored by the responder")
exit(received == frames && ignored == frames ? 0 : 1)
