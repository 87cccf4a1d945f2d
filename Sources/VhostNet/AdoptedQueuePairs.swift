import Logging
import SystemPackage
import Vhost

/// The descriptors of one queue pair that another process opened and passed on: a tun/tap queue
/// and, optionally, a `/dev/vhost-net` descriptor (without one, the device at `devicePath` is
/// opened). Set them in `EndpointConfiguration.adopted`, one per queue pair.
public struct AdoptedQueuePair: Sendable, Equatable {
    /// A tun/tap queue, attached with TUNSETIFF by whoever opened it.
    public var tap: Int32
    /// A fresh `/dev/vhost-net` descriptor, or nil to open the device here.
    public var device: Int32?
    /// A queue pair on the tap queue `tap` and, when given, the vhost-net descriptor `device`.
    public init(tap: Int32, device: Int32? = nil) { self.tap = tap; self.device = device }
}

extension QueuePairConfiguration {
    /// Why the flags of an adopted tap do not fit this configuration (nil: they do): the mode
    /// (IFF_TAP, or IFF_TUN for `tunMode`), IFF_NO_PI, IFF_VNET_HDR unless vhost adds the header
    /// (VHOST_NET_F_VIRTIO_NET_HDR), and IFF_MULTI_QUEUE for more than one queue pair.
    public func adoptedTapProblem(_ flags: Tap.Flags, name: String) -> String? {
        let mode = flags.contains(.tun) ? "an L3 tun (IFF_TUN)" : "a tap (IFF_TAP)"
        if tunMode != flags.contains(.tun) {
            return "is \(mode) \(name), but \(tunMode ? "--tun asks for IFF_TUN" : "an IFF_TAP tap is needed (or pass --tun)")"
        }
        if !flags.contains(.noPacketInfo) {
            return "is \(mode) \(name) without IFF_NO_PI: each frame would carry a 4-byte packet-information prefix; open it with IFF_NO_PI"
        }
        let wantsHeader = !features.contains(.vhostNetVirtioNetHeader)
        if wantsHeader != flags.contains(.vnetHeader) {
            return wantsHeader
                ? "is \(mode) \(name) without IFF_VNET_HDR: the virtio-net header travels through the tap; open it with IFF_VNET_HDR (QEMU's vnet_hdr=on)"
                : "is \(mode) \(name) with IFF_VNET_HDR, but VHOST_NET_F_VIRTIO_NET_HDR makes vhost add the header; open it without IFF_VNET_HDR"
        }
        if multiQueueTap && !flags.contains(.multiQueue) {
            return "is \(mode) \(name) without IFF_MULTI_QUEUE: more than one queue pair needs a multiqueue tap, one descriptor per queue"
        }
        return nil
    }
}

extension VirtioNetQueuePair where Backend == VhostNetDevice, Port == Tap {
    /// Starts a pair on descriptors another process opened: the tap queue `adopted.tap` (its flags
    /// checked against the configuration) and `adopted.device` (or `/dev/vhost-net` opened here).
    /// `bringLinkUp` is not applied: it needs CAP_NET_ADMIN on the interface, which whoever passes
    /// descriptors keeps for itself. The pair owns the descriptors once they pass the checks.
    public convenience init(_ configuration: Configuration, adopting adopted: AdoptedQueuePair, logger: Logger = Logger(label: "swift-vhost")) throws(VhostError) {
        var configuration = configuration
        configuration.bringLinkUp = false
        // Checked before the tap takes the descriptor, so that a refusal leaves it to the caller.
        let interface: (name: String, flags: Tap.Flags)
        do { interface = try PassedDescriptor.tunInterface(adopted.tap, observer: nil) } catch { throw .invalidConfiguration(error.description) }
        if let problem = configuration.adoptedTapProblem(interface.flags, name: interface.name) {
            throw .invalidConfiguration("fd \(adopted.tap) \(problem)")
        }
        if let fd = adopted.device {
            do { try PassedDescriptor.requireVhostNet(fd) } catch { throw .invalidConfiguration(error.description) }
        }
        let tap: Tap
        do { tap = try Tap(adopting: FileDescriptor(rawValue: adopted.tap), observer: configuration.observer) } catch { throw .invalidConfiguration(error.description) }
        configuration.tapName = tap.name
        try configuration.validate()
        if configuration.features.contains(.netHostUSO) { try tap.requireUDPSegmentation() }
        let device: VhostNetDevice
        if let fd = adopted.device {
            do { device = try VhostNetDevice(adopting: FileDescriptor(rawValue: fd), observer: configuration.observer) } catch {
                throw .invalidConfiguration(error.description)
            }
        } else {
            device = try VhostNetDevice(path: configuration.devicePath, observer: configuration.observer)
        }
        try self.init(configuration, device: device, port: tap, logger: logger)
    }
}
