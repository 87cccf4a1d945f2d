import CVhost
import Glibc
import SystemPackage

/// An epoll set over eventfds and sockets: how the interrupt mode sleeps on several call
/// eventfds at once (one per queue pair). Closed in `deinit`.
public struct EventPoller: ~Copyable {
    public let fd: Int32

    public init() throws(VhostError) {
        let rc = cvhost_epoll_create()
        guard rc >= 0 else { throw .system(call: "epoll_create1", detail: "", errno: Errno(rawValue: -rc)) }
        fd = rc
    }

    deinit { close(fd) }

    /// Watches `watched` for readability; `token` comes back from `wait`.
    public func add(_ watched: Int32, token: UInt64) throws(VhostError) {
        let rc = cvhost_epoll_add(fd, watched, token)
        guard rc == 0 else { throw .system(call: "epoll_ctl(ADD)", detail: "fd \(watched)", errno: Errno(rawValue: -rc)) }
    }

    /// Stops watching `watched`.
    public func remove(_ watched: Int32) throws(VhostError) {
        let rc = cvhost_epoll_del(fd, watched)
        guard rc == 0 else { throw .system(call: "epoll_ctl(DEL)", detail: "fd \(watched)", errno: Errno(rawValue: -rc)) }
    }

    /// Waits up to `milliseconds`; returns the tokens of the ready fds. A signal (EINTR) ends
    /// the wait early with no tokens, so the caller sees a stop request at once.
    public func wait(milliseconds: Int32) -> [UInt64] {
        var tokens = [UInt64](repeating: 0, count: 64)
        let n = cvhost_epoll_wait(fd, &tokens, 64, milliseconds)
        if n < 0 {
            // EINTR is the only errno a valid epoll fd and buffer can give here.
            return []
        }
        return Array(tokens.prefix(Int(n)))
    }
}
