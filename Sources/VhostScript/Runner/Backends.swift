import Glibc
import HostNetwork
import NetFormats
import SystemPackage
import Vhost
import VhostModel
import Virtio

/// Holds a `~Copyable` owner (a device, a tap, an eventfd) in a class, so closures can share it;
/// when the last reference goes, the owner goes with it (its `deinit` closes what it holds).
final class Holder<Value: ~Copyable> {
    let value: Value
    init(_ value: consuming Value) { self.value = value }
}

/// An eventfd the runner keeps (a vring's doorbell, a backend, the log fd).
typealias EventBox = Holder<EventFD>

/// The open device, whichever backend it is: the kernel's `/dev/vhost-net` or the in-process
/// device. Every request goes through `perform`, the backend's one entry point; closing is
/// dropping the box (the backend's `deinit` closes the fd, or stops and joins the worker).
final class DeviceBox {
    /// What the device is, for messages.
    let name: String
    /// The fd IOTLB messages go through, or nil when the device has no IOTLB.
    let iotlbDescriptor: Int32?
    private let performer: (VhostRequest) throws(VhostError) -> VhostAnswer

    init<Backend: VhostBackend & ~Copyable>(_ backend: consuming Backend) {
        let holder = Holder(backend)
        name = holder.value.backendName
        iotlbDescriptor = holder.value.iotlbDescriptor
        performer = { request throws(VhostError) in try holder.value.perform(request) }
    }

    /// Issues one request on the device.
    func perform(_ request: VhostRequest) throws(VhostError) -> VhostAnswer { try performer(request) }
}

/// The script's tap, or for the in-process device a frame pipe standing in for it: the fd a
/// backend request attaches, the tun requests, the link, and the host side frames are sent from
/// and seen on.
final class PortBox {
    let name: String
    /// The fd `set-backend INDEX tap` gives the device.
    let fd: Int32
    /// The host side of the pipe carries the virtio-net header (the in-process device's socket
    /// side); a tap's packet socket sees plain frames.
    let carriesHeader: Bool
    private let tunPerformer: (TunRequest) throws(VhostError) -> VhostAnswer
    private let linkSetter: (Bool) throws(VhostError) -> Void
    private let sender: ([UInt8]) throws(VhostError) -> Void
    private let receiver: (Int32) -> [UInt8]?
    /// The owner of `fd` (the tap, or the pipe's device end): closed when the box goes.
    private let owner: AnyObject

    private init(name: String, owner: AnyObject, fd: Int32, carriesHeader: Bool, perform: @escaping (TunRequest) throws(VhostError) -> VhostAnswer,
                 setLink: @escaping (Bool) throws(VhostError) -> Void, send: @escaping ([UInt8]) throws(VhostError) -> Void,
                 receive: @escaping (Int32) -> [UInt8]?) {
        self.name = name; self.owner = owner; self.fd = fd; self.carriesHeader = carriesHeader
        tunPerformer = perform; linkSetter = setLink; sender = send; receiver = receive
    }

    func perform(_ request: TunRequest) throws(VhostError) -> VhostAnswer { try tunPerformer(request) }
    func setLink(up: Bool) throws(VhostError) { try linkSetter(up) }
    /// Sends one message from the host side (a frame, with its header when `carriesHeader`).
    func send(_ message: [UInt8]) throws(VhostError) { try sender(message) }
    /// The next message the host side sees, waiting up to `milliseconds`; nil when none came.
    func receive(milliseconds: Int32) -> [UInt8]? { receiver(milliseconds) }

    /// Creates or attaches tap `name`, brings it up, and listens on its host side with a packet
    /// socket that hears only test frames' EtherType (host-stack chatter does not fill it).
    static func tap(name: String, exclusive: Bool, observer: IoctlObserver?) throws(VhostError) -> PortBox {
        let flags: Tap.Flags = exclusive ? [.tap, .noPacketInfo, .vnetHeader, .exclusive] : [.tap, .noPacketInfo, .vnetHeader]
        let tap = Holder(try Tap(name: name, flags: flags, observer: observer))
        try tap.value.setLinkUp(true)
        let socket = Holder(try PacketSocket(interfaceIndex: try tap.value.interfaceIndex(), etherType: EthernetFrame.experimentalType))
        socket.value.setBuffers(bytes: 16 << 20)
        return PortBox(name: name, owner: tap, fd: tap.value.fd, carriesHeader: false,
                       perform: { request throws(VhostError) in try tap.value.perform(request) },
                       setLink: { up throws(VhostError) in try tap.value.setLinkUp(up) },
                       send: { frame throws(VhostError) in try socket.value.send(frame) },
                       receive: { milliseconds in socket.value.receive(milliseconds: milliseconds) })
    }

    /// A frame pipe named `name` for the in-process device: the device end is the backend, the
    /// host end the host side; tun requests get the answers a tap gives (`PipeTunModel`).
    static func pipe(name: String, observer: IoctlObserver?) throws(VhostError) -> PortBox {
        var pipe = try FramePipe(name: name)
        guard let deviceEnd = pipe.takeDeviceEnd() else { throw .system(call: "socketpair", detail: "\(name): no device end", errno: .ioError) }
        guard let hostEnd = pipe.takeHostEnd() else { throw .system(call: "socketpair", detail: "\(name): no host end", errno: .ioError) }
        let device = Holder(deviceEnd), host = Holder(hostEnd)
        let model = PipeTunModel(observer: observer)
        _ = try model.perform(.setInterface(name: name, flags: UInt16(bitPattern: Tap.Flags([.tap, .noPacketInfo, .vnetHeader]).rawValue)))
        return PortBox(name: name, owner: device, fd: device.value.fd, carriesHeader: true,
                       perform: { request throws(VhostError) in try model.perform(request) },
                       setLink: { _ in },
                       send: { message throws(VhostError) in try host.value.send(message) },
                       receive: { milliseconds in host.value.receive(milliseconds: milliseconds) })
    }
}

/// The tun requests a script issues, answered for a frame pipe as drivers/net/tun.c answers them
/// for a tap, and reported to the observer the same way: TUNSETVNETHDRSZ below 10 is EINVAL,
/// TUNSETOFFLOAD takes what tun.c `set_offload` takes (`acceptsOffloads`), TUNSETSNDBUF of 0 or less is EINVAL and TUNGETSNDBUF
/// reads it back, TUNSETQUEUE is EINVAL (a single-queue tap). The pipe's
/// header length follows the device's features, whatever the tap would have been told.
final class PipeTunModel {
    let observer: IoctlObserver?
    private var headerSize: Int32 = 10
    /// What TUNSETSNDBUF set (tun.c starts a tap at INT_MAX).
    private var sendBuffer: Int32 = Int32.max
    /// TUN_FEATURES of a 6.x tun: IFF_TUN, IFF_TAP, IFF_NO_PI, IFF_ONE_QUEUE, IFF_VNET_HDR,
    /// IFF_MULTI_QUEUE, IFF_NAPI, IFF_NAPI_FRAGS, IFF_NO_CARRIER.
    static let features: UInt64 = 0x7173

    init(observer: IoctlObserver?) { self.observer = observer }

    /// Whether tun.c `set_offload` (6.17) takes `bits`: every offload needs CSUM; TSO_ECN needs
    /// TSO4 or TSO6; USO4 and USO6 go together; UDP-tunnel GSO (and its CSUM) needs a plain GSO
    /// (TSO4, TSO6 or USO); UFO is dropped. A bit left over is EINVAL ("a way to test for new
    /// features in future by trying to set them").
    static func acceptsOffloads(_ bits: UInt32) -> Bool {
        let csum: UInt32 = 0x1, tso4: UInt32 = 0x2, tso6: UInt32 = 0x4, tsoECN: UInt32 = 0x8, ufo: UInt32 = 0x10
        let uso4: UInt32 = 0x20, uso6: UInt32 = 0x40, tunnel: UInt32 = 0x80, tunnelCsum: UInt32 = 0x100
        var rest = bits
        if rest & csum != 0 {
            rest &= ~csum
            var plainGSO = false
            if rest & (tso4 | tso6) != 0 {
                rest &= ~(tsoECN | tso4 | tso6)
                plainGSO = true
            }
            rest &= ~ufo
            if rest & uso4 != 0 && rest & uso6 != 0 {
                rest &= ~(uso4 | uso6)
                plainGSO = true
            }
            if plainGSO && rest & tunnel != 0 { rest &= ~(tunnel | tunnelCsum) }
        }
        return rest == 0
    }

    func perform(_ request: TunRequest) throws(VhostError) -> VhostAnswer {
        var answer = VhostAnswer.none
        var failure: Errno? = nil
        switch request {
        case .setInterface, .setPersist, .setOwner: break
        case .getFeatures: answer = .value(PipeTunModel.features)
        // The pipe plays a tap opened IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
        case .getInterface: answer = .value(0x5002)
        case .setOffload(let bits): if !PipeTunModel.acceptsOffloads(bits) { failure = .invalidArgument }
        case .setSendBuffer(let bytes): if bytes <= 0 { failure = .invalidArgument } else { sendBuffer = bytes }
        case .getSendBuffer: answer = .value(UInt64(UInt32(bitPattern: sendBuffer)))
        // tun.c tun_set_queue: a single-queue tap neither detaches nor re-attaches (EINVAL).
        case .setQueue: failure = .invalidArgument
        case .setCarrier: break
        // A script cannot load a program; the model takes any fd, as tun does a valid one.
        case .setSteeringProgram: break
        case .getVnetHeaderSize: answer = .value(UInt64(UInt32(bitPattern: headerSize)))
        case .setVnetHeaderSize(let size): if size < 10 { failure = .invalidArgument } else { headerSize = size }
        }
        let result = answer
        try performIoctl(.tun(request), observer: observer, answer: { result }) { _ in failure.map { -$0.rawValue } ?? 0 }
        return answer
    }
}
