import Glibc
import Testing
@testable import Vhost
@testable import VhostNet

/// The checks a descriptor passed to attach goes through, those that need no kernel tun or
/// vhost-net (the attach tier passes real ones: Tests/kernel/attach-part-fds.sh).
@Suite struct PassedDescriptorTests {
    /// The tap's flags against the configuration: mode, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE.
    @Test func adoptedTapFlags() {
        var config = QueuePairConfiguration(tapName: "t")
        let qemu: Tap.Flags = [.tap, .noPacketInfo, .vnetHeader]
        #expect(config.adoptedTapProblem(qemu, name: "t") == nil)
        #expect(config.adoptedTapProblem([.tap, .noPacketInfo], name: "t")?.contains("without IFF_VNET_HDR") == true)
        #expect(config.adoptedTapProblem([.tap, .vnetHeader], name: "t")?.contains("without IFF_NO_PI") == true)
        #expect(config.adoptedTapProblem([.tun, .noPacketInfo, .vnetHeader], name: "t")?.contains("an IFF_TAP tap is needed") == true)
        config.multiQueueTap = true
        #expect(config.adoptedTapProblem(qemu, name: "t")?.contains("without IFF_MULTI_QUEUE") == true)
        #expect(config.adoptedTapProblem(qemu.union(.multiQueue), name: "t") == nil)
        config.multiQueueTap = false
        config.tunMode = true
        #expect(config.adoptedTapProblem(qemu, name: "t")?.contains("--tun asks for IFF_TUN") == true)
        #expect(config.adoptedTapProblem([.tun, .noPacketInfo, .vnetHeader], name: "t") == nil)
        config.tunMode = false
        config.features.insert(.vhostNetVirtioNetHeader)
        #expect(config.adoptedTapProblem(qemu, name: "t")?.contains("VHOST_NET_F_VIRTIO_NET_HDR") == true)
    }

    /// Descriptors that are no tun or vhost-net are refused through the descriptor, naming it.
    @Test func wrongDescriptors() throws {
        let file = open("/etc/passwd", O_RDONLY)
        try #require(file >= 0)
        defer { close(file) }
        #expect(throws: PassedDescriptor.Refusal.self) { try PassedDescriptor.requireVhostNet(file) }
        do { try PassedDescriptor.requireVhostNet(file) } catch { #expect(error.description.contains("is a regular file (/etc/passwd), not the vhost-net device")) }
        do { _ = try PassedDescriptor.tunInterface(file) } catch { #expect(error.description.contains("not a tun/tap queue")) }
        let null = open("/dev/null", O_RDWR)
        try #require(null >= 0)
        defer { close(null) }
        do { _ = try PassedDescriptor.tunInterface(null) } catch { #expect(error.description.contains("the character device 1:3 (/dev/null)")) }
        do { try PassedDescriptor.requireVhostNet(null) } catch { #expect(error.description.contains("not the vhost-net device")) }
        do { _ = try PassedDescriptor.tunInterface(1000) } catch { #expect(error.description == "fd 1000 is not open (this process inherited no such descriptor)") }
        #expect(NetworkNamespace.path(for: "vhns1") == "/run/netns/vhns1")
        #expect(NetworkNamespace.path(for: "/proc/1/ns/net") == "/proc/1/ns/net")
    }
}
