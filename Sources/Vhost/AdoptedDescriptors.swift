import CVhost
import Glibc
import SystemPackage

// Descriptors a privileged helper opened and passed on (QEMU's `fd=` and `vhostfds=`, libvirt):
// a tap queue and a vhost-net device used without any privilege of our own. Each is checked
// through the descriptor itself, never by a path that could name something else.

/// What a descriptor is, checked without opening anything.
public enum PassedDescriptor {
    /// Why a passed descriptor is not what it must be: one sentence, starting with "fd N".
    public struct Refusal: Error, Equatable, CustomStringConvertible {
        /// The descriptor refused.
        public var fd: Int32
        /// What it is instead, and what it must be (the rest of the sentence after "fd N").
        public var problem: String
        /// A refusal of `fd` for `problem`.
        public init(fd: Int32, problem: String) { self.fd = fd; self.problem = problem }
        /// "fd N" and the problem: the sentence a user reads.
        public var description: String { "fd \(fd) \(problem)" }
    }

    /// The descriptor's status, or a refusal naming what it is not: not open (EBADF), or its
    /// `fstat` failed.
    static func status(_ fd: Int32) throws(Refusal) -> stat {
        guard fd >= 0, cvhost_descriptor_flags(fd) >= 0 else { throw Refusal(fd: fd, problem: "is not open (this process inherited no such descriptor)") }
        guard let info = CheckedOpen.status(fd) else { throw Refusal(fd: fd, problem: "cannot be examined: fstat failed with \(Errno(rawValue: Glibc.errno).name)") }
        return info
    }

    /// "a regular file", "the character device 1:3 (/dev/null)": what `fd` is, for refusals.
    static func what(_ fd: Int32, _ info: stat) -> String {
        let kind = CheckedOpen.kind(info.st_mode)
        let path = CheckedOpen.openedPath(fd).map { " (\($0))" } ?? ""
        guard info.st_mode & S_IFMT == S_IFCHR else { return kind + path }
        return "the character device \(DeviceNumber(UInt64(info.st_rdev)))\(path)"
    }

    /// Checks that `fd` is open on the vhost-net character device (10:238, as
    /// `CheckedOpen.characterDevice` accepts it for `/dev/vhost-net`), and sets close-on-exec.
    public static func requireVhostNet(_ fd: Int32) throws(Refusal) {
        let info = try status(fd)
        guard info.st_mode & S_IFMT == S_IFCHR, DeviceNumber(UInt64(info.st_rdev)) == .vhostNet else {
            throw Refusal(fd: fd, problem: "is \(what(fd, info)), not the vhost-net device (character device \(DeviceNumber.vhostNet))")
        }
        _ = cvhost_set_close_on_exec(fd)
    }

    /// Checks that the vhost-net device `fd` has no owner yet, as a fresh open has: VHOST_SET_OWNER
    /// answers EBUSY when the device has one, whichever process it is (vhost.c vhost_dev_set_owner:
    /// vhost_dev_has_owner). On success the ownership is given back with VHOST_RESET_OWNER
    /// (net.c vhost_net_reset_owner → vhost.c vhost_dev_reset_owner clears dev->mm), so the device
    /// is left as it came, for the session's own VHOST_SET_OWNER.
    public static func requireUnowned(_ fd: Int32, observer: IoctlObserver? = nil) throws(Refusal) {
        do {
            try performIoctl(.vhost(.setOwner), observer: observer) { cvhost_ioctl_none(fd, $0) }
        } catch .ioctl(let failure) where failure.errno == .resourceBusy {
            throw Refusal(fd: fd, problem: "is a vhost-net device already in use: it has an owner (VHOST_SET_OWNER: EBUSY); pass a descriptor no other process has set up")
        } catch {
            throw Refusal(fd: fd, problem: "is refused by vhost-net: \(error)")
        }
        do {
            try performIoctl(.vhost(.resetOwner), observer: observer) { cvhost_ioctl_none(fd, $0) }
        } catch {
            throw Refusal(fd: fd, problem: "could not be given back after the owner check: \(error)")
        }
    }

    /// The interface and `IFF_*` flags of the tun/tap queue `fd` (TUNGETIFF, tun.c tun_get_iff:
    /// the name and tun_flags, which carry IFF_TUN or IFF_TAP, IFF_NO_PI, IFF_VNET_HDR,
    /// IFF_MULTI_QUEUE and IFF_PERSIST). A descriptor that is no tun answers ENOTTY or EINVAL;
    /// `/dev/net/tun` not yet attached with TUNSETIFF answers EBADFD (tun.c __tun_chr_ioctl).
    public static func tunInterface(_ fd: Int32, observer: IoctlObserver? = nil) throws(Refusal) -> (name: String, flags: Tap.Flags) {
        let info = try status(fd)
        guard info.st_mode & S_IFMT == S_IFCHR else {
            throw Refusal(fd: fd, problem: "is \(what(fd, info)), not a tun/tap queue (a descriptor of /dev/net/tun after TUNSETIFF)")
        }
        var flags: Int16 = 0
        var name = [CChar](repeating: 0, count: Int(CVHOST_IFNAMSIZ))
        do {
            try performIoctl(.tun(.getInterface), observer: observer, answer: { .value(UInt64(UInt16(bitPattern: flags))) }) {
                cvhost_ioctl_ifreq_short(fd, $0, "", &flags, &name)
            }
        } catch .ioctl(let failure) where failure.errno.rawValue == EBADFD {
            throw Refusal(fd: fd, problem: "is /dev/net/tun attached to no interface (TUNGETIFF: EBADFD): the helper must call TUNSETIFF on it first")
        } catch {
            throw Refusal(fd: fd, problem: "is \(what(fd, info)), not a tun/tap queue (TUNGETIFF refused it)")
        }
        _ = cvhost_set_close_on_exec(fd)
        return (String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), Tap.Flags(rawValue: flags))
    }
}

extension Tap {
    /// Takes a tun/tap queue descriptor another process opened (and attached with TUNSETIFF): the
    /// name and flags are read from it with TUNGETIFF (`PassedDescriptor.tunInterface`). Nothing
    /// needs CAP_NET_ADMIN. The tap owns the descriptor from here and closes it; when refused,
    /// the descriptor is left open, the caller's.
    public init(adopting descriptor: FileDescriptor, observer: IoctlObserver? = nil) throws(PassedDescriptor.Refusal) {
        let (name, flags) = try PassedDescriptor.tunInterface(descriptor.rawValue, observer: observer)
        fd = descriptor.rawValue
        self.name = name
        self.flags = flags
        self.observer = observer
    }
}

extension VhostNetDevice {
    /// Takes a descriptor of `/dev/vhost-net` another process opened, after checking it is the
    /// vhost-net device (`PassedDescriptor.requireVhostNet`). The device owns it from here; when
    /// refused, the descriptor is left open, the caller's.
    public init(adopting descriptor: FileDescriptor, observer: IoctlObserver? = nil) throws(PassedDescriptor.Refusal) {
        try PassedDescriptor.requireVhostNet(descriptor.rawValue)
        self.init(descriptor: descriptor, path: "/dev/vhost-net (fd \(descriptor.rawValue))", observer: observer)
    }
}

/// Entering a network namespace as `ip netns exec` does (iproute2 lib/namespace.c netns_switch):
/// setns(CLONE_NEWNET) for the calling thread, then a mount namespace of its own with /sys mounted
/// again, so that /sys/class/net shows the namespace's interfaces (sysfs shows the namespace of
/// whoever mounted it: fs/sysfs/mount.c sysfs_get_tree). Call it before any socket, tap or thread:
/// setns and unshare change only the calling thread, and what it creates later.
public enum NetworkNamespace {
    /// The file `ip netns` names NAME by (/run/netns/NAME), or `text` itself when it is a path.
    public static func path(for text: String) -> String {
        text.contains("/") ? text : "/run/netns/\(text)"
    }

    /// Enters the network namespace of the file at `path` (a /run/netns entry or /proc/PID/ns/net).
    /// Needs CAP_SYS_ADMIN. Throws one line naming what failed.
    public static func enter(path: String) throws(VhostError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            if errno == .noSuchFileOrDirectory || errno == .notDirectory {
                throw .invalidConfiguration("no network namespace at \(path)\(path.hasPrefix("/run/netns/") ? "; create it with `ip netns add \(path.dropFirst("/run/netns/".count))`" : "")")
            }
            throw .system(call: "open", detail: "network namespace \(path)", errno: errno)
        }
        defer { close(fd) }
        var rc = cvhost_setns_network(fd)
        if rc == -EINVAL { throw .invalidConfiguration("\(path) is not a network namespace (setns CLONE_NEWNET: EINVAL)") }
        guard rc == 0 else { throw .system(call: "setns(CLONE_NEWNET)", detail: path, errno: Errno(rawValue: -rc)) }
        rc = cvhost_unshare_mount_namespace()
        guard rc == 0 else { throw .system(call: "unshare(CLONE_NEWNS)", detail: "for the /sys of \(path)", errno: Errno(rawValue: -rc)) }
        // Mounts made here must not propagate back to the namespace we came from.
        rc = cvhost_mount_make_root_rslave()
        guard rc == 0 else { throw .system(call: "mount(/, MS_SLAVE|MS_REC)", detail: "", errno: Errno(rawValue: -rc)) }
        rc = cvhost_umount_detach("/sys")
        guard rc == 0 || rc == -EINVAL else { throw .system(call: "umount2(/sys, MNT_DETACH)", detail: "", errno: Errno(rawValue: -rc)) }
        rc = cvhost_mount_sysfs("/sys")
        guard rc == 0 else { throw .system(call: "mount(sysfs, /sys)", detail: "for \(path)", errno: Errno(rawValue: -rc)) }
    }
}

extension NetworkInterface {
    /// Whether the interface is administratively up (IFF_UP in SIOCGIFFLAGS; needs no privilege).
    public func isUp() throws(VhostError) -> Bool { try flags() & Int16(CVHOST_IFF_UP) != 0 }
}
