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
    ///
    /// Edge-triggered (EPOLLET), a ready fd is reported once per wake-up of its wait queue, not
    /// for as long as it stays readable: an eventfd is then reported once per write, and need not
    /// be read to clear it (eventfd_signal wakes the queue on every signal, fs/eventfd.c).
    public func add(_ watched: Int32, token: UInt64, edgeTriggered: Bool = false) throws(VhostError) {
        let rc = cvhost_epoll_add(fd, watched, edgeTriggered ? CVHOST_EPOLLIN | CVHOST_EPOLLET : CVHOST_EPOLLIN, token)
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
        let n = wait(milliseconds: milliseconds, tokens: &tokens)
        return Array(tokens.prefix(n))
    }

    /// `wait` into the caller's buffer, without allocating: fills the first tokens of `tokens`
    /// (at most its count) and returns how many are ready; 0 when the time passed or a signal
    /// (EINTR) ended the wait first. For an event loop that waits once per wake-up.
    public func wait(milliseconds: Int32, tokens: inout [UInt64]) -> Int {
        guard !tokens.isEmpty else { return 0 }
        let capacity = Int32(clamping: tokens.count)
        let n = tokens.withUnsafeMutableBufferPointer { cvhost_epoll_wait(fd, $0.baseAddress!, capacity, milliseconds) }
        // EINTR is the only errno a valid epoll fd and buffer can give here.
        return n < 0 ? 0 : Int(n)
    }

    /// Waits up to `milliseconds` (0: not at all, -1: for ever) for the fds with tokens 0 and 1,
    /// without allocating: bit `token` is set in the result for each one ready, 0 when the time
    /// passed, nil when a signal (EINTR) ended the wait first. For a set watching those two alone.
    public func readyPair(milliseconds: Int32) -> UInt8? {
        var tokens: (UInt64, UInt64) = (0, 0)
        // SAFETY: a homogeneous tuple of two UInt64s is laid out as an array of two, and
        // cvhost_epoll_wait writes at most `maximum` (2) tokens.
        let n = withUnsafeMutableBytes(of: &tokens) { cvhost_epoll_wait(fd, $0.baseAddress!.assumingMemoryBound(to: UInt64.self), 2, milliseconds) }
        if n < 0 { return nil }  // EINTR: the only errno a valid epoll fd and buffer can give
        var ready: UInt8 = 0
        if n > 0 { ready |= 1 << (tokens.0 & 1) }
        if n > 1 { ready |= 1 << (tokens.1 & 1) }
        return ready
    }
}
