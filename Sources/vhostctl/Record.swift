import ArgumentParser
import Glibc
import Vhost
import VhostScript

/// `--record FILE`, shared by attach, demo, bench and script.
struct RecordOptions: ParsableArguments {
    @Option(name: .customLong("record"), help: ArgumentHelp(
        "Write every vhost ioctl and ring operation this command makes to FILE, as a script that `vhostctl script run FILE` replays, comparing the kernel's answers.",
        valueName: "file"), completion: CompletionHints.scriptFiles)
    var path: String?

    func validate() throws {
        if let path { try OutputFile.check(path, option: "--record") }
    }

    /// A recorder when `--record` was given.
    func makeRecorder() -> ScriptRecorder? { path == nil ? nil : ScriptRecorder() }

    /// The ioctl observer for `--trace` and `--record` together.
    static func observer(_ common: CommonOptions, _ recorder: ScriptRecorder?) -> IoctlObserver? {
        switch (common.observer, recorder?.ioctlObserver) {
        case (nil, nil): return nil
        case (let one?, nil), (nil, let one?): return one
        case (let trace?, let record?): return { event in trace(event); record(event) }
        }
    }

    /// Writes the recording (also after a failure, which is often what one wants to replay).
    func save(_ recorder: ScriptRecorder?, command: String) {
        guard let recorder, let path else { return }
        let header = """
        Recorded by `vhostctl \(command)` on kernel \(KernelInfo.release()).
        Replay with: vhostctl script run \(path)
        The kernel's answers are the expectations; a replay stops at the first that differs.
        """
        let text = recorder.script(header: header)
        do {
            try OutputFile.write(text, to: path)
            var line = "recorded \(text.split(separator: "\n").count) lines to \(path)\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        } catch {
            var line = "vhostctl: error: --record \(path): cannot write it (\(error)); nothing was recorded\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
    }
}
