import CVhost
import SystemPackage

/// One ioctl as it happened, for `--trace`: the request's name, its decoded arguments and
/// the result (the return value, or the errno).
public struct IoctlEvent: Sendable, CustomStringConvertible {
    public var name: String
    public var arguments: String
    public var result: Result<Int32, Errno>

    public var description: String {
        switch result {
        case .success(let value): return "\(name)(\(arguments)) = \(value)"
        case .failure(let errno): return "\(name)(\(arguments)) = -\(errno.name)"
        }
    }
}

/// Receives every ioctl the library issues.
public typealias IoctlObserver = @Sendable (IoctlEvent) -> Void

/// The one place where ioctls are issued: runs `body` (a CVhost wrapper returning 0 or -errno),
/// reports the event to `observer`, traps on EFAULT/EBADF (our bugs: a bad pointer or a closed
/// fd), and throws every other errno as `VhostError.ioctl` naming the request and its arguments.
/// `faultsAreBugs: false` is for `vhostctl script`, where a user's sequence may earn an EFAULT
/// that is then reported like any other errno.
@discardableResult
func performIoctl(_ name: String, _ arguments: @autoclosure () -> String, observer: IoctlObserver?,
                  faultsAreBugs: Bool = true, _ body: () -> Int32) throws(VhostError) -> Int32 {
    let rc = body()
    let result: Result<Int32, Errno> = rc < 0 ? .failure(Errno(rawValue: -rc)) : .success(rc)
    observer?(IoctlEvent(name: name, arguments: arguments(), result: result))
    guard rc < 0 else { return rc }
    let errno = Errno(rawValue: -rc)
    if faultsAreBugs && (errno == .badAddress || errno == .badFileDescriptor) {
        // fatalError (unlike precondition) keeps its message in release builds.
        fatalError("\(name)(\(arguments())) returned \(errno.name): a bad pointer, an unset ring or a closed fd is a bug in swift-vhost")
    }
    throw .ioctl(IoctlFailure(name: name, arguments: arguments(), errno: errno))
}

func hex(_ value: some BinaryInteger) -> String { "0x" + String(value, radix: 16) }
