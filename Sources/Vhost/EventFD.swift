import CVhost
import Glibc
import SystemPackage

/// An eventfd: the kick (driver → kernel) and call (kernel → driver) doorbells.
/// Non-blocking; `wait` polls with a timeout. Closed in `deinit`.
public struct EventFD: ~Copyable {
    public let fd: Int32

    public init() throws(VhostError) {
        let rc = cvhost_eventfd(0, 1)
        guard rc >= 0 else { throw .system(call: "eventfd", detail: "", errno: Errno(rawValue: -rc)) }
        fd = rc
    }

    deinit { close(fd) }

    /// Adds 1 to the counter, waking the reader.
    public func signal() {
        var one: UInt64 = 1
        let n = write(fd, &one, 8)
        // An eventfd write fails only when the counter would overflow (never with +1 per kick)
        // or on a bad fd, which would be our bug.
        precondition(n == 8 || Glibc.errno == EAGAIN, "eventfd write failed: errno \(Glibc.errno)")
    }

    /// Reads and clears the counter; nil when it was 0.
    public func consume() -> UInt64? {
        var value: UInt64 = 0
        let n = read(fd, &value, 8)
        return n == 8 ? value : nil
    }

    /// Waits until the counter is non-zero or `milliseconds` pass; clears it.
    /// Returns the count, or nil on timeout. A signal does not end the wait early: it goes on for
    /// the time left (a signal arriving while a TX drain waited once read as a 5 s timeout).
    public func wait(milliseconds: Int32) -> UInt64? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard Self.poll(&entry, count: 1, wait: CoarseWait(milliseconds: milliseconds)) else { return nil }
        return consume()
    }

    /// poll(2) for what is left of `wait`: true when an entry is ready, false when the time
    /// passed. poll(2) comes first: a signalled eventfd is readable at once, so there is no
    /// read(2) that fails with EAGAIN before it.
    private static func poll(_ entries: UnsafeMutablePointer<pollfd>, count: Int, wait: CoarseWait) -> Bool {
        var left = wait.total
        while true {
            let rc = Glibc.poll(entries, nfds_t(count), left)
            if rc > 0 { return true }
            guard rc < 0 && errno == EINTR && left != 0 else { return false }
            left = wait.left
        }
    }
}
