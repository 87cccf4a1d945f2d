import CVhost
import Glibc
import SystemPackage

/// A pipe whose ends are both close-on-exec from the start (pipe2 with O_CLOEXEC), so that no
/// program this process or another of its threads executes meanwhile inherits either end. Used
/// as a lifeline: the reader sees end-of-file exactly when every writer has closed or died.
public enum ProcessPipe {
    /// Creates the pipe; returns its read and write ends. Throws `VhostError.system` (pipe2).
    public static func make() throws(VhostError) -> (read: Int32, write: Int32) {
        var ends: [Int32] = [-1, -1]
        let rc = cvhost_pipe_cloexec(&ends)
        guard rc == 0 else { throw .system(call: "pipe2", detail: "O_CLOEXEC", errno: Errno(rawValue: -rc)) }
        return (ends[0], ends[1])
    }
}
