import Testing
@testable import Vhost
import VhostModel
import SystemPackage
import Virtio

@Suite("Control-plane formats against annotated bytes")
struct ControlPlaneUnitTests {
    @Test("vhost_msg_v2 with a vhost_iotlb_msg: 72 bytes, type 2, iova/size/uaddr at 8/16/24, perm and type at 32/33")
    func iotlbMessageBytes() throws {
        let update = IOTLBMessage(kind: .update, iova: 0x40_4004_2000, length: 0x1000, userAddress: 0x7f12_3456_7000, access: .readWrite)
        let bytes = update.encoded()
        #expect(bytes.count == 72)
        #expect(Array(bytes[0..<8]) == [0x02, 0, 0, 0, /* asid */ 0, 0, 0, 0])
        #expect(Array(bytes[8..<16]) == [0x00, 0x20, 0x04, 0x40, 0x40, 0, 0, 0])   // iova 0x4040042000
        #expect(Array(bytes[16..<24]) == [0x00, 0x10, 0, 0, 0, 0, 0, 0])           // size 4096
        #expect(Array(bytes[24..<32]) == [0x00, 0x70, 0x56, 0x34, 0x12, 0x7f, 0, 0]) // uaddr
        #expect(bytes[32] == 0x3 && bytes[33] == 2)                                 // VHOST_ACCESS_RW, VHOST_IOTLB_UPDATE
        #expect(bytes[34...].allSatisfy { $0 == 0 })
        #expect(IOTLBMessage(decoding: bytes) == update)
        // A MISS as the kernel writes it (vhost_iotlb_miss): V2, iova only, perm = the access wanted.
        var miss = [UInt8](repeating: 0, count: 72)
        miss[0] = 2; miss[8] = 0x34; miss[9] = 0x12; miss[32] = 2; miss[33] = 1
        #expect(IOTLBMessage(decoding: miss) == IOTLBMessage(kind: .miss, iova: 0x1234, access: .write))
        #expect(IOTLBMessage(decoding: [UInt8](repeating: 0, count: 72)) == nil, "type 0 is no message")
    }

    @Test("feature bits above 63: names, parsing, and the 24-byte tunnel header length")
    func highFeatures() {
        let offered = HighFeatures(rawValue: 0xa)   // 7.2's word 1
        #expect(offered.featureNames == ["NET_F_GUEST_UDP_TUNNEL_GSO", "NET_F_HOST_UDP_TUNNEL_GSO"])
        #expect(HighFeatures.parse("HOST_UDP_TUNNEL_GSO") == .netHostUDPTunnelGSO)
        #expect(HighFeatures.parse("67") == .netHostUDPTunnelGSO)
        #expect(HighFeatures.parse("EVENT_IDX") == nil)
        #expect(HighFeatures.netHostUDPTunnelGSO.netHeaderLength == 24 && HighFeatures().netHeaderLength == nil)
    }

    @Test("virtio_net_hdr_v1_hash_tunnel: 24 bytes, outer_th_offset at 20, inner_nh_offset at 22")
    func tunnelHeaderBytes() {
        var header = VirtioNetHeader(flags: .needsChecksum, gsoType: 0x21, headerLength: 104, gsoSize: 1400, checksumStart: 84, checksumOffset: 16, numBuffers: 1)
        header.outerTransportOffset = 34
        header.innerNetworkOffset = 64
        let bytes = header.bytes(length: 24)
        #expect(bytes == [0x01, 0x21, 104, 0, 0x78, 0x05, 84, 0, 16, 0, 1, 0,
                          0, 0, 0, 0, 0, 0, 0, 0,    // hash value, hash report, padding
                          34, 0, 64, 0])
        #expect(VirtioNetHeader(bytes: bytes) == header)
    }

    @Test("the dirty log is read and cleared word by word: every set bit once, as a page address")
    func dirtyLogSync() throws {
        let log = try DirtyLog(coveringGuestBytes: 1 << 30)
        let words = log.base.assumingMemoryBound(to: UInt64.self)
        words[0] = 0b101            // pages 0 and 2
        words[3] = 1 << 63          // page 255
        #expect(log.sync() == [GuestAddress(0), GuestAddress(2 * 4096), GuestAddress(255 * 4096)])
        #expect(log.sync().isEmpty, "sync clears what it returned")
        #expect(log.dirtyPages == 0)
    }
}

@Suite("Typed requests")
struct TypedRequestTests {
    @Test("the in-process model answers VHOST_SET/GET_VRING_ENDIAN as a kernel without CONFIG_VHOST_CROSS_ENDIAN_LEGACY: EPERM, ENOBUFS, ENOTTY")
    func vringEndian() throws {
        func errno(_ body: () throws(VhostError) -> Void) -> Errno? {
            do { try body(); return nil } catch .ioctl(let failure) { return failure.errno } catch { return .ioError }
        }
        let device = try InProcessVhostNetDevice()
        #expect(errno { () throws(VhostError) in try device.perform(.setVringEndian(0, 1)) } == .notPermitted)
        try device.setOwner()
        #expect(errno { () throws(VhostError) in try device.perform(.setVringEndian(2, 1)) } == .noBufferSpace)
        #expect(errno { () throws(VhostError) in try device.perform(.setVringEndian(0, 1)) } == .inappropriateIOCTLForDevice)
        #expect(errno { () throws(VhostError) in try device.perform(.getVringEndian(1)) } == .inappropriateIOCTLForDevice)
    }

    @Test("the in-process model's SET_VRING_NUM: every power of 2 from 1 to 32768 is accepted, 0, 3, 6, 32769, 65535 and 65536 are EINVAL (vhost.c vhost_vring_set_num)")
    func vringNum() throws {
        func errno(_ num: UInt32) -> Errno? {
            do throws(VhostError) { try device.setVringNum(index: 0, num: num); return nil } catch {
                if case .ioctl(let failure) = error { return failure.errno }
                return .ioError
            }
        }
        let device = try InProcessVhostNetDevice()
        try device.setOwner()
        for shift in 0...15 { #expect(errno(1 << shift) == nil, "a ring of \(1 << shift)") }
        for num: UInt32 in [0, 3, 6, 32769, 65535, 65536] { #expect(errno(num) == .invalidArgument, "a ring of \(num)") }
    }

    @Test("every request kind has one script form, its command names are unique, and a request written by the recorder builds back to itself")
    func syntaxRoundTrip() {
        let names = VhostRequest.syntax.map(\.name) + TunRequest.syntax.map(\.name)
        #expect(Set(names).count == names.count)
        let requests: [VhostRequest] = [.setOwner, .setVringNum(1, 256), .setVringEndian(0, 1), .getVringEndian(1), .setVringBusyloopTimeout(0, 50),
                                        .setForkFromOwner(0), .setFeatures(0x1_0000_0000), .netSetBackend(1, fd: -1)]
        for request in requests {
            #expect(request.syntax.build(request.scriptValues) == request, "\(request)")
        }
        let tun: [TunRequest] = [.setSendBuffer(65536), .getSendBuffer, .setQueue(attach: false), .setQueue(attach: true), .setCarrier(false)]
        for request in tun {
            #expect(request.syntax?.build(request.scriptValues) == request, "\(request)")
        }
    }
}
