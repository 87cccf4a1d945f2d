import Glibc

/// A value behind a POSIX mutex: the lock the model device, the emulated IOMMU, the script
/// runner and the test host sides share state under.
///
/// Why not `Synchronization.Mutex`: on Linux it locks with raw futex system calls inside the
/// (uninstrumented) standard library, so ThreadSanitizer sees no ordering between two critical
/// sections and reports every access inside them as a race. `pthread_mutex_lock` is intercepted
/// by the sanitizer, so the sanitizer tier of `Scripts/test` checks these sections for real.
public final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    /// Guards `value`.
    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        // SAFETY: a fresh allocation that never moves (a pthread mutex must not be copied);
        // default attributes cannot fail to initialise.
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
