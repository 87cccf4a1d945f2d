import SystemPackage
import Vhost
import Virtio

/// Why a script's command failed when it ran, by kind: the CLI maps `.limit` to exit status 64
/// (the script asks for more than the tool allows, like a parse error) and every other kind
/// to 1 (the run did not do what the script expected).
public enum ScriptError: Error, Equatable, CustomStringConvertible {
    /// A value from a variable, or the repeat iterations of the run, above a limit of the tool.
    case limit(String)
    /// `$x+N` or `$x-N` left the 64-bit range, or a variable's value does not fit its parameter.
    case outOfRange(String)
    /// The command needs what an earlier one makes: an open device, guest memory, a ring, a
    /// tap, an eventfd, a dirty log.
    case missingPrerequisite(String)
    /// Guest memory has no room for what was asked, or a guest-physical address lies outside it.
    case outOfGuestMemory(String)
    /// A value the command cannot take (from a variable; literals are checked when parsing).
    case invalidValue(String)
    /// The command waited and what it waited for did not come.
    case timeout(String)
    /// A frame was lost, duplicated, reordered or corrupted on its way.
    case frameMismatch(String)
    /// The device broke the virtio protocol on a vring; the ring carries nothing more until
    /// `ring` lays it out again.
    case brokenRing(VringIndex, RingBreak)
    /// An IOTLB update whose `uaddr` range is not mapped for the device: refused before the write.
    case refusedMessage(IOTLBMessage, reason: String)
    /// The device or a system call failed: an ioctl's errno, a request refused before the
    /// ioctl (`VhostError.refused`), a tap that could not be made.
    case device(VhostError)
    /// The chosen device cannot do this (the in-process device has no IOTLB and no node to open).
    case unsupported(String)
    /// The script asked for what a script may not do unless the command line allows it
    /// (docs/security.md, "Scripts as input"): open a file that is not a vhost device, attach
    /// to a tap it did not create. The message names the rule and the option that allows it.
    case notAllowed(String)

    public var description: String {
        switch self {
        case .limit(let text), .outOfRange(let text), .missingPrerequisite(let text), .outOfGuestMemory(let text),
             .invalidValue(let text), .frameMismatch(let text), .unsupported(let text), .notAllowed(let text):
            text
        case .timeout(let text): "timed out: \(text)"
        case .brokenRing(let index, let cause): "vring \(index) is broken: \(cause)"
        case .refusedMessage(let message, let reason): "\(message) refused before the write: \(reason)"
        case .device(let error): error.description
        }
    }

    /// Whether the failure is a limit of the tool (exit status 64) rather than a run failure (1).
    public var isLimit: Bool {
        if case .limit = self { return true }
        return false
    }

    /// The errno behind the failure, for `expect ERRNO`: an ioctl's or a system call's, or
    /// ETIMEDOUT for a wait that timed out. A request refused before the ioctl has none: the
    /// kernel never saw it.
    public var errno: Errno? {
        switch self {
        case .device(let error): error.errno
        case .timeout: .timedOut
        default: nil
        }
    }
}

/// How a device broke a ring's protocol, as the driver found it.
public enum RingBreak: Equatable, Sendable, CustomStringConvertible {
    /// The driver's check of the used ring failed (an id out of range or not in flight, …).
    case violation(RingViolation)
    /// A used entry names a head that holds no buffer of the script's.
    case headWithoutBuffer(UInt32)

    public var description: String {
        switch self {
        case .violation(let violation): "the device broke the virtio protocol (\(violation))"
        case .headWithoutBuffer(let head): "a used entry names head \(head), which holds no buffer of ours"
        }
    }
}

extension VhostError {
    /// The errno behind the error, for `expect ERRNO`: an ioctl's, or a system call's.
    var errno: Errno? {
        switch self {
        case .ioctl(let failure): failure.errno
        case .system(_, _, let errno), .permissionDenied(_, let errno): errno
        case .deviceMissing: .noSuchFileOrDirectory
        case .timeout: .timedOut
        default: nil
        }
    }
}
