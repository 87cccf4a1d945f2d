import Vhost
import VhostScript

/// Which commands of the script language ran, and did what their script expected, in the
/// scripts a program ran through `runner(options:output:)`: the kernel tier runs every script
/// (shipped and inline) through one record, and its last test fails for each command of
/// `ScriptCommands.all` that never ran.
///
/// A command counts when a line of it ran and its outcome was the expected one (success, or the
/// errno its `expect` named): a line that only parsed, never ran (after a failure, inside a
/// `repeat 0`), or missed its expectation does not.
public final class ScriptCoverage: Sendable {
    private struct State {
        var counts: [String: Int] = [:]
        var runners = 0
    }

    private let state = Locked(State())

    public init() {}

    /// A runner with `options` whose every command line is recorded here as well as told to
    /// any `commandObserver` the options already have.
    public func runner(options: ScriptRunner.Options = ScriptRunner.Options(), output: @escaping (String) -> Void) -> ScriptRunner {
        var options = options
        let previous = options.commandObserver
        let state = self.state
        options.commandObserver = { run in
            previous?(run)
            if run.asExpected { state.withLock { $0.counts[run.command, default: 0] += 1 } }
        }
        state.withLock { $0.runners += 1 }
        return ScriptRunner(options: options, output: output)
    }

    /// How many lines of each command ran as expected.
    public var counts: [String: Int] { state.withLock { $0.counts } }

    /// How many runners this record made (one per script run).
    public var runners: Int { state.withLock { $0.runners } }

    /// The commands of `ScriptCommands.all` that never ran as expected, in the table's order.
    public var missing: [String] {
        let counts = self.counts
        return ScriptCommands.all.map(\.name).filter { counts[$0] == nil }
    }
}
