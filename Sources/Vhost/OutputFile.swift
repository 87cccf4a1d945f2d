import CVhost
import Glibc
import SystemPackage

/// A file the tools write (a capture, a recording, a report), written so that nobody can make it
/// write elsewhere and nobody reads a half-written file:
///
/// - it is created under a temporary name in the target directory with
///   `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600, and renamed to its name by `commit()` after an
///   fsync, so a partial file never carries the final name;
/// - an existing file at the final name is refused unless `replacingExisting`, and a symbolic
///   link there is refused always (a link planted after the check is replaced by `rename(2)`,
///   which acts on the name and never follows it);
/// - with `creatingAs`, the temporary file is created as that user (effective ids switched for
///   the call): the kernel then checks that user's right to create, and later rename, in the
///   directory, and the file is theirs: what a process that drops to that user needs;
/// - everything after the open is relative to a descriptor of the directory taken at the start,
///   so a directory swapped afterwards does not redirect the rename;
/// - without `commit()` (an error, a failed set-up) the temporary file is removed when the
///   object goes away (`deinit`) or at `discard()`.
public final class OutputFile {
    /// Where the file is being written and what became of it.
    public enum State: Sendable, Equatable {
        /// Being written under `temporaryPath`.
        case open
        /// Renamed to `path`.
        case committed
        /// Removed: never committed.
        case discarded
        /// Complete, but left under `temporaryPath`: the rename to `path` failed.
        case keptUnderTemporaryName
    }

    /// The final name, as given.
    public let path: String
    /// Where the data is until `commit()`: a hidden name beside `path`, with the pid in it.
    public let temporaryPath: String
    /// Whether an existing regular file at `path` may be replaced.
    public let replacesExisting: Bool
    public private(set) var state: State = .open
    /// Bytes written so far.
    public private(set) var bytesWritten = 0

    private let directory: Int32
    private let directoryCanSync: Bool
    private let finalName: String
    private let temporaryName: String
    private var fd: Int32

    /// Creates the temporary file for `path`. Throws `VhostError.unwritableFile` with one line
    /// saying what is wrong: a symbolic link or (without `replacingExisting`) a file at `path`, a
    /// missing or unwritable directory, or a name that is a directory.
    public init(path: String, replacingExisting: Bool = false, creatingAs user: UserIdentity? = nil) throws(VhostError) {
        let (directoryPath, name) = try OutputFile.split(path)
        if let refusal = OutputFile.refusal(path: path, replacingExisting: replacingExisting, user: user) {
            throw .unwritableFile(path: path, problem: refusal.problem, errno: refusal.errno)
        }
        var canSync = true
        var directory = open(directoryPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory < 0 && Glibc.errno == EACCES {
            // A directory one may write but not list: an O_PATH descriptor still anchors the
            // *at calls, but cannot be fsynced.
            directory = open(directoryPath, CVHOST_O_PATH | O_DIRECTORY | O_CLOEXEC)
            canSync = false
        }
        guard directory >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            throw .unwritableFile(path: path, problem: errno == .noSuchFileOrDirectory ? "cannot be created: the folder \(directoryPath) does not exist"
                                                                                         : "cannot be created: the folder \(directoryPath) cannot be opened", errno: errno)
        }
        // The temporary name: hidden, beside the final one, naming this process; at most 255 bytes.
        let stem = String(decoding: name.utf8.prefix(180), as: UTF8.self)
        var created: (fd: Int32, name: String)? = nil
        var lastError = Errno(rawValue: EEXIST)
        for _ in 0..<8 where created == nil {
            let candidate = ".\(stem).vhostctl-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
            let opened: Int32 = try (user ?? UserIdentity(name: "", uid: geteuid(), gid: getegid(), groups: [])).asEffectiveUser { () throws(VhostError) -> Int32 in
                openat(directory, candidate, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            }
            if opened >= 0 { created = (opened, candidate) } else { lastError = Errno(rawValue: Glibc.errno); if lastError != .fileExists { break } }
        }
        guard let created else {
            close(directory)
            let who = user.map { " as \($0.name) (uid \($0.uid)), the user this process runs as after set-up" } ?? ""
            throw .unwritableFile(path: path, problem: "cannot be created in \(directoryPath)\(who); give a path in a folder \(user?.name ?? "you") can write", errno: lastError)
        }
        // The umask may have taken bits off; 0600 exactly, whatever it is.
        _ = fchmod(created.fd, 0o600)
        self.path = path
        self.replacesExisting = replacingExisting
        self.directory = directory
        self.directoryCanSync = canSync
        self.finalName = name
        self.temporaryName = created.name
        self.temporaryPath = directoryPath == "." && !path.hasPrefix("./") ? created.name : (directoryPath == "/" ? "/" : directoryPath + "/") + created.name
        self.fd = created.fd
    }

    deinit {
        if state == .open { discard() }
        close(directory)
    }

    /// Appends `bytes` (all of them: a short write is continued, EINTR retried).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(VhostError) {
        guard state == .open, fd >= 0 else { throw .invalidState("\(path) is no longer being written (\(state))") }
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw .unwritableFile(path: path, problem: "writing \(temporaryPath) failed", errno: Errno(rawValue: Glibc.errno))
            }
            offset += n
        }
        bytesWritten += bytes.count
    }

    /// Appends `bytes`.
    public func write(_ bytes: [UInt8]) throws(VhostError) {
        let outcome: Result<Void, VhostError> = bytes.withUnsafeBytes { buffer in
            do throws(VhostError) { try write(buffer); return .success(()) } catch { return .failure(error) }
        }
        try outcome.get()
    }

    /// Appends `text` as UTF-8.
    public func write(_ text: String) throws(VhostError) { try write(Array(text.utf8)) }

    /// Makes the file durable (fsync), closes it and renames it to `path`: without
    /// `replacesExisting` with `RENAME_NOREPLACE` (or link and unlink where the file system lacks
    /// it), so a file that appeared meanwhile is never replaced. When the rename fails the complete
    /// file stays under `temporaryPath` and the error says so.
    public func commit() throws(VhostError) {
        guard state == .open else { throw .invalidState("\(path) cannot be committed: \(state)") }
        if fsync(fd) != 0 {
            throw .unwritableFile(path: path, problem: "the data cannot be flushed to disk (fsync)", errno: Errno(rawValue: Glibc.errno))
        }
        close(fd)
        fd = -1
        var rc: Int32
        if replacesExisting {
            rc = renameat(directory, temporaryName, directory, finalName) == 0 ? 0 : -Glibc.errno
        } else {
            rc = cvhost_rename_noreplace(directory, temporaryName, directory, finalName)
            if rc == -EINVAL {
                // No RENAME_NOREPLACE here (fs/namei.c do_renameat2 answers EINVAL for a file
                // system without it): link(2) fails with EEXIST as well and never replaces.
                rc = linkat(directory, temporaryName, directory, finalName, 0) == 0 ? 0 : -Glibc.errno
                if rc == 0 { _ = unlinkat(directory, temporaryName, 0) }
            }
        }
        guard rc == 0 else {
            state = .keptUnderTemporaryName
            let errno = Errno(rawValue: -rc)
            let why = errno == .fileExists ? "a file appeared at that name while it was being written" : "the rename failed"
            throw .unwritableFile(path: path, problem: "\(why); the complete file is kept as \(temporaryPath)", errno: errno)
        }
        if directoryCanSync { _ = fsync(directory) }
        state = .committed
    }

    /// Closes and removes the temporary file (nothing is left under either name).
    public func discard() {
        guard state == .open else { return }
        if fd >= 0 { close(fd); fd = -1 }
        _ = unlinkat(directory, temporaryName, 0)
        state = .discarded
    }

    /// Writes `text` to `path` whole: create, write, commit.
    public static func write(_ text: String, to path: String, replacingExisting: Bool = false) throws(VhostError) {
        let file = try OutputFile(path: path, replacingExisting: replacingExisting)
        try file.write(text)
        try file.commit()
    }

    /// Why `path` cannot be written, or nil: for a check before anything is set up. The same
    /// refusals as `init` (symbolic link, existing file, not a regular file, a folder that is
    /// missing or not writable), without creating anything.
    public static func problem(path: String, replacingExisting: Bool = false) -> String? {
        do throws(VhostError) {
            let (directory, _) = try split(path)
            if let refusal = refusal(path: path, replacingExisting: replacingExisting, user: nil) { return refusal.problem }
            guard access(directory, W_OK | X_OK) == 0 else {
                return Glibc.errno == ENOENT ? "cannot be created: the folder \(directory) does not exist"
                                             : "cannot write in \(directory); give a path in a writable directory"
            }
            return nil
        } catch {
            if case .unwritableFile(_, let problem, _) = error { return problem }
            return "\(error)"
        }
    }

    /// The folder and the file name of `path`.
    private static func split(_ path: String) throws(VhostError) -> (directory: String, name: String) {
        guard !path.isEmpty, !path.utf8.contains(0) else { throw .unwritableFile(path: path, problem: "an empty name; give a file name", errno: nil) }
        let directory: String, name: String
        if let slash = path.lastIndex(of: "/") {
            let folder = String(path[..<slash])
            directory = folder.isEmpty ? "/" : folder
            name = String(path[path.index(after: slash)...])
        } else {
            directory = "."
            name = path
        }
        guard !name.isEmpty, name != ".", name != ".." else {
            throw .unwritableFile(path: path, problem: "names a folder, not a file; give a file name", errno: nil)
        }
        return (directory, name)
    }

    /// What stands at `path` against writing it: a symbolic link (dangling or not), an existing
    /// file without `replacingExisting`, something that is not a regular file, or (for `user`) a
    /// file in a sticky folder that user could not replace.
    private static func refusal(path: String, replacingExisting: Bool, user: UserIdentity?) -> (problem: String, errno: Errno?)? {
        var status = stat()
        guard lstat(path, &status) == 0 else { return nil }
        let type = status.st_mode & S_IFMT
        if type == S_IFLNK {
            return ("is a symbolic link; output files are never written through one, not even with --force: remove it or choose another name", .fileExists)
        }
        guard replacingExisting else { return ("already exists; pass --force to replace it, or choose another name", .fileExists) }
        guard type == S_IFREG else { return ("exists and is not a regular file; choose another name", .fileExists) }
        if let user, !user.isRoot, status.st_uid != user.uid {
            // fs/namei.c may_delete → check_sticky: in a sticky folder only the file's or the
            // folder's owner may replace it (CAP_FOWNER aside, which the dropped process lacks).
            let folder = path.lastIndex(of: "/").map { String(path[..<$0]) }.map { $0.isEmpty ? "/" : $0 } ?? "."
            var folderStatus = stat()
            if stat(folder, &folderStatus) == 0, folderStatus.st_mode & S_ISVTX != 0, folderStatus.st_uid != user.uid {
                return ("is owned by uid \(status.st_uid) in the sticky folder \(folder): \(user.name) (uid \(user.uid)), the user this process runs as after set-up, could not replace it; remove it or choose another name", .notPermitted)
            }
        }
        return nil
    }
}
