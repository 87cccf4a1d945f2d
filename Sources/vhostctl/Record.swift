import ArgumentParser
import Glibc
import Vhost
import VhostScript

/// `--record FILE`, shared by attach, demo, bench and script, with `--force`.
struct RecordOptions: ParsableArguments {
    @Option(name: .customLong("record"), help: ArgumentHelp(
        "Write every vhost ioctl and ring operation this command makes to FILE, as a script that `vhostctl script run FILE` replays, comparing the kernel's answers.",
        valueName: "file"), completion: CompletionHints.scriptFiles)
    var path: String?

    @OptionGroup var output: OutputOptions

    func validate() throws {
        if let path { try output.check(path, option: "--record") }
    }

    /// A recorder when `--record` was given.
    func makeRecorder() -> ScriptRecorder? { path == nil ? nil : ScriptRecorder() }

    /// Creates the recording's file now, before anything is set up (and, for `attach`, before the
    /// privilege drop: as `user`, the user it will run as), so that it is written at the end
    /// through the descriptor opened here. Nil without `--record`.
    func openFile(creatingAs user: UserIdentity? = nil) throws -> OutputFile? {
        try path.map { path in try output.create(path, option: "--record", creatingAs: user) }
    }

    /// The ioctl observer for `--trace` and `--record` together.
    static func observer(_ common: CommonOptions, _ recorder: ScriptRecorder?) -> IoctlObserver? {
        switch (common.observer, recorder?.ioctlObserver) {
        case (nil, nil): return nil
        case (let one?, nil), (nil, let one?): return one
        case (let trace?, let record?): return { event in trace(event); record(event) }
        }
    }

    /// Writes the recording into `file` and renames it to its name (also after a failure, which
    /// is often what one wants to replay).
    func save(_ recorder: ScriptRecorder?, to file: OutputFile?, command: String) {
        guard let recorder, let file else { return }
        let header = """
        Recorded by `vhostctl \(command)` on kernel \(KernelInfo.release()).
        Replay with: vhostctl script run \(file.path)
        The kernel's answers are the expectations; a replay stops at the first that differs.
        """
        let text = recorder.script(header: header)
        do {
            try file.write(text)
            try file.commit()
            var line = "recorded \(text.split(separator: "\n").count) lines to \(file.path)\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        } catch {
            var line = "vhostctl: error: --record \(file.path): cannot write it (\(OutputOptions.problem(of: error))); nothing was recorded\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
    }
}
