import ArgumentParser
import Glibc
import Vhost

/// Who `attach` runs as after set-up, chosen the way tcpdump chooses (`-Z`, default user
/// `tcpdump`): as root, by default the user `nobody`; `--user NAME|uid[:gid]` for another;
/// `--user root` to keep uid 0. Every capability is dropped in each case (effective, permitted,
/// inheritable, ambient and the bounding set) and no-new-privs is set, except with
/// `--user root --keep-capabilities`. A process that is not root keeps its own uid.
struct RunAsPlan {
    /// The user the default is, when attach is started as root without `--user`.
    static let defaultUserName = "nobody"

    /// The user to switch to, or nil to keep the current uid and gid.
    var user: UserIdentity?
    /// Keep root's capabilities (`--user root --keep-capabilities`): no drop at all.
    var keepCapabilities: Bool
    /// Whether `--user` named the user (a tap attach creates is then owned by it).
    var chosenByUser: Bool

    /// The plan for `--user` (nil: the default) and `--keep-capabilities`. Throws a
    /// `ValidationError` (exit 64) with one line: an unknown user, the default user missing,
    /// `--keep-capabilities` with a switch to another user.
    static func resolve(user text: String?, keepCapabilities: Bool) throws -> RunAsPlan {
        let runningAsRoot = getuid() == 0 && geteuid() == 0
        guard let text else {
            guard runningAsRoot else { return RunAsPlan(user: nil, keepCapabilities: keepCapabilities, chosenByUser: false) }
            if keepCapabilities {
                throw ValidationError("--keep-capabilities needs --user root: by default attach switches to \(defaultUserName) after set-up, which keeps no capability")
            }
            guard let identity = try lookup(defaultUserName) else {
                throw ValidationError("the default user \(defaultUserName), whom attach runs as after set-up, does not exist here: pass --user NAME (an unprivileged user), or --user root to stay root")
            }
            return RunAsPlan(user: identity, keepCapabilities: false, chosenByUser: false)
        }
        guard let identity = try lookup(text) else {
            throw ValidationError("--user \(text): no such user; give a user name, or uid[:gid]")
        }
        if keepCapabilities && !identity.isRoot {
            throw ValidationError("--keep-capabilities needs --user root: switching to \(identity.name) (uid \(identity.uid)) keeps no capability")
        }
        // Root stays root (capabilities dropped unless kept): nothing to switch.
        return RunAsPlan(user: identity.isRoot ? nil : identity, keepCapabilities: keepCapabilities, chosenByUser: true)
    }

    private static func lookup(_ text: String) throws -> UserIdentity? {
        do { return try UserIdentity.lookup(text) } catch { throw ValidationError("--user \(text): \(error)") }
    }

    /// The user files are created as, so that they are this run's after the drop (nil: as the
    /// process is now).
    var fileCreator: UserIdentity? { user.flatMap { $0.uid == geteuid() ? nil : $0 } }

    /// Drops privileges for good (unless they are kept) and returns the credentials the kernel
    /// shows afterwards, or nil when nothing was dropped.
    func drop() throws -> ProcessCredentials? {
        guard !keepCapabilities else { return nil }
        do {
            return try PrivilegeDrop.perform(switchingTo: user)
        } catch {
            throw CLIError(message: "cannot drop privileges\(user.map { " to \($0.name) (uid \($0.uid), gid \($0.gid))" } ?? ""): \(error)", status: ExitStatus.failure)
        }
    }

    /// "running as NAME (uid N)…", said after the drop.
    func summary(_ credentials: ProcessCredentials?) -> String {
        let name = user?.name ?? (getuid() == 0 ? "root" : nil)
        let who = name.map { "running as \($0) (uid \(getuid()), gid \(getgid()))" } ?? "running as uid \(getuid()) (gid \(getgid()))"
        guard credentials != nil else { return "\(who) with every capability (--keep-capabilities)" }
        return "\(who): dropped every capability and set no-new-privs (nothing after set-up needs root)"
    }
}

/// The uid that owns a persistent tap (tun's sysfs `owner`), or nil when none is set.
func tapOwner(_ name: String) -> UInt32? {
    guard let text = KernelInfo.readFile("/sys/class/net/\(name)/owner"), let value = Int64(text.filter { !$0.isWhitespace }), value >= 0 else { return nil }
    return UInt32(value)
}
