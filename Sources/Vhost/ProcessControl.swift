import CVhost
import Glibc
import SystemPackage

/// The process's capabilities (linux/capability.h), for a tool that sets up as root and then
/// runs with none: `vhostctl attach` drops them once the vhost fd, the tap fd and its files
/// are open, since vhost checks its owner by memory, not by privilege.
public enum Capabilities {
    /// `CAP_SETPCAP`: needed to drop capabilities from the bounding set.
    public static let setCapabilities = 8
    /// `CAP_NET_ADMIN`: create and configure taps and links.
    public static let networkAdministration = 12
    /// `CAP_SYS_ADMIN`.
    public static let systemAdministration = 21

    /// Whether `capability` is in this process's effective set (the `CapEff:` line of /proc/self/status).
    public static func isEffective(_ capability: Int) -> Bool { KernelInfo.hasEffectiveCapability(capability) }

    /// The highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap), at most 63.
    public static var lastCapability: Int {
        guard let text = KernelInfo.readFile("/proc/sys/kernel/cap_last_cap"),
              let value = Int(text.filter { !$0.isWhitespace }), (0...63).contains(value) else { return 63 }
        return value
    }
}

/// A user to run as: a name from the user database (getpwnam_r(3), and its groups from
/// getgrouplist(3)), or a numeric uid[:gid].
public struct UserIdentity: Sendable, Equatable {
    /// The user's name (the text given, for a uid the database does not know).
    public var name: String
    public var uid: UInt32
    public var gid: UInt32
    /// The supplementary groups to run with (the primary group included).
    public var groups: [UInt32]

    public init(name: String, uid: UInt32, gid: UInt32, groups: [UInt32]) {
        self.name = name; self.uid = uid; self.gid = gid; self.groups = groups
    }

    /// Whether this is uid 0.
    public var isRoot: Bool { uid == 0 }

    /// The user `text` names: `NAME` (looked up with getpwnam_r, its groups with getgrouplist), or
    /// `uid[:gid]` (gid defaults to uid; the only group is gid). Nil when no user of that name
    /// exists. Throws `invalidConfiguration` for malformed text (a uid or gid of 2³²−1, which
    /// setuid(2) reads as "unchanged", included) and `system` when the database cannot be read.
    public static func lookup(_ text: String) throws(VhostError) -> UserIdentity? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let invalidID = UInt32.max
        if let first = parts.first, !first.isEmpty, first.allSatisfy(\.isASCII), first.allSatisfy(\.isNumber) {
            guard parts.count <= 2, let uid = UInt32(first), uid != invalidID else {
                throw .invalidConfiguration("user \(text): write a name, or a uid and optional gid from 0 to 4294967294 (e.g. 65534:65534)")
            }
            let gid = parts.count == 2 ? UInt32(parts[1]) : uid
            guard let gid, gid != invalidID else {
                throw .invalidConfiguration("user \(text): the gid after ':' must be a number from 0 to 4294967294")
            }
            return UserIdentity(name: text, uid: uid, gid: gid, groups: [gid])
        }
        guard parts.count == 1, !text.isEmpty, !text.utf8.contains(0) else {
            throw .invalidConfiguration("user \(text): write a user name, or uid[:gid]")
        }
        var entry = passwd()
        var found: UnsafeMutablePointer<passwd>? = nil
        var buffer = [CChar](repeating: 0, count: 4096)
        while true {
            let rc = getpwnam_r(text, &entry, &buffer, buffer.count, &found)
            if rc == ERANGE && buffer.count < 1 << 20 { buffer = [CChar](repeating: 0, count: buffer.count * 4); continue }
            guard rc == 0 else { throw .system(call: "getpwnam_r", detail: "looking up user \(text)", errno: Errno(rawValue: rc)) }
            break
        }
        guard found != nil else { return nil }
        let uid = entry.pw_uid, gid = entry.pw_gid
        // getgrouplist answers -1 and the count needed when the array is too small.
        var count: Int32 = 32
        var groups = [gid_t](repeating: 0, count: Int(count))
        while getgrouplist(text, gid, &groups, &count) < 0 {
            guard count > Int32(groups.count), count <= 65_536 else {
                throw .system(call: "getgrouplist", detail: "the groups of user \(text)", errno: Errno(rawValue: EINVAL))
            }
            groups = [gid_t](repeating: 0, count: Int(count))
        }
        guard uid != invalidID, gid != invalidID else { throw .invalidConfiguration("user \(text) has uid or gid 4294967295, which cannot be switched to") }
        return UserIdentity(name: text, uid: uid, gid: gid, groups: Array(groups.prefix(Int(max(0, count)))))
    }

    /// Runs `body` with this user's effective uid, gid and groups, then returns to root's; for
    /// creating files as the user the process becomes later, so that the kernel checks that user's
    /// rights in the directory (and the file is the user's). Needs effective uid 0 and a saved
    /// uid of 0 to come back (seteuid(2)); as any other uid, `body` runs as is.
    public func asEffectiveUser<T>(_ body: () throws(VhostError) -> T) throws(VhostError) -> T {
        guard geteuid() == 0, uid != 0 else { return try body() }
        let savedGid = getegid()
        let savedCount = getgroups(0, nil)
        var savedGroups = [gid_t](repeating: 0, count: Int(max(0, savedCount)))
        guard savedCount >= 0, getgroups(savedCount, &savedGroups) == savedCount else {
            throw .system(call: "getgroups", detail: "before acting as \(name)", errno: Errno(rawValue: Glibc.errno))
        }
        guard setgroups(groups.count, groups) == 0, setegid(gid) == 0, seteuid(uid) == 0 else {
            let error = Errno(rawValue: Glibc.errno)
            _ = seteuid(0); _ = setegid(savedGid); _ = setgroups(savedGroups.count, savedGroups)
            throw .system(call: "seteuid", detail: "to act as \(name) (uid \(uid), gid \(gid))", errno: error)
        }
        let result: Result<T, VhostError>
        do throws(VhostError) { result = .success(try body()) } catch { result = .failure(error) }
        // Back to root: allowed because the saved uid is still 0 (kernel/sys.c setreuid rules).
        guard seteuid(0) == 0, setegid(savedGid) == 0, setgroups(savedGroups.count, savedGroups) == 0 else {
            throw .system(call: "seteuid", detail: "back to root after acting as \(name)", errno: Errno(rawValue: Glibc.errno))
        }
        return try result.get()
    }
}

/// This process's credentials as the kernel reports them in /proc/self/status: what a test or
/// `vhostctl attach --verbose` shows after the privilege drop.
public struct ProcessCredentials: Sendable, Equatable, CustomStringConvertible {
    /// Real, effective, saved and file-system uid (the `Uid:` line).
    public var uids: [UInt32]
    /// Real, effective, saved and file-system gid (the `Gid:` line).
    public var gids: [UInt32]
    /// Supplementary groups (the `Groups:` line).
    public var groups: [UInt32]
    public var inheritable: UInt64
    public var permitted: UInt64
    public var effective: UInt64
    public var bounding: UInt64
    public var ambient: UInt64
    /// `PR_SET_NO_NEW_PRIVS` (the `NoNewPrivs:` line).
    public var noNewPrivileges: Bool

    /// Parses the text of /proc/PID/status. The text is not trusted: a missing or malformed line
    /// throws `corruptInput` naming it.
    public init(status text: String, path: String = "/proc/self/status") throws(VhostError) {
        var fields: [Substring: Substring] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[line[..<colon]] = line[line.index(after: colon)...]
        }
        func value(_ key: Substring) throws(VhostError) -> Substring {
            guard let value = fields[key] else { throw .corruptInput(path: path, problem: "no \(key): line") }
            return value
        }
        func ids(_ key: Substring, count: Int?) throws(VhostError) -> [UInt32] {
            let words = try value(key).split(whereSeparator: { $0 == " " || $0 == "\t" })
            var result: [UInt32] = []
            for word in words {
                guard let id = UInt32(word) else { throw .corruptInput(path: path, problem: "\(key): '\(word.prefix(20))' is not an id") }
                result.append(id)
            }
            if let count, result.count != count { throw .corruptInput(path: path, problem: "\(key): \(result.count) ids, not \(count)") }
            return result
        }
        func mask(_ key: Substring) throws(VhostError) -> UInt64 {
            let digits = try value(key).filter { $0 != " " && $0 != "\t" }
            guard (1...16).contains(digits.count), let mask = UInt64(digits, radix: 16) else {
                throw .corruptInput(path: path, problem: "\(key): '\(digits.prefix(20))' is not a 64-bit hex mask")
            }
            return mask
        }
        uids = try ids("Uid", count: 4)
        gids = try ids("Gid", count: 4)
        groups = try ids("Groups", count: nil)
        inheritable = try mask("CapInh")
        permitted = try mask("CapPrm")
        effective = try mask("CapEff")
        bounding = try mask("CapBnd")
        ambient = try mask("CapAmb")
        switch try value("NoNewPrivs").filter({ $0 != " " && $0 != "\t" }) {
        case "0": noNewPrivileges = false
        case "1": noNewPrivileges = true
        case let other: throw .corruptInput(path: path, problem: "NoNewPrivs: '\(other.prefix(20))' is neither 0 nor 1")
        }
    }

    /// This process's credentials now.
    public static func current() throws(VhostError) -> ProcessCredentials {
        guard let text = KernelInfo.readFile("/proc/self/status") else {
            throw .unreadableFile(path: "/proc/self/status", problem: "the process status cannot be read", errno: Errno(rawValue: Glibc.errno))
        }
        return try ProcessCredentials(status: text)
    }

    /// Whether no capability is left in any set but the bounding set.
    public var holdsNoCapability: Bool { inheritable == 0 && permitted == 0 && effective == 0 && ambient == 0 }

    /// One line: `uid R/E/S/FS gid R/E/S/FS groups G,… CapInh … CapPrm … CapEff … CapBnd … CapAmb … NoNewPrivs 0|1`.
    public var description: String {
        func hex(_ mask: UInt64) -> String { let digits = String(mask, radix: 16); return String(repeating: "0", count: 16 - digits.count) + digits }
        let groupText = groups.isEmpty ? "none" : groups.map(String.init).joined(separator: ",")
        return "uid \(uids.map(String.init).joined(separator: "/")) gid \(gids.map(String.init).joined(separator: "/")) groups \(groupText) "
            + "CapInh \(hex(inheritable)) CapPrm \(hex(permitted)) CapEff \(hex(effective)) CapBnd \(hex(bounding)) CapAmb \(hex(ambient)) NoNewPrivs \(noNewPrivileges ? 1 : 0)"
    }
}

/// Dropping privileges after set-up, for good. Capabilities and no-new-privs belong to a thread
/// (capset(2), prctl(2)): call it on the thread that goes on running, before starting threads of
/// one's own. (The kernel's vhost workers in the thread group run kernel code only.)
public enum PrivilegeDrop {
    /// Empties the bounding set (when CAP_SETPCAP allows it) and the ambient set, sets
    /// `PR_SET_NO_NEW_PRIVS`, switches to `user` (setgroups, setgid, setuid; nil keeps the uid and
    /// gid), then empties the effective, permitted and inheritable sets but for `keep` (the
    /// capability numbers a privileged helper still needs; empty for attach). Checks the outcome in
    /// /proc/self/status (and that root cannot be regained), and returns it. Throws
    /// `VhostError.system` naming the call that failed, or `invalidState` when a privilege is left.
    public static func perform(switchingTo user: UserIdentity?, keeping keep: [Int] = []) throws(VhostError) -> ProcessCredentials {
        guard keep.allSatisfy({ (0...Capabilities.lastCapability).contains($0) }) else {
            throw .invalidConfiguration("capabilities to keep are numbers from 0 to \(Capabilities.lastCapability): \(keep)")
        }
        let kept = keep.reduce(UInt64(0)) { $0 | 1 << UInt64($1) }
        // The shim answers -errno; libc answers -1 and sets errno.
        func check(_ rc: Int32, _ call: String, _ detail: String) throws(VhostError) {
            guard rc == 0 else { throw .system(call: call, detail: detail, errno: Errno(rawValue: -rc)) }
        }
        func checkLibc(_ rc: Int32, _ call: String, _ detail: String) throws(VhostError) {
            guard rc == 0 else { throw .system(call: call, detail: detail, errno: Errno(rawValue: Glibc.errno)) }
        }
        // The bounding set limits what an exec could ever gain; dropping from it needs CAP_SETPCAP
        // (kernel/commoncap.c cap_prctl_drop), which a process without it cannot do anyway.
        let canEmptyBoundingSet = Capabilities.isEffective(Capabilities.setCapabilities)
        if canEmptyBoundingSet {
            for capability in 0...Capabilities.lastCapability where !keep.contains(capability) {
                try check(cvhost_capability_bounding_drop(Int32(capability)), "prctl(PR_CAPBSET_DROP)", "capability \(capability)")
            }
        }
        try check(cvhost_capability_ambient_clear(), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)", "")
        try check(cvhost_set_no_new_privileges(), "prctl(PR_SET_NO_NEW_PRIVS)", "")
        if let user {
            // setuid(2) as root sets the real, effective and saved uid, so there is no way back.
            try checkLibc(setgroups(user.groups.count, user.groups), "setgroups", "to the groups of \(user.name)")
            try checkLibc(setgid(user.gid), "setgid", "to \(user.gid)")
            try checkLibc(setuid(user.uid), "setuid", "to \(user.uid) (\(user.name))")
        }
        try check(cvhost_capset(kept, kept, 0), "capset", kept == 0 ? "(every set empty)" : "(keeping \(keep))")

        let credentials = try ProcessCredentials.current()
        var left: [String] = []
        if credentials.effective != kept || credentials.permitted != kept || credentials.inheritable != 0 || credentials.ambient != 0 {
            left.append("capabilities (\(credentials))")
        }
        if canEmptyBoundingSet && credentials.bounding & ~kept != 0 { left.append("a bounding set") }
        if !credentials.noNewPrivileges { left.append("no NoNewPrivs") }
        if let user, credentials.uids.contains(where: { $0 != user.uid }) || credentials.gids.contains(where: { $0 != user.gid }) {
            left.append("ids other than \(user.uid):\(user.gid) (\(credentials))")
        }
        if let user, !user.isRoot, setuid(0) == 0 { left.append("the power to become root again") }
        guard left.isEmpty else {
            throw .invalidState("after dropping privileges the process still has \(left.joined(separator: ", ")); refusing to continue")
        }
        return credentials
    }
}

/// The calling thread: its kernel thread id and the CPUs it may run on.
public enum CurrentThread {
    /// The kernel's id of the calling thread (gettid(2)), as /proc/self/task names it.
    public static var id: Int32 { cvhost_gettid() }

    /// Pins the calling thread to `cpu` (sched_setaffinity(2)), as `bench --driver-cpu` does
    /// with the thread that drives the rings.
    public static func pin(to cpu: Int) throws(VhostError) {
        let rc = cvhost_pin_thread(id, Int32(cpu))
        guard rc == 0 else { throw .system(call: "sched_setaffinity", detail: "this thread to CPU \(cpu)", errno: Errno(rawValue: -rc)) }
    }
}
