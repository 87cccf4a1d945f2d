import Glibc

/// A POSIX thread running one closure, joined with `join()`. The in-process device's worker and
/// the host sides of tests run on these (no Foundation in the static binaries).
public final class WorkerThread: @unchecked Sendable {
    private var handle: pthread_t?

    /// Starts `body` on a new thread.
    public init(_ body: @escaping @Sendable () -> Void) {
        final class Box: @unchecked Sendable { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
        let context = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
        if rc == 0 {
            handle = thread
        } else {
            // No thread: run it here rather than lose it (never seen; pthread_create fails only
            // when the process is out of threads or memory).
            Unmanaged<Box>.fromOpaque(context).takeRetainedValue().body()
        }
    }

    /// Waits for the thread to finish (once).
    public func join() {
        guard let handle else { return }
        pthread_join(handle, nil)
        self.handle = nil
    }
}
