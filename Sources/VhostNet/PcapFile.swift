import Glibc
import SystemPackage
import Vhost
import NetFormats
import Virtio

/// Writes frames to a capture file that tshark and Wireshark read: pcap, or pcapng with one
/// interface per queue pair, each frame's direction (`epb_flags`), a nanosecond timestamp and
/// its virtio-net header as a comment. The frames go to an `OutputFile` (a temporary name, mode
/// 0600) and reach the final name only at `finish()`: a writer that goes away unfinished leaves
/// no file. A class, because the endpoint's frame observer closure shares it.
public final class PcapWriter {
    /// The file format.
    public enum Format: String, Sendable {
        case pcap, pcapng
        /// pcapng for a name ending in `.pcapng`, pcap otherwise.
        public init(path: String) { self = path.hasSuffix(".pcapng") ? .pcapng : .pcap }
    }

    private let file: OutputFile
    /// The file's final name.
    public var path: String { file.path }
    /// pcap or pcapng.
    public let format: Format
    private var pending: [UInt8] = []
    /// Frames recorded so far.
    public private(set) var frames = 0
    /// Whether `finish()` renamed the file to its name.
    public var isFinished: Bool { file.state == .committed }

    /// Writes the file's header into `file`: for pcapng a section header and one interface
    /// description per name in `interfaces` (one per queue pair), with nanosecond timestamps.
    /// `linkType` is Ethernet, or raw IP for an L3 tun. The format defaults to the one
    /// `file.path`'s name gives.
    public init(file: OutputFile, format: Format? = nil, linkType: UInt32 = Pcap.linkTypeEthernet, interfaces: [String] = ["queue 0"]) throws(VhostError) {
        let format = format ?? Format(path: file.path)
        var header: [UInt8]
        switch format {
        case .pcap:
            header = Pcap.globalHeader(linkType: linkType)
        case .pcapng:
            header = Pcapng.sectionHeader(application: "vhostctl (swift-vhost)")
            for name in interfaces {
                header += Pcapng.interfaceDescription(linkType: UInt16(truncatingIfNeeded: linkType), name: name,
                                                      description: "\(name): the virtio-net driver's side of a vhost-net queue pair")
            }
        }
        do {
            try file.write(header)
        } catch {
            file.discard()
            throw .unwritableFile(path: file.path, problem: "the capture file's header cannot be written", errno: error.fileErrno)
        }
        self.file = file
        self.format = format
    }

    /// Creates the capture file for `path` (an `OutputFile`: refused when something is there
    /// unless `replacingExisting`, a symbolic link always) and writes its header.
    public convenience init(path: String, replacingExisting: Bool = false, format: Format? = nil, linkType: UInt32 = Pcap.linkTypeEthernet,
                            interfaces: [String] = ["queue 0"]) throws(VhostError) {
        let file = try OutputFile(path: path, replacingExisting: replacingExisting)
        try self.init(file: file, format: format, linkType: linkType, interfaces: interfaces)
    }

    /// Records a frame seen now: in pcapng with its queue pair's interface, its direction and
    /// its virtio-net header (`headerLength` bytes of it) as a comment; pcap keeps the bytes only.
    public func write(_ frame: UnsafeRawBufferPointer, direction: Pcapng.Direction = .unknown, queue: Int = 0,
                      header: VirtioNetHeader? = nil, headerLength: Int = VirtioNetHeader.mergeableLength) {
        guard file.state == .open else { return }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        switch format {
        case .pcap:
            pending += Pcap.recordHeader(seconds: UInt32(truncatingIfNeeded: now.tv_sec), microseconds: UInt32(now.tv_nsec / 1000),
                                         capturedLength: frame.count, originalLength: frame.count)
            pending.append(contentsOf: frame)
        case .pcapng:
            let nanoseconds = UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
            let comment = header.map { Pcapng.virtioNetHeaderComment($0.bytes(length: VirtioNetHeader.isValidLength(headerLength) ? headerLength : 12)) }
            Pcapng.appendEnhancedPacket(to: &pending, interface: UInt32(truncatingIfNeeded: queue), timestamp: nanoseconds, packet: frame,
                                        direction: direction, comment: comment)
        }
        frames += 1
        if pending.count > 64 * 1024 { try? flush() }
    }

    /// Records a frame from an array (see `write(_:direction:queue:header:headerLength:)`).
    public func write(_ frame: [UInt8]) {
        frame.withUnsafeBytes { write($0) }
    }

    /// Writes what is pending to the (temporary) file.
    public func flush() throws(VhostError) {
        guard !pending.isEmpty, file.state == .open else { return }
        do {
            try file.write(pending)
        } catch {
            throw .unwritableFile(path: path, problem: "frames cannot be written to the capture file", errno: error.fileErrno)
        }
        pending.removeAll(keepingCapacity: true)
    }

    /// Flushes, fsyncs and renames the file to `path`: the capture is complete under its name.
    /// Later frames are ignored. A second call does nothing.
    public func finish() throws(VhostError) {
        guard file.state == .open else { return }
        try flush()
        try file.commit()
    }

    /// Gives the capture up: the temporary file is removed.
    public func discard() { file.discard() }
}

extension VhostError {
    /// The errno of an `unwritableFile` error.
    fileprivate var fileErrno: Errno? {
        if case .unwritableFile(_, _, let errno) = self { return errno }
        return nil
    }
}

/// Reads a pcap or pcapng file whole, with errors that name the file and what is wrong with it.
public func readCaptureFile(path: String) throws(VhostError) -> CaptureFile {
    let fd: FileDescriptor
    do {
        fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
    } catch {
        let errno = error as? Errno
        throw .unreadableFile(path: path, problem: errno == .noSuchFileOrDirectory ? "the pcap file does not exist" : "the pcap file cannot be opened", errno: errno)
    }
    defer { try? fd.close() }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n: Int
        do { n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) } } catch {
            throw .unreadableFile(path: path, problem: "the pcap file cannot be read", errno: error as? Errno)
        }
        if n == 0 { break }
        data += chunk.prefix(n)
        if data.count > 1 << 30 { throw .corruptInput(path: path, problem: "the pcap file is larger than 1 GiB") }
    }
    do {
        return try CaptureFile(parsing: data)
    } catch {
        throw .corruptInput(path: path, problem: "the pcap file is corrupt: \(error)")
    }
}

/// Reads the frames of a pcap or pcapng file (Ethernet or raw IP).
public func readPcapFrames(path: String) throws(VhostError) -> [[UInt8]] {
    try readCaptureFile(path: path).packets.map(\.bytes)
}

/// The frames of a capture, made ready to send again: each with the virtio-net header it was
/// captured with (pcapng), on the queue pair it was captured on.
public enum Replay {
    /// `capture`'s packets for an endpoint on `linkLayer` with `queues` queue pairs that
    /// negotiated `features`. A header's NEEDS_CSUM is kept when NET_F_CSUM is negotiated, and
    /// otherwise the checksum is completed here; a GSO header needs the matching HOST_ feature
    /// (refused without it, naming it). DATA_VALID and num_buffers, which only mean something
    /// on RX, are dropped. Throws `corruptInput` for a header that points outside its frame,
    /// and `invalidConfiguration` for packets of the other link type.
    public static func frames(of capture: CaptureFile, path: String, linkLayer: LinkLayer, features: VirtioFeatures, queues: Int) throws(VhostError)
        -> [(frame: [UInt8], header: VirtioNetHeader, queue: Int)] {
        let wanted = linkLayer == .ethernet ? Pcap.linkTypeEthernet : Pcap.linkTypeRaw
        var result: [(frame: [UInt8], header: VirtioNetHeader, queue: Int)] = []
        for (index, packet) in capture.packets.enumerated() {
            guard packet.linkType == wanted else {
                throw .invalidConfiguration("\(path): packet \(index) is \(packet.linkType == Pcap.linkTypeRaw ? "a bare IP packet (LINKTYPE_RAW)" : "an Ethernet frame"), but this endpoint's port carries \(linkLayer == .ethernet ? "Ethernet frames" : "bare IP packets (--tun)")")
            }
            var frame = packet.bytes
            var header = VirtioNetHeader()
            if let bytes = packet.virtioNetHeaderBytes {
                let recorded = VirtioNetHeader(bytes: bytes)
                header.gsoType = recorded.gsoType
                if recorded.gsoType != 0 {
                    let type = recorded.gsoType & ~VirtioNetHeader.gsoECN
                    let needed: (VirtioFeatures, String) = type == VirtioNetHeader.GSOType.tcpV4.rawValue ? (.netHostTSO4, "HOST_TSO4")
                        : type == VirtioNetHeader.GSOType.tcpV6.rawValue ? (.netHostTSO6, "HOST_TSO6")
                        : type == VirtioNetHeader.GSOType.udpL4.rawValue ? (.netHostUSO, "HOST_USO")
                        : (.netHostUFO, "HOST_UFO")
                    guard features.contains(needed.0) && features.contains(.netCsum) else {
                        throw .invalidConfiguration("\(path): packet \(index) is a GSO superframe (gso_type \(recorded.gsoType), gso_size \(recorded.gsoSize)); sending it again needs --features with NET_F_CSUM and \(needed.1)")
                    }
                    header.gsoSize = recorded.gsoSize
                    header.headerLength = recorded.headerLength
                }
                if recorded.flags.contains(.needsChecksum) {
                    let start = Int(recorded.checksumStart), field = start + Int(recorded.checksumOffset)
                    guard field + 2 <= frame.count else {
                        throw .corruptInput(path: path, problem: "packet \(index)'s virtio-net header puts its checksum at byte \(field), past the \(frame.count)-byte frame")
                    }
                    if features.contains(.netCsum) {
                        header.flags = .needsChecksum
                        header.checksumStart = recorded.checksumStart
                        header.checksumOffset = recorded.checksumOffset
                    } else {
                        // What the host would have done (skb_checksum_help): the sum from
                        // csum_start over the partial sum in the field, stored complemented.
                        var checksum = internetChecksum(frame[start...])
                        // UDP sends a computed 0 as all ones (0 means none).
                        if recorded.checksumOffset == 6 && checksum == 0 { checksum = 0xffff }
                        frame[field] = UInt8(checksum >> 8); frame[field + 1] = UInt8(checksum & 0xff)
                    }
                }
            }
            let queue = capture.format == .pcapng ? packet.interface : index
            result.append((frame, header, queue % max(1, queues)))
        }
        return result
    }
}
