import Glibc
import Vhost

/// `attach --control PATH`: a Unix stream socket speaking JSON lines (ControlProtocol.swift),
/// served from attach's event loop without blocking it: the listening socket and every client are
/// non-blocking, a request is at most `ControlCommand.maximumRequestLength` bytes, at most
/// `maximumClients` are connected at once, and a client that does not take its reply at once is
/// dropped. The socket is created before the privilege drop, mode 0600, owned by the user attach
/// runs as; a peer is served only when SO_PEERCRED says it is that user or the user who started
/// attach.
final class ControlServer {
    /// Clients connected at once; one more is told so and closed.
    static let maximumClients = 8

    let path: String
    private let listener: Int32
    /// The socket file's inode, so that exit removes only our own socket.
    private let inode: UInt64
    /// The uid that started attach (root, usually): it may always connect.
    private let startingUID: UInt32
    private struct Client { var fd: Int32; var buffer: [UInt8] }
    private var clients: [Client] = []

    /// Creates and listens on `path`, as root before the drop: mode 0600, then owned by `owner`
    /// (nil: by the user attach is now). An existing path is refused unless it is a socket nobody
    /// listens on (left by a killed attach), which is replaced.
    init(path: String, owner: UserIdentity?) throws {
        self.path = path
        startingUID = getuid()
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else {
            throw CLIError(message: "--control \(path): a socket path must be 1 to \(capacity - 1) bytes", status: ExitStatus.usage)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            // SAFETY: bytes.count < the capacity of sun_path (checked above); the rest stays zero.
            raw.copyBytes(from: bytes)
        }
        try ControlServer.removeStale(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlServer.failure(path, "socket") }
        // bind creates the file with 0777 less the umask: 0600 from the start, never wider.
        let oldMask = umask(0o177)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(oldMask)
        guard bound == 0 else { let error = ControlServer.failure(path, "bind"); Glibc.close(fd); throw error }
        var status = stat()
        // lchown: never follows a symbolic link swapped in meanwhile (the owner of a sticky
        // folder's entry is root's until then; nobody else can replace it).
        if let owner, lchown(path, owner.uid, owner.gid) != 0 || lstat(path, &status) != 0 {
            let error = ControlServer.failure(path, "chown"); unlink(path); Glibc.close(fd); throw error
        }
        if owner == nil, lstat(path, &status) != 0 { let error = ControlServer.failure(path, "stat"); unlink(path); Glibc.close(fd); throw error }
        guard listen(fd, 8) == 0 else { let error = ControlServer.failure(path, "listen"); unlink(path); Glibc.close(fd); throw error }
        listener = fd
        inode = UInt64(status.st_ino)
    }

    private static func failure(_ path: String, _ call: String) -> CLIError {
        CLIError(message: "--control \(path): \(call): \(String(cString: strerror(errno)))", status: ExitStatus.cannotCreate)
    }

    /// Refuses an existing `path` unless it is a socket that refuses connections (stale), which is removed.
    private static func removeStale(_ path: String) throws {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard (status.st_mode & S_IFMT) == S_IFSOCK else {
            throw CLIError(message: "--control \(path): exists and is not a socket; remove it or choose another path", status: ExitStatus.cannotCreate)
        }
        if let error = connectProblem(path), error == ECONNREFUSED {
            unlink(path)
            return
        }
        throw CLIError(message: "--control \(path): a socket that is listening already (another attach?); stop it or choose another path", status: ExitStatus.cannotCreate)
    }

    /// The errno of connecting to `path` (nil: it connected).
    static func connectProblem(_ path: String) -> Int32? {
        guard let fd = try? connectSocket(path) else { return errno }
        Glibc.close(fd)
        return nil
    }

    /// A blocking connection to the socket at `path` (the client's side).
    static func connectSocket(_ path: String) throws(ControlError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: address.sun_path), !bytes.contains(0) else { throw ControlError("\(path): not a socket path") }
        // SAFETY: bytes.count < the capacity of sun_path (checked above).
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let saved = errno
            Glibc.close(fd)
            errno = saved
            throw ControlError("\(path): cannot connect: \(String(cString: strerror(saved)))")
        }
        return fd
    }

    /// The descriptors to wake the event loop on (the listener: a new client wakes it).
    var descriptors: [Int32] { [listener] }

    /// Waits up to `milliseconds` for a client or a request (while the datapath is stopped).
    func wait(milliseconds: Int32) {
        var entries = ([listener] + clients.map(\.fd)).map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        _ = poll(&entries, nfds_t(entries.count), milliseconds)
    }

    /// When the next `serve` looks at the sockets (the coarse monotonic clock, in seconds).
    private var nextServe = 0.0
    /// How often `serve` looks: attach's event loop calls it on every pass, and in poll mode a
    /// pass is a spin of the datapath, which must not pay an accept and a recv per client each time.
    static let serveInterval = 0.01
    /// Where requests are read into, reused by every `serve`.
    private var receiveBuffer = [UInt8](repeating: 0, count: ControlCommand.maximumRequestLength)

    /// Accepts waiting clients and answers every complete request, never blocking: `handle`
    /// turns a parsed command into its reply. Looks at the sockets at most every `serveInterval`.
    func serve(_ handle: (ControlCommand) -> ControlReply) {
        // The coarse clock is read from the vDSO without a clock source read (MonotonicClock).
        let now = MonotonicClock.coarseSeconds()
        guard now >= nextServe else { return }
        nextServe = now + ControlServer.serveInterval
        acceptClients()
        var index = 0
        while index < clients.count {
            if serveClient(&clients[index], handle) { index += 1 } else { Glibc.close(clients[index].fd); clients.remove(at: index) }
        }
    }

    private func acceptClients() {
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            // Glibc's module has no accept4: the flags are set right after (attach runs no other thread that execs).
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (socket(7) SO_PEERCRED), which the
            // Glibc module leaves out (it needs _GNU_SOURCE).
            var credentials = PeerCredentials()
            var length = socklen_t(MemoryLayout<PeerCredentials>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0, length == socklen_t(MemoryLayout<PeerCredentials>.size) else {
                ControlServer.send(.failure("cannot read your credentials (SO_PEERCRED)"), to: fd); Glibc.close(fd); continue
            }
            // Only the user attach runs as and the one who started it (root) may steer it.
            guard credentials.uid == getuid() || credentials.uid == startingUID else {
                ControlServer.send(.failure("permission denied: uid \(credentials.uid) may not use this control socket (only uid \(getuid()) and uid \(startingUID))"), to: fd)
                Glibc.close(fd); continue
            }
            guard clients.count < ControlServer.maximumClients else {
                ControlServer.send(.failure("too many clients (\(ControlServer.maximumClients)); try again"), to: fd); Glibc.close(fd); continue
            }
            clients.append(Client(fd: fd, buffer: []))
        }
    }

    /// Reads what the client sent and answers its complete lines; false when it is to be closed.
    private func serveClient(_ client: inout Client, _ handle: (ControlCommand) -> ControlReply) -> Bool {
        var open = true
        while true {
            let n = receiveBuffer.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                client.buffer.append(contentsOf: receiveBuffer[0..<n])
                // Answer every complete line; an over-long request is answered and the client closed.
                while let newline = client.buffer.firstIndex(of: 10) {
                    let line = client.buffer[..<newline]
                    let reply: ControlReply
                    do { reply = handle(try ControlCommand.parse(line: line)) } catch { reply = .failure(error.reason) }
                    client.buffer.removeSubrange(...newline)
                    guard ControlServer.send(reply, to: client.fd) else { return false }
                }
                if client.buffer.count >= ControlCommand.maximumRequestLength {
                    ControlServer.send(.failure("request longer than \(ControlCommand.maximumRequestLength) bytes"), to: client.fd)
                    return false
                }
                continue
            }
            if n == 0 { open = false }                    // the client closed its end
            else if errno == EINTR { continue }
            else if errno != EAGAIN && errno != EWOULDBLOCK { open = false }
            break
        }
        return open
    }

    /// Sends a reply whole without blocking (MSG_NOSIGNAL: a gone client is no SIGPIPE); false
    /// when it could not (the client then is closed).
    @discardableResult
    private static func send(_ reply: ControlReply, to fd: Int32) -> Bool {
        let bytes = Array(reply.line.utf8)
        let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
        return sent == bytes.count
    }

    /// socket(7)'s struct ucred, field for field.
    private struct PeerCredentials { var pid: Int32 = 0; var uid: UInt32 = 0; var gid: UInt32 = 0 }

    /// Closes every client and the listener and removes the socket file when it is still ours.
    func close() {
        for client in clients { Glibc.close(client.fd) }
        clients = []
        Glibc.close(listener)
        var status = stat()
        if lstat(path, &status) == 0, UInt64(status.st_ino) == inode, (status.st_mode & S_IFMT) == S_IFSOCK {
            if unlink(path) != 0 { printDiagnostic("vhostctl: warning: --control \(path): cannot remove the socket (\(String(cString: strerror(errno)))); the next attach replaces it") }
        }
    }
}
