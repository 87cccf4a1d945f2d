import CVhost
import Glibc
import SystemPackage

/// A character device opened through a node made for the open alone: made with mknod(2) in the
/// tool's own directory under a name carrying this process's mark, opened, and unlinked at once.
/// The open fd stays valid (an open file does not need its name), so no node outlives the open;
/// a node left by a kill between the mknod and the unlink names its creator, and `vhostctl
/// cleanup` removes it. Used where no devtmpfs or udev made the node (a macvtap's /dev/tapN).
public enum TransientDeviceNode {
    /// The tool's directory for such nodes.
    public static let directory = "/run/vhostctl"

    /// Makes `directory/name` a character node of `major`:`minor` (mode 0600), opens it with
    /// `flags` (O_CLOEXEC and O_NOFOLLOW are added) and unlinks it; returns the fd. The
    /// directory is created (mode 0700) when missing, and refused unless it is a real
    /// directory of this user that nobody else may write into.
    public static func open(major: UInt32, minor: UInt32, name: String, flags: Int32 = O_RDWR, in directory: String = directory) throws(VhostError) -> Int32 {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw .invalidConfiguration("a device node name is one path component; \"\(name)\" is not")
        }
        try prepare(directory)
        let path = "\(directory)/\(name)"
        let made = cvhost_mknod_char(path, major, minor)
        guard made == 0 else { throw .system(call: "mknod", detail: "\(path) (character device \(major):\(minor))", errno: Errno(rawValue: -made)) }
        let fd = Glibc.open(path, flags | O_CLOEXEC | O_NOFOLLOW)
        let openErrno = Glibc.errno
        // The name goes whether the open worked or not: the fd (if any) is all that is needed.
        unlink(path)
        guard fd >= 0 else { throw .system(call: "open", detail: "\(path) (character device \(major):\(minor))", errno: Errno(rawValue: openErrno)) }
        return fd
    }

    /// Creates the directory (0700) or checks the one that exists: a directory, not a link,
    /// owned by this user, writable by nobody else.
    public static func prepare(_ directory: String) throws(VhostError) {
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw .system(call: "mkdir", detail: "\(directory) (for device nodes)", errno: Errno(rawValue: errno))
        }
        var info = stat()
        guard lstat(directory, &info) == 0 else { throw .system(call: "lstat", detail: directory, errno: Errno(rawValue: errno)) }
        guard info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid(), info.st_mode & 0o022 == 0 else {
            throw .invalidConfiguration("\(directory) is not a directory of uid \(geteuid()) that only it may write into: refusing to make device nodes there; remove it and run again")
        }
    }

    /// The entries of `directory` (without "." and ".."); empty when it does not exist.
    public static func entries(of directory: String = directory) -> [String] {
        guard let stream = opendir(directory) else { return [] }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}
