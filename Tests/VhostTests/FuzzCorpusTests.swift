import FuzzTargets
import Glibc
import Testing

/// The repository's Fuzz/corpus/, from this file's path.
private let corpusDirectory: String = {
    var path = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    path.removeLast(3)  // Tests/VhostTests/FuzzCorpusTests.swift
    return path.joined(separator: "/") + "/Fuzz/corpus"
}()

/// The names in a directory, hidden ones aside, sorted (none when it is missing).
private func entries(_ directory: String) -> [String] { CorpusFiles.names(in: directory) ?? [] }

private func contents(_ path: String) -> [UInt8]? { CorpusFiles.contents(of: path) }

/// The short fuzzing run of CI: every seed and every crasher the campaigns kept (Fuzz/corpus/<target>/)
/// goes through its target as libFuzzer would feed it, with the target's own checks; a crash,
/// a trap or a broken promise fails the unit tier. The campaigns themselves run by hand
/// (`Scripts/fuzz`): the instrumented build alone takes longer than CI can spend.
@Suite("Fuzz corpus: every kept input of each campaign, replayed through its target")
struct FuzzCorpusTests {
    @Test("each target has its corpus folder with seeds, and each folder names a target")
    func corpusLayout() {
        let folders = entries(corpusDirectory)
        #expect(Set(folders) == Set(FuzzTargets.all.map(\.name)), "Fuzz/corpus holds \(folders)")
        for target in FuzzTargets.all {
            #expect(entries(corpusDirectory + "/" + target.name).count >= 3, "Fuzz/corpus/\(target.name) has fewer than 3 seeds")
        }
    }

    @Test("regression: the script campaign's timeout (includes re-reading a text of unknown words) parses in under a second: no message is built past the 100 reported")
    func scriptTimeoutRegression() throws {
        let target = try #require(FuzzTargets.named("script"))
        let bytes = try #require(contents(corpusDirectory + "/script/timeout-suggestions-past-100-problems.vhost"))
        var clock = timespec()
        clock_gettime(CLOCK_MONOTONIC, &clock)
        let start = Double(clock.tv_sec) + Double(clock.tv_nsec) / 1e9
        #expect(bytes.withUnsafeBytes { target.brokenPromises($0) } == [])
        clock_gettime(CLOCK_MONOTONIC, &clock)
        let seconds = Double(clock.tv_sec) + Double(clock.tv_nsec) / 1e9 - start
        #expect(seconds < 1, "one parse took \(seconds) s")
    }

    @Test("every corpus file runs through its target without a crash or a broken promise", arguments: FuzzTargets.all.map(\.name))
    func replay(target name: String) throws {
        let target = try #require(FuzzTargets.named(name))
        let files = entries(corpusDirectory + "/" + name)
        for file in files {
            let bytes = try #require(contents(corpusDirectory + "/" + name + "/" + file), "cannot read \(file)")
            #expect(bytes.withUnsafeBytes { target.brokenPromises($0) } == [], "\(name)/\(file)")
            // Four prefixes too, the way a truncated input reaches the parser.
            for cut in stride(from: 0, to: bytes.count, by: max(1, bytes.count / 4)) {
                #expect(bytes.withUnsafeBytes { target.brokenPromises(UnsafeRawBufferPointer(rebasing: $0.prefix(cut))) } == [], "\(name)/\(file), \(cut) bytes")
            }
        }
    }
}
