import Glibc
import SystemPackage

/// A device number (`st_rdev`): major and minor, as `ls -l` shows them (`10, 238`).
public struct DeviceNumber: Hashable, Sendable, CustomStringConvertible {
    public var major: UInt32
    public var minor: UInt32

    public init(major: UInt32, minor: UInt32) { self.major = major; self.minor = minor }

    /// Decodes glibc's `dev_t` (sys/sysmacros.h `gnu_dev_major`, `gnu_dev_minor`): the major in
    /// bits 8–19 and 32–63, the minor in bits 0–7 and 20–31.
    public init(_ rdev: UInt64) {
        major = UInt32(truncatingIfNeeded: ((rdev >> 8) & 0xfff) | ((rdev >> 32) & ~UInt64(0xfff)))
        minor = UInt32(truncatingIfNeeded: (rdev & 0xff) | ((rdev >> 12) & ~UInt64(0xff)))
    }

    /// `/dev/vhost-net`: a misc device (include/uapi/linux/major.h MISC_MAJOR 10) with the fixed
    /// minor include/linux/miscdevice.h VHOST_NET_MINOR 238 (drivers/vhost/net.c vhost_net_misc).
    public static let vhostNet = DeviceNumber(major: 10, minor: 238)

    public var description: String { "\(major):\(minor)" }
}

/// Opening a path only after checking what it names, so that no driver's `open` runs for a file
/// that was not meant (opening `/dev/watchdog`, even read-only, arms the watchdog). The path is
/// resolved with `O_PATH` (fs/open.c build_open_flags: an O_PATH open calls no driver's open and
/// reads nothing), checked with `fstat` on that descriptor, and the same inode is then opened
/// through `/proc/self/fd/N` (fs/proc/base.c proc_fd_link), so a path swapped between the check
/// and the open changes nothing. The opened descriptor is checked once more.
public enum CheckedOpen {
    /// Why a path was not opened.
    public enum Refusal: Error, Equatable, CustomStringConvertible {
        /// Nothing at the path (ENOENT, ENOTDIR).
        case missing(path: String)
        /// The path could not be resolved or opened for another reason (EACCES, ELOOP, …).
        case system(path: String, errno: Errno)
        /// It is not the kind of file asked for; `kind` says what it is.
        case wrongKind(path: String, kind: String, expected: String)
        /// A character device, but not one of those accepted.
        case otherDevice(path: String, number: DeviceNumber)
        /// What was opened is not what was checked (the path changed in between).
        case replaced(path: String)
        /// The file lies outside the directories it had to be in.
        case outside(path: String, directories: [String])

        public var description: String {
            switch self {
            case .missing(let path): "\(path) does not exist"
            case .system(let path, let errno): "\(path): \(errno.name) (\(errno))"
            case .wrongKind(let path, let kind, let expected): "\(path) is \(kind), not \(expected)"
            case .otherDevice(let path, let number): "\(path) is the character device \(number)"
            case .replaced(let path): "\(path) changed between its check and its open"
            case .outside(let path, let directories): "\(path) is outside \(directories.joined(separator: ", "))"
            }
        }
    }

    /// What `st_mode` says a file is, for messages.
    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFIFO: "a FIFO"
        case S_IFSOCK: "a socket"
        default: "a special file"
        }
    }

    /// The status of the file at `path` (symbolic links followed), or nil with errno set.
    static func status(_ fd: Int32) -> stat? {
        var info = stat()
        return fstat(fd, &info) == 0 ? info : nil
    }

    /// include/uapi/asm-generic/fcntl.h O_PATH (x86-64 and arm64 use the generic value); Glibc
    /// declares it only under _GNU_SOURCE, which Swift's Glibc module does not set.
    static let openPathOnly: Int32 = 0o10000000

    /// Resolves `path` with O_PATH (nothing is opened for reading or writing).
    static func resolve(_ path: String) throws(Refusal) -> Int32 {
        let fd = open(path, openPathOnly | O_CLOEXEC)
        guard fd >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            if errno == .noSuchFileOrDirectory || errno == .notDirectory { throw .missing(path: path) }
            throw .system(path: path, errno: errno)
        }
        return fd
    }

    /// Opens the inode `pathFD` holds with `flags`, through /proc/self/fd, and checks that the
    /// new descriptor is the same file (device, inode and device number).
    static func reopen(_ pathFD: Int32, _ checked: stat, flags: Int32, path: String) throws(Refusal) -> Int32 {
        let fd = open("/proc/self/fd/\(pathFD)", flags | O_CLOEXEC)
        guard fd >= 0 else { throw .system(path: path, errno: Errno(rawValue: Glibc.errno)) }
        guard let opened = status(fd), opened.st_dev == checked.st_dev, opened.st_ino == checked.st_ino, opened.st_rdev == checked.st_rdev else {
            close(fd)
            throw .replaced(path: path)
        }
        return fd
    }

    /// Opens `path` read-write only when it is a character device whose number is one of
    /// `accepted`. A regular file, a directory, a FIFO or another device (`/dev/watchdog` is
    /// 10:130) is refused before any driver sees an open; a symbolic link is judged by what it
    /// points to.
    public static func characterDevice(at path: String, accepting accepted: Set<DeviceNumber>) throws(Refusal) -> FileDescriptor {
        let pathFD = try resolve(path)
        defer { close(pathFD) }
        guard let info = status(pathFD) else { throw .system(path: path, errno: Errno(rawValue: Glibc.errno)) }
        guard info.st_mode & S_IFMT == S_IFCHR else { throw .wrongKind(path: path, kind: kind(info.st_mode), expected: "a character device") }
        let number = DeviceNumber(UInt64(info.st_rdev))
        guard accepted.contains(number) else { throw .otherDevice(path: path, number: number) }
        return FileDescriptor(rawValue: try reopen(pathFD, info, flags: O_RDWR, path: path))
    }

    /// The number of the character device at `path` (links followed), for options that name a
    /// device to accept; a refusal for anything else.
    public static func characterDeviceNumber(at path: String) throws(Refusal) -> DeviceNumber {
        let pathFD = try resolve(path)
        defer { close(pathFD) }
        guard let info = status(pathFD) else { throw .system(path: path, errno: Errno(rawValue: Glibc.errno)) }
        guard info.st_mode & S_IFMT == S_IFCHR else { throw .wrongKind(path: path, kind: kind(info.st_mode), expected: "a character device") }
        return DeviceNumber(UInt64(info.st_rdev))
    }

    /// Opens `path` read-only only when it is a regular file (a FIFO could block, a device's open
    /// could act). With `inside`, the file actually opened (its path as the kernel names it,
    /// /proc/self/fd's link) must lie under one of those directories (canonical, absolute):
    /// checked on the open descriptor, so no link or rename in between can lead elsewhere.
    public static func regularFile(at path: String, inside directories: [String]? = nil) throws(Refusal) -> FileDescriptor {
        let pathFD = try resolve(path)
        defer { close(pathFD) }
        guard let info = status(pathFD) else { throw .system(path: path, errno: Errno(rawValue: Glibc.errno)) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw .wrongKind(path: path, kind: kind(info.st_mode), expected: "a regular file") }
        if let directories {
            guard let real = openedPath(pathFD), directories.contains(where: { CheckedOpen.path(real, isInside: $0) }) else {
                throw .outside(path: path, directories: directories)
            }
        }
        return FileDescriptor(rawValue: try reopen(pathFD, info, flags: O_RDONLY | O_NONBLOCK, path: path))
    }

    /// The path the kernel gives the open file `fd` (readlink of /proc/self/fd/N), or nil.
    public static func openedPath(_ fd: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        guard n > 0, n < buffer.count - 1 else { return nil }
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Whether the canonical absolute `path` is `directory` or lies under it (by whole path
    /// components: /a/bc is not inside /a/b).
    public static func path(_ path: String, isInside directory: String) -> Bool {
        guard directory.hasPrefix("/"), path.hasPrefix("/") else { return false }
        if directory == "/" || path == directory { return true }
        let base = directory.hasSuffix("/") ? directory : directory + "/"
        return path.hasPrefix(base)
    }
}
