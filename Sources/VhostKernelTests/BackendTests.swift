import DatapathSuite
import Glibc
import HostNetwork
import Synchronization
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
    KernelTest(name: "backend: a packet socket bound to one interface never holds another interface's frames, even while it is opened (PacketSocketPort and the host side)") {
        // A flood on one tap while packet sockets are opened and bound to another, idle one:
        // a socket opened for ETH_P_ALL takes every interface's frames until bind names its
        // interface; one opened with protocol 0 takes none until then (packet(7)).
        let busy = try Tap(name: "vht-flood", flags: [.tap, .noPacketInfo])
        try busy.setLinkUp(true)
        let idle = try Tap(name: "vht-quiet", flags: [.tap, .noPacketInfo])
        try idle.setLinkUp(true)
        let quiet = try NetworkInterface(name: "vht-quiet").index()
        let stop = Atomic<Bool>(false)
        let written = Atomic<Int>(0)
        let busyFD = busy.fd
        let flood = WorkerThread {
            var s = 0
            while !stop.load(ordering: .acquiring) {
                let frame = TestFrame.bytes(s)
                guard frame.withUnsafeBytes({ write(busyFD, $0.baseAddress, $0.count) }) == frame.count else { break }
                s += 1
                written.store(s, ordering: .releasing)
            }
        }
        func foreignFrames(_ fd: Int32) -> Int {
            var foreign = 0
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 2048) { scratch in
                while true {
                    let n = recv(fd, scratch.baseAddress, scratch.count, Int32(MSG_DONTWAIT))
                    guard n > 0 else { break }
                    if TestFrame.sequence(of: UnsafeRawBufferPointer(start: scratch.baseAddress, count: n)) != nil { foreign += 1 }
                }
            }
            return foreign
        }
        var foreign = (host: 0, port: 0)
        for _ in 0..<100 {
            let host = try PacketSocket(interfaceIndex: quiet)
            foreign.host += foreignFrames(host.fd)
            let port = try PacketSocketPort(interface: "vht-quiet")
            foreign.port += foreignFrames(port.fd)
        }
        stop.store(true, ordering: .releasing)
        flood.join()
        let flooded = written.load(ordering: .acquiring)
        say("  \(flooded) frames written into vht-flood while 100 packet sockets of each kind were opened on vht-quiet: \(foreign.host) of them on the host side's sockets, \(foreign.port) on the backend's")
        try expect(flooded > 1000, "the flood wrote only \(flooded) frames: nothing was tested")
        try expect(foreign == (0, 0), "packet sockets bound to vht-quiet held \(foreign.host) (host side) and \(foreign.port) (PacketSocketPort) frames of vht-flood")
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
