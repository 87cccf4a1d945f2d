import CVhost
import Glibc
import SystemPackage

/// One link of an RTM_GETLINK answer: what cleanup needs to judge and delete it.
public struct LinkRecord: Equatable, Hashable, Sendable {
    /// The interface index (struct ifinfomsg ifi_index): deletions go by index, so a link that
    /// was deleted and re-created under the same name meanwhile is not hit.
    public var index: Int32
    /// IFLA_IFNAME.
    public var name: String
    /// IFLA_IFALIAS, when the link has one.
    public var alias: String?
    /// IFLA_LINKINFO's IFLA_INFO_KIND ("macvtap", "tun", "dummy", …); nil for links without
    /// rtnl_link_ops (loopback, most hardware).
    public var kind: String?

    public init(index: Int32, name: String, alias: String? = nil, kind: String? = nil) {
        self.index = index
        self.name = name
        self.alias = alias
        self.kind = kind
    }
}

/// Parses the datagrams of an RTM_GETLINK dump (linux/netlink.h, rtnetlink.h, if_link.h) with
/// every length checked against the bytes actually received: a truncated or lying answer throws
/// `VhostError.corruptInput`, never reads past the buffer.
public enum LinkDumpParser {
    static let messageHeaderLength = 16, interfaceInfoLength = 16, attributeHeaderLength = 4
    static let noop: UInt16 = 1, error: UInt16 = 2, done: UInt16 = 3, newLink: UInt16 = 16
    /// NLM_F_DUMP_INTR: the dump crossed a change of the table and may be inconsistent.
    static let dumpInterrupted: UInt16 = 0x10
    static let interfaceName: UInt16 = 3, linkInfo: UInt16 = 18, interfaceAlias: UInt16 = 20, infoKind: UInt16 = 1
    /// The type bits of nla_type (NLA_TYPE_MASK): without NLA_F_NESTED and NLA_F_NET_BYTEORDER.
    static let attributeTypeMask: UInt16 = 0x3fff
    static let source = "rtnetlink RTM_GETLINK answer"

    /// What one datagram of a dump holds.
    public struct Part: Equatable, Sendable {
        /// The links it describes.
        public var links: [LinkRecord]
        /// Whether it ended the dump (NLMSG_DONE).
        public var done: Bool
        /// Whether the kernel flagged it NLM_F_DUMP_INTR (the dump must be taken again).
        public var interrupted: Bool
    }

    /// Parses one datagram of the dump answering request `sequence`.
    public static func parse(_ datagram: [UInt8], sequence: UInt32) throws(VhostError) -> Part {
        var part = Part(links: [], done: false, interrupted: false)
        var offset = 0
        while offset < datagram.count {
            let remaining = datagram.count - offset
            guard remaining >= messageHeaderLength else { throw corrupt("\(remaining) bytes at offset \(offset) cannot hold a message header (16 bytes)") }
            let length = Int(le32(datagram, offset))
            guard length >= messageHeaderLength, length <= remaining else {
                throw corrupt("the message at offset \(offset) says it is \(length) bytes long; \(remaining) remain and a header takes 16")
            }
            let type = le16(datagram, offset + 4), flags = le16(datagram, offset + 6), messageSequence = le32(datagram, offset + 8)
            guard messageSequence == sequence else { throw corrupt("the message at offset \(offset) answers request \(messageSequence), not \(sequence)") }
            if flags & dumpInterrupted != 0 { part.interrupted = true }
            let payload = (offset + messageHeaderLength)..<(offset + length)
            switch type {
            case done:
                part.done = true
                return part
            case error:
                guard payload.count >= 4 else { throw corrupt("an error message of \(length) bytes has no error code") }
                let code = Int32(bitPattern: le32(datagram, payload.lowerBound))
                if code != 0 {
                    throw .system(call: "RTM_GETLINK", detail: "dump of the links", errno: Errno(rawValue: code == Int32.min ? EIO : -code))
                }
            case noop:
                break
            case newLink:
                part.links.append(try parseLink(datagram, payload, at: offset))
            default:
                throw corrupt("unexpected message type \(type) at offset \(offset)")
            }
            // NLMSG_ALIGN: the next message starts on a 4-byte boundary; the last may end unpadded.
            let (padded, overflow) = length.addingReportingOverflow((4 - length % 4) % 4)
            guard !overflow else { throw corrupt("the message length \(length) overflows") }
            offset += min(padded, remaining)
        }
        return part
    }

    /// One RTM_NEWLINK message: struct ifinfomsg, then attributes.
    static func parseLink(_ bytes: [UInt8], _ payload: Range<Int>, at offset: Int) throws(VhostError) -> LinkRecord {
        guard payload.count >= interfaceInfoLength else { throw corrupt("the link message at offset \(offset) is shorter than struct ifinfomsg (16 bytes)") }
        let index = Int32(bitPattern: le32(bytes, payload.lowerBound + 4))
        guard index > 0 else { throw corrupt("the link message at offset \(offset) has interface index \(index)") }
        var name: String?, alias: String?, kind: String?
        try forEachAttribute(bytes, (payload.lowerBound + interfaceInfoLength)..<payload.upperBound) { (type, value) throws(VhostError) in
            switch type {
            case interfaceName:
                let text = try string(bytes, value, what: "IFLA_IFNAME of link \(index)")
                guard !text.isEmpty, text.utf8.count < Int(CVHOST_IFNAMSIZ) else { throw corrupt("link \(index) has a name of \(text.utf8.count) bytes") }
                name = text
            case interfaceAlias:
                alias = try string(bytes, value, what: "IFLA_IFALIAS of link \(index)")
            case linkInfo:
                try forEachAttribute(bytes, value) { (type, inner) throws(VhostError) in
                    if type == infoKind { kind = try string(bytes, inner, what: "IFLA_INFO_KIND of link \(index)") }
                }
            default:
                break
            }
        }
        guard let name else { throw corrupt("link \(index) has no IFLA_IFNAME") }
        return LinkRecord(index: index, name: name, alias: alias, kind: kind)
    }

    /// Calls `body` with each attribute's type and value range in `range` (struct rtattr: u16
    /// length including the 4-byte header, u16 type; values padded to 4 bytes).
    static func forEachAttribute(_ bytes: [UInt8], _ range: Range<Int>, _ body: (UInt16, Range<Int>) throws(VhostError) -> Void) throws(VhostError) {
        var offset = range.lowerBound
        while offset < range.upperBound {
            let remaining = range.upperBound - offset
            guard remaining >= attributeHeaderLength else { throw corrupt("\(remaining) bytes at offset \(offset) cannot hold an attribute header") }
            let length = Int(le16(bytes, offset))
            guard length >= attributeHeaderLength, length <= remaining else {
                throw corrupt("the attribute at offset \(offset) says it is \(length) bytes long; \(remaining) remain")
            }
            try body(le16(bytes, offset + 2) & attributeTypeMask, (offset + attributeHeaderLength)..<(offset + length))
            offset += min(length + (4 - length % 4) % 4, remaining)
        }
    }

    /// A string attribute: the bytes up to the first NUL (nla_put_string writes one), at most
    /// 255 (IFALIASZ - 1, the longest string a link has); bytes that are not UTF-8 become U+FFFD.
    static func string(_ bytes: [UInt8], _ range: Range<Int>, what: String) throws(VhostError) -> String {
        let value = bytes[range]
        let text = value.prefix { $0 != 0 }
        guard text.count <= InterfaceMark.longestAlias else { throw corrupt("\(what) is \(text.count) bytes long (at most 255)") }
        return String(decoding: text, as: UTF8.self)
    }

    static func corrupt(_ problem: String) -> VhostError { .corruptInput(path: source, problem: problem) }
    static func le16(_ bytes: [UInt8], _ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
    static func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }
}

extension RouteNetlink {
    static let getLink: UInt16 = 18, dumpFlag: UInt16 = 0x300, interfaceAlias: UInt16 = 20
    /// The most datagrams one dump may take before it is called hostile (a host with 100,000
    /// links needs a few thousand).
    static let dumpDatagramLimit = 100_000

    /// Every link of this network namespace (RTM_GETLINK with NLM_F_DUMP): index, name, alias and
    /// kind. A dump the kernel flags as interrupted by a change (NLM_F_DUMP_INTR) is taken again,
    /// up to three times. Needs no privilege (rtnetlink_rcv_msg checks CAP_NET_ADMIN for
    /// everything but the GET kind). A malformed answer throws `VhostError.corruptInput`.
    public static func links() throws(VhostError) -> [LinkRecord] {
        for _ in 0..<3 {
            let (links, interrupted) = try dumpLinks()
            if !interrupted { return links }
        }
        throw .system(call: "RTM_GETLINK", detail: "the links kept changing during three dumps; try again", errno: .resourceTemporarilyUnavailable)
    }

    private static func dumpLinks() throws(VhostError) -> (links: [LinkRecord], interrupted: Bool) {
        let fd = cvhost_socket(16 /* AF_NETLINK */, CVHOST_SOCK_RAW, 0 /* NETLINK_ROUTE */)
        guard fd >= 0 else { throw .system(call: "socket(AF_NETLINK)", detail: "dump of the links", errno: Errno(rawValue: -fd)) }
        defer { close(fd) }
        // A kernel that never answers must not hang cleanup or the reaper.
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let sequence: UInt32 = 1
        // struct ifinfomsg of zeros: every family, every link.
        let body = [UInt8](repeating: 0, count: LinkDumpParser.interfaceInfoLength)
        let message = le32(UInt32(16 + body.count)) + le16(getLink) + le16(request | dumpFlag) + le32(sequence) + le32(0) + body
        let sent = message.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == message.count else { throw .system(call: "send(netlink)", detail: "RTM_GETLINK dump", errno: Errno(rawValue: Glibc.errno)) }
        var links: [LinkRecord] = [], interrupted = false
        var buffer = [UInt8](repeating: 0, count: 65_536)
        for _ in 0..<dumpDatagramLimit {
            // MSG_TRUNC: recv returns the datagram's real length, so a truncated one is seen.
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_TRUNC)) }
            guard n >= 0 else { throw .system(call: "recv(netlink)", detail: "RTM_GETLINK dump", errno: Errno(rawValue: Glibc.errno)) }
            guard n <= buffer.count else {
                throw LinkDumpParser.corrupt("a datagram of \(n) bytes did not fit the \(buffer.count)-byte buffer")
            }
            let part = try LinkDumpParser.parse(Array(buffer[..<n]), sequence: sequence)
            links += part.links
            interrupted = interrupted || part.interrupted
            if part.done { return (links, interrupted) }
            guard n > 0 else { throw LinkDumpParser.corrupt("an empty datagram before NLMSG_DONE") }
        }
        throw LinkDumpParser.corrupt("no NLMSG_DONE after \(dumpDatagramLimit) datagrams")
    }

    /// Sets the alias (IFLA_IFALIAS) of the link with `index`, as `ip link set … alias` does. The
    /// kernel takes no alias at creation (rtnl_create_link reads no IFLA_IFALIAS), so a created
    /// link is marked by this second request (do_setlink → dev_set_alias).
    public static func setAlias(index: Int32, _ alias: String) throws(VhostError) {
        let text = Array(alias.utf8)
        guard text.count <= InterfaceMark.longestAlias else {
            throw .invalidConfiguration("an interface alias is at most \(InterfaceMark.longestAlias) bytes; this one is \(text.count)")
        }
        let header: [UInt8] = [0, 0, 0, 0] + le32(UInt32(bitPattern: index)) + le32(0) + le32(0)
        // Without a NUL, as iproute2 sends it: dev_set_alias keeps exactly these bytes.
        try send(type: 19 /* RTM_SETLINK */, flags: request | acknowledge, body: header + attribute(interfaceAlias, text),
                 what: "set the alias of link \(index)")
    }

    /// Deletes the link with `index` (RTM_DELLINK by ifi_index): unlike a name, an index is not
    /// reused soon (net/core/dev.c dev_index_reserve counts up), so a link re-created under the
    /// same name is not hit.
    public static func removeLink(index: Int32) throws(VhostError) {
        let header: [UInt8] = [0, 0, 0, 0] + le32(UInt32(bitPattern: index)) + le32(0) + le32(0)
        try send(type: deleteLink, flags: request | acknowledge, body: header, what: "delete link \(index)")
    }
}
