import DatapathSuite
import Glibc
import NetFormats
import Vhost
import VhostNet
import Virtio

/// Backends other than a tap fd (net.c get_socket): a raw packet socket, and macvtap.
let backendTests: [KernelTest] = [
    KernelTest(name: "backend: a raw packet socket bound to an interface carries traffic both ways (VHOST_NET_F_VIRTIO_NET_HDR)") {
        // The interface is a tap whose fd this test holds: what vhost sends through the packet
        // socket leaves the interface and is read from the tap fd; what is written into the tap
        // fd arrives on the interface, and the packet socket hands it to vhost's RX ring.
        let wire = try Tap(name: "vht-wire", flags: [.tap, .noPacketInfo])
        try wire.setLinkUp(true)
        var config = VhostNetQueuePair.Configuration(tapName: "vht-wire")
        config.features = [.version1, .eventIndex, .vhostNetVirtioNetHeader]
        config.queueSize = 64
        let pair = try PacketSocketQueuePair(config, packetSocketOn: "vht-wire")
        try pair.transmit(count: 300) { i, buffer in TestFrame.write(i, into: buffer) }
        var next = 0
        let deadline = ContinuousClock.now + .seconds(10)
        while next < 300 && ContinuousClock.now < deadline {
            guard let frame = wire.readFrame(milliseconds: 500) else { continue }
            guard EthernetFrame.etherType(of: frame) == EthernetFrame.experimentalType else { continue }
            try expect(frame == TestFrame.bytes(next), "TX frame \(next) differs on the wire (\(frame.count) bytes)")
            next += 1
        }
        try expect(next == 300, "only \(next) of 300 TX frames left the interface")
        var received = 0
        for s in 0..<200 {
            try wire.writeFrame(TestFrame.bytes(s))
            let until = ContinuousClock.now + .seconds(5)
            var got = false
            while !got && ContinuousClock.now < until {
                try pair.receive(milliseconds: 200) { f in
                    let bytes = [UInt8](f.frame)
                    guard EthernetFrame.etherType(of: bytes) == EthernetFrame.experimentalType else { return }
                    if bytes == TestFrame.bytes(s) { got = true; received += 1 }
                }
            }
            try expect(got, "RX frame \(s) written on the wire never reached the ring")
        }
        say("  300 frames out through the packet socket, \(received) in; header added and stripped by vhost")
    },
    KernelTest(name: "backend: a macvtap on a dummy parent carries traffic both ways (its sibling macvlan is the far side)") {
        try RouteNetlink.createLink("vhdum0", kind: "dummy")
        defer { try? RouteNetlink.removeLink("vhdum0") }
        try RouteNetlink.createLink("vhmvl0", kind: "macvlan", parent: "vhdum0")
        var config = VhostNetQueuePair.Configuration(tapName: "vhmvt0")
        config.features = [.version1, .eventIndex]
        config.queueSize = 128
        let pair = try MacvtapQueuePair(config, macvtap: "vhmvt0", on: "vhdum0")
        // In bridge mode macvlan siblings switch frames between them: the macvlan's host stack
        // side is the far side of the macvtap.
        let sibling = try KernelHostSideOnInterface(interface: "vhmvl0")
        try transmitAndCompare(pair, host: sibling, frames: 300)
        try receiveAndCompare(pair, host: sibling, frames: 200)
        let header = try NetworkInterface(name: "vhmvt0").index()
        say("  macvtap vhmvt0 (/dev/tap\(header)) on dummy vhdum0: 300 frames out and 200 in through its sibling vhmvl0")
    },
    KernelTest(name: "backend: a packet socket without VHOST_NET_F_VIRTIO_NET_HDR is refused before any ioctl, naming the feature") {
        var config = VhostNetQueuePair.Configuration(tapName: "lo")
        config.features = [.version1]
        do {
            _ = try PacketSocketQueuePair(config, packetSocketOn: "lo")
            throw KernelTestFailure("a packet socket backend started without VHOST_NET_F_VIRTIO_NET_HDR")
        } catch let error as VhostError {
            try expect(error.description.contains("VHOST_NET_F_VIRTIO_NET_HDR"), "unclear error: \(error)")
        }
    },
]
