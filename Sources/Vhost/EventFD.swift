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
        guard Self.poll(&entry, count: 1, milliseconds: milliseconds) else { return nil }
        return consume()
    }

    /// What one wait on a vring's call eventfd and its error eventfd saw.
    public struct Wakeup: Sendable, Equatable {
        /// The call eventfd's count, nil when it was not signalled.
        public var calls: UInt64?
        /// The error eventfd's count, nil when it was not signalled.
        public var errors: UInt64?
    }

    /// Waits, as `wait(milliseconds:)`, until this eventfd or `errors` is signalled, in one
    /// poll(2) for both, and clears whichever was. The driver sleeps on a vring's call eventfd
    /// and learns of a ring error (vhost.c vq_err signals the error eventfd) in the same wait,
    /// without a read(2) of the error eventfd, failing with EAGAIN, before each sleep.
    /// Nil on timeout. A `Wakeup` may hold neither count when poll(2) reported an fd ready that
    /// read(2) then found empty (another reader, POLLERR): the caller treats it as nothing used.
    public func wait(milliseconds: Int32, orErrorsOn errors: borrowing EventFD) -> Wakeup? {
        var entries = (pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: errors.fd, events: Int16(POLLIN), revents: 0))
        // SAFETY: a homogeneous tuple of two pollfds is laid out as an array of two.
        let ready = withUnsafeMutableBytes(of: &entries) { bytes in
            Self.poll(bytes.baseAddress!.assumingMemoryBound(to: pollfd.self), count: 2, milliseconds: milliseconds)
        }
        guard ready else { return nil }
        return Wakeup(calls: entries.0.revents != 0 ? consume() : nil, errors: entries.1.revents != 0 ? errors.consume() : nil)
    }

    /// poll(2) until an entry is ready (true) or `milliseconds` pass (false).
    ///
    /// poll(2) first: a signalled eventfd is readable at once, so there is no read(2) that fails
    /// with EAGAIN before it. The clock is the coarse one, read in the vDSO, and only to resume
    /// after EINTR (then the wait may end up to a tick early or late): every RX wake-up pays for
    /// what is here (docs/benchmarks.md, the profile).
    private static func poll(_ entries: UnsafeMutablePointer<pollfd>, count: Int, milliseconds: Int32) -> Bool {
        let start = milliseconds > 0 ? MonotonicClock.coarseMilliseconds() : 0
        var left = milliseconds
        while true {
            let rc = Glibc.poll(entries, nfds_t(count), left)
            if rc > 0 { return true }
            guard rc < 0 && errno == EINTR && left != 0 else { return false }
            if milliseconds > 0 { left = Int32(clamping: max(0, start + Int(milliseconds) - MonotonicClock.coarseMilliseconds())) }
        }
    }
}
