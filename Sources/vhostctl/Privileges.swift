import Glibc
import Vhost

/// A user to drop to after setup: a name from /etc/passwd, or a numeric uid[:gid].
/// /etc/passwd is read directly so that a static binary needs no NSS libraries.
struct UserSpec {
    var uid: UInt32
    var gid: UInt32
    var name: String

    init?(parsing text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        if let uid = UInt32(parts[0]) {
            guard parts.count <= 2 else { return nil }
            let gid = parts.count == 2 ? UInt32(parts[1]) : uid
            guard let gid else { return nil }
            self.uid = uid; self.gid = gid; self.name = text
            return
        }
        guard parts.count == 1, let passwd = KernelInfo.readFile("/etc/passwd") else { return nil }
        for line in passwd.split(separator: "\n") {
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            if fields.count >= 4, fields[0] == parts[0], let uid = UInt32(fields[2]), let gid = UInt32(fields[3]) {
                self.uid = uid; self.gid = gid; self.name = String(fields[0])
                return
            }
        }
        return nil
    }

    /// setgroups, setgid, setuid — and checks that root cannot be regained.
    func drop() throws {
        guard setgroups(0, nil) == 0, setgid(gid) == 0, setuid(uid) == 0 else {
            throw CLIError(message: "cannot drop privileges to \(name) (uid \(uid), gid \(gid)): errno \(errno)", status: ExitStatus.failure)
        }
        if uid != 0 && setuid(0) == 0 {
            throw CLIError(message: "dropped to uid \(uid) but could regain root; refusing to continue", status: ExitStatus.failure)
        }
    }
}

/// Drops every capability but those in `keep` (and forbids regaining any): after set-up `attach`
/// needs none to run, since the vhost fd, the tap fd and the pcap file are open and vhost's owner
/// check is by memory, not by privilege. Checked afterwards in /proc/self/status.
func dropCapabilities(keeping keep: [Int] = []) throws {
    do {
        try Capabilities.drop(keeping: keep)
    } catch {
        throw CLIError(message: "cannot drop capabilities: \(error); pass --keep-capabilities to run with them", status: ExitStatus.failure)
    }
    guard !Capabilities.isEffective(Capabilities.systemAdministration),
          keep.contains(Capabilities.networkAdministration) || !Capabilities.isEffective(Capabilities.networkAdministration) else {
        throw CLIError(message: "capabilities remain after dropping them; refusing to continue", status: ExitStatus.failure)
    }
}

/// The uid that owns a persistent tap (tun's sysfs `owner`), or nil when none is set.
func tapOwner(_ name: String) -> UInt32? {
    guard let text = KernelInfo.readFile("/sys/class/net/\(name)/owner"), let value = Int64(text.filter { !$0.isWhitespace }), value >= 0 else { return nil }
    return UInt32(value)
}
