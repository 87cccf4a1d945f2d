import Glibc
import Synchronization

/// The signal that asked us to stop (SIGINT, SIGTERM, SIGHUP or SIGPIPE), or 0.
let stopSignal = Atomic<Int32>(0)

/// The signals that stop `attach` cleanly: SIGINT, SIGTERM, SIGHUP, and SIGPIPE (standard output
/// piped into a reader that went away, as `vhostctl attach … | head -1`).
let stopSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGPIPE]

/// Installs handlers for `stopSignals` that only record the signal; the event loop polls with a
/// timeout, sees it and shuts down cleanly (detach backends, finish the pcap, remove the tap).
/// With SIGPIPE handled, a write to the closed pipe fails with EPIPE instead of killing the
/// process, and what is printed after it is lost, nothing more. Call it before anything is created.
func installStopHandlers() {
    let handler: @convention(c) (Int32) -> Void = { signal in stopSignal.store(signal, ordering: .relaxed) }
    var action = sigaction()
    action.__sigaction_handler.sa_handler = handler
    sigemptyset(&action.sa_mask)
    action.sa_flags = 0 // no SA_RESTART: poll returns EINTR at once
    for signal in stopSignals { sigaction(signal, &action, nil) }
}

/// For every command: a closed standard output makes writes fail with EPIPE instead of killing
/// the process half-way through writing a file (`attach` records SIGPIPE instead, to stop).
func ignoreBrokenPipes() {
    signal(SIGPIPE, SIG_IGN)
}

var stopRequested: Bool { stopSignal.load(ordering: .relaxed) != 0 }
