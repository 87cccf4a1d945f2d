import Glibc
import Synchronization

/// The signal that asked us to stop (SIGINT, SIGTERM or SIGHUP), or 0.
let stopSignal = Atomic<Int32>(0)

/// Installs SIGINT, SIGTERM and SIGHUP handlers that only record the signal; the event loop polls with
/// a timeout, sees it and shuts down cleanly (detach backends, flush pcap, remove the tap).
func installStopHandlers() {
    let handler: @convention(c) (Int32) -> Void = { signal in stopSignal.store(signal, ordering: .relaxed) }
    var action = sigaction()
    action.__sigaction_handler.sa_handler = handler
    sigemptyset(&action.sa_mask)
    action.sa_flags = 0 // no SA_RESTART: poll returns EINTR at once
    sigaction(SIGINT, &action, nil)
    sigaction(SIGTERM, &action, nil)
    sigaction(SIGHUP, &action, nil)
}

var stopRequested: Bool { stopSignal.load(ordering: .relaxed) != 0 }
