import Glibc
import SystemPackage
import Vhost
import NetFormats
import Virtio

/// Writes frames to a pcap file that tshark and Wireshark read. Flushes on `flush()` and when
/// it goes away. A class, because the endpoint's frame observer closure shares it.
public final class PcapWriter {
    private let fd: FileDescriptor
    public let path: String
    private var pending: [UInt8] = []
    public private(set) var frames = 0

    public init(path: String) throws(VhostError) {
        let header = Pcap.globalHeader()
        let opened: FileDescriptor
        do {
            opened = try FileDescriptor.open(FilePath(path), .writeOnly, options: [.create, .truncate, .closeOnExec], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch {
            throw .unwritableFile(path: path, problem: "the pcap file cannot be created; check that its folder exists and is writable", errno: error as? Errno)
        }
        do {
            _ = try header.withUnsafeBytes { try opened.writeAll($0) }
        } catch {
            try? opened.close()
            throw .unwritableFile(path: path, problem: "the pcap file's header cannot be written", errno: error as? Errno)
        }
        fd = opened
        self.path = path
    }

    public func write(_ frame: [UInt8]) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        pending += Pcap.recordHeader(seconds: UInt32(truncatingIfNeeded: now.tv_sec), microseconds: UInt32(now.tv_nsec / 1000),
                                     capturedLength: frame.count, originalLength: frame.count)
        pending += frame
        frames += 1
        if pending.count > 64 * 1024 { try? flush() }
    }

    public func flush() throws(VhostError) {
        guard !pending.isEmpty else { return }
        do {
            _ = try pending.withUnsafeBytes { try fd.writeAll($0) }
        } catch {
            throw .unwritableFile(path: path, problem: "frames cannot be written to the pcap file", errno: error as? Errno)
        }
        pending.removeAll(keepingCapacity: true)
    }

    deinit {
        if !pending.isEmpty { _ = try? pending.withUnsafeBytes { try fd.writeAll($0) } }
        try? fd.close()
    }
}

/// Reads the frames of a pcap file, with errors that name the file and what is wrong with it.
public func readPcapFrames(path: String) throws(VhostError) -> [[UInt8]] {
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
        return try Pcap.parse(data)
    } catch {
        throw .corruptInput(path: path, problem: "the pcap file is corrupt: \(error)")
    }
}
