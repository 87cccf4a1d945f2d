import Glibc
import Vhost

/// The kernel's own words for a ring fault: vhost reports it with `vq_err()`, a `pr_debug` (dynamic
/// debug; Debian's kernels have it) beside the error eventfd's signal. `KernelLog.vhost()` turns
/// vhost's and vhost_net's debug messages on and reads the kernel log from the moment it was
/// made, through `/dev/kmsg`.
final class KernelLog {
    private let fd: Int32

    /// Turns on vhost's debug messages and starts reading the log from its end. Nil (with why)
    /// when this kernel has no dynamic debug control or no /dev/kmsg.
    static func vhost() -> Result<KernelLog, KernelTestFailure> {
        var control = "/proc/dynamic_debug/control"
        if access(control, W_OK) != 0 {
            // Older kernels have the control file only in debugfs.
            mkdir("/sys/kernel/debug", 0o755)
            _ = mount("debugfs", "/sys/kernel/debug", "debugfs", 0, nil)
            control = "/sys/kernel/debug/dynamic_debug/control"
        }
        for module in ["vhost", "vhost_net"] {
            let fd = open(control, O_WRONLY)
            guard fd >= 0 else { return .failure(KernelTestFailure("no dynamic debug control (\(control)): \(String(cString: strerror(errno)))")) }
            let line = "module \(module) +p\n"
            let n = line.withCString { write(fd, $0, strlen($0)) }
            close(fd)
            guard n > 0 else { return .failure(KernelTestFailure("writing '\(line.dropLast())' to \(control) failed: \(String(cString: strerror(errno)))")) }
        }
        let fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return .failure(KernelTestFailure("cannot read /dev/kmsg: \(String(cString: strerror(errno)))")) }
        lseek(fd, 0, SEEK_END)
        return .success(KernelLog(fd: fd))
    }

    private init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    /// The messages logged since the last call (or since the log was made), without their
    /// priority, sequence and time prefix.
    func newMessages() -> [String] {
        var messages: [String] = []
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EPIPE { continue }   // records were overwritten: go on with the next
            guard n > 0 else { break }
            let record = String(decoding: buffer.prefix(n), as: UTF8.self)
            // "prio,seq,usec,flags;message\n" and continuation lines " KEY=VALUE".
            guard let semicolon = record.firstIndex(of: ";") else { continue }
            let message = record[record.index(after: semicolon)...].split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
            messages.append(String(message))
        }
        return messages
    }

    static let mark = "swift-vhost kernel tier: log mark"

    /// Ends a message the kernel left open. Some of vhost's `vq_err` texts have no trailing
    /// newline ("Guest says index %u > %u is available", "Guest moved used index from %u to %u"),
    /// so printk keeps the record open for a continuation and /dev/kmsg shows it only once
    /// another record begins: a line of ours begins one.
    func endOpenMessage() {
        let fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        let line = "<7>\(KernelLog.mark)\n"
        _ = line.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    /// Waits up to `seconds` for a message that contains `words`; returns it, or every message
    /// seen (for the failure's text).
    func waitForMessage(containing words: String, seconds: Double) -> (match: String?, seen: [String]) {
        waitForMessage(containingAnyOf: [words], seconds: seconds)
    }

    /// Waits up to `seconds` for a message that contains any of `alternatives`.
    func waitForMessage(containingAnyOf alternatives: [String], seconds: Double) -> (match: String?, seen: [String]) {
        var seen: [String] = []
        let until = ContinuousClock.now + .clampedSeconds(seconds)
        var nextMark = ContinuousClock.now
        repeat {
            if ContinuousClock.now >= nextMark { endOpenMessage(); nextMark = ContinuousClock.now + .milliseconds(200) }
            let fresh = newMessages().filter { !$0.contains(KernelLog.mark) }
            seen += fresh
            if let match = fresh.first(where: { message in alternatives.contains { message.contains($0) } }) { return (match, seen) }
            usleep(20_000)
        } while ContinuousClock.now < until
        return (nil, seen)
    }
}
