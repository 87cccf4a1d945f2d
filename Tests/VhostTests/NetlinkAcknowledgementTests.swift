import SystemPackage
import Testing
@testable import Vhost

/// `RouteNetlink.acknowledgement(in:)` on answers laid out as net/netlink/af_netlink.c
/// netlink_ack writes them: plain errors, and extended acknowledgements (NETLINK_EXT_ACK) with
/// the request echoed in full or capped, then NLMSGERR_ATTR_MSG and NLMSGERR_ATTR_OFFS.
@Suite struct NetlinkAcknowledgementTests {
    static func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xff), UInt8((v >> 8) & 0xff)] }
    static func le32(_ v: Int) -> [UInt8] { [UInt8(v & 0xff), UInt8((v >> 8) & 0xff), UInt8((v >> 16) & 0xff), UInt8((v >> 24) & 0xff)] }
    static func attribute(_ type: Int, _ value: [UInt8]) -> [UInt8] {
        var bytes = le16(4 + value.count) + le16(type) + value
        while bytes.count % 4 != 0 { bytes.append(0) }
        return bytes
    }

    /// An RTM_NEWLINK request as RouteNetlink.createLink sends it: nlmsghdr, ifinfomsg, IFLA_IFNAME "vhext0", IFLA_LINKINFO { IFLA_INFO_KIND "nosuch" }.
    static let request: [UInt8] = {
        let body = [UInt8](repeating: 0, count: 16) + attribute(3, Array("vhext0".utf8) + [0]) + attribute(18, attribute(1, Array("nosuch".utf8) + [0]))
        return le32(16 + body.count) + le16(16) + le16(0x605) + le32(1) + le32(0) + body
    }()

    /// NLMSG_ERROR for `request` with `error`, `flags`, the request echoed (in full unless capped), then `tlvs`.
    static func errorAnswer(_ error: Int32, flags: Int, capped: Bool = false, tlvs: [UInt8] = []) -> [UInt8] {
        var echoed = capped ? Array(request.prefix(16)) : request
        while echoed.count % 4 != 0 { echoed.append(0) }
        let payload = le32(Int(UInt32(bitPattern: error))) + echoed + tlvs
        return le32(16 + payload.count) + le16(2) + le16(flags) + le32(1) + le32(4242) + payload
    }

    func parse(_ bytes: [UInt8]) throws -> RouteNetlink.Acknowledgement {
        try bytes.withUnsafeBytes { buffer in try RouteNetlink.acknowledgement(in: buffer) }
    }

    @Test func plainErrorHasNoExplanation() throws {
        #expect(try parse(Self.errorAnswer(-17, flags: 0)) == .failed(.fileExists, .init()))
    }

    @Test func extendedAcknowledgementCarriesTheKernelsMessageAndOffset() throws {
        // rtnl_newlink: NL_SET_ERR_MSG(extack, "Unknown device type"), -EOPNOTSUPP; the offset of IFLA_LINKINFO.
        let tlvs = Self.attribute(1, Array("Unknown device type".utf8) + [0]) + Self.attribute(2, Self.le32(44))
        let answer = try parse(Self.errorAnswer(-95, flags: 0x200, tlvs: tlvs))
        #expect(answer == .failed(.notSupported, .init(message: "Unknown device type", attributeOffset: 44)))
        guard case .failed(_, let explanation) = answer else { return }
        #expect(explanation.summary(request: Self.request) == " (kernel: Unknown device type, at attribute type 18, byte 44 of the request)")
    }

    @Test func cappedEchoIsTheHeaderOnly() throws {
        let tlvs = Self.attribute(1, Array("Attribute failed policy validation".utf8) + [0])
        #expect(try parse(Self.errorAnswer(-22, flags: 0x300, capped: true, tlvs: tlvs)) == .failed(.invalidArgument, .init(message: "Attribute failed policy validation")))
    }

    @Test func unknownAttributesAndControlCharactersAndFlagsInTheType() throws {
        // NLMSGERR_ATTR_POLICY (4, nested: 0x8004) is skipped; a newline in the message becomes a space.
        let tlvs = Self.attribute(0x8004, Self.attribute(1, Self.le32(3))) + Self.attribute(1, Array("two\nlines".utf8) + [0])
        #expect(try parse(Self.errorAnswer(-22, flags: 0x200, tlvs: tlvs)) == .failed(.invalidArgument, .init(message: "two lines")))
    }

    @Test func offsetOutsideTheRequestIsShownAsAByte() {
        let explanation = RouteNetlink.KernelExplanation(message: nil, attributeOffset: 4000)
        #expect(explanation.summary(request: Self.request) == " (at byte 4000 of the request)")
        #expect(RouteNetlink.KernelExplanation().summary(request: Self.request) == "")
    }

    enum Corruption: CaseIterable { case attributePastTheEnd, echoLongerThanTheAnswer, echoShorterThanAHeader, attributeOfLength2 }

    @Test(arguments: Corruption.allCases)
    func malformedExtendedAcknowledgementsThrow(corruption: Corruption) {
        let good = Self.errorAnswer(-95, flags: 0x200, tlvs: Self.attribute(1, Array("Unknown device type".utf8) + [0]))
        var bad: [UInt8]
        switch corruption {
        case .attributePastTheEnd: bad = Array(good.dropLast(2))
        case .echoLongerThanTheAnswer: bad = Array(good.prefix(20)) + Self.le32(4000) + Array(good.dropFirst(24))
        case .echoShorterThanAHeader: bad = Array(good.prefix(20)) + Self.le32(8) + Array(good.dropFirst(24))
        case .attributeOfLength2: bad = good + Self.le16(2) + Self.le16(1)
        }
        // Keep nlmsg_len equal to what is there, so the fault is in the TLVs, not the header.
        bad.replaceSubrange(0..<4, with: Self.le32(bad.count))
        #expect(throws: RouteNetlink.MalformedAnswer.self, "\(corruption)") { try parse(bad) }
    }

    @Test func tooShortForTheEchoedHeader() {
        var bad = Array(Self.errorAnswer(-95, flags: 0x200).prefix(28))
        bad.replaceSubrange(0..<4, with: Self.le32(bad.count))
        #expect(throws: RouteNetlink.MalformedAnswer.self) { try parse(bad) }
    }
}
