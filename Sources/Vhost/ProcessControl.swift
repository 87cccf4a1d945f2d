import CVhost
import Glibc
import SystemPackage

/// The process's capabilities (linux/capability.h), for a tool that sets up as root and then
/// runs with less: `vhostctl attach` drops them once the vhost fd, the tap fd and its files
/// are open, since vhost checks its owner by memory, not by privilege.
public enum Capabilities {
    /// `CAP_NET_ADMIN`: create and configure taps and links.
    public static let networkAdministration = 12
    /// `CAP_SYS_ADMIN`.
    public static let systemAdministration = 21

    /// Whether `capability` is in this process's effective set (the `CapEff:` line of /proc/self/status).
    public static func isEffective(_ capability: Int) -> Bool { KernelInfo.hasEffectiveCapability(capability) }

    /// Drops every capability but those in `keep` from the effective and permitted sets
    /// (capset(2)), then sets `PR_SET_NO_NEW_PRIVS`, so that none can be regained, not even by
    /// executing a set-uid program. Throws `VhostError.system` naming the call that failed.
    public static func drop(keeping keep: [Int] = []) throws(VhostError) {
        precondition(keep.allSatisfy { (0..<64).contains($0) }, "capability numbers are 0 to 63")
        let mask = keep.reduce(UInt64(0)) { $0 | 1 << UInt64($1) }
        let rc = cvhost_drop_capabilities(mask)
        guard rc == 0 else {
            throw .system(call: "capset", detail: "(keeping \(keep.isEmpty ? "none" : keep.map(String.init).joined(separator: ", ")))", errno: Errno(rawValue: -rc))
        }
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
