// The libFuzzer driver of the targets in FuzzTargets, one binary for all of them.
//
// Built by Scripts/fuzz with `--sanitize=fuzzer -Xswiftc -DVHOST_FUZZ`: libFuzzer supplies
// `main`, calls LLVMFuzzerInitialize once (which picks the target named by $VHOST_FUZZ_TARGET)
// and LLVMFuzzerTestOneInput for every input. Built without VHOST_FUZZ (as `swift build` does),
// it replays files instead: `vhost-fuzz TARGET FILE|DIR...` feeds each file to the target, to
// reproduce a crasher under a debugger without the fuzzer.
import FuzzTargets
import Glibc

/// Writes one line to standard error (fd 2: Glibc's `stderr` is shared mutable state to Swift 6).
func printError(_ line: String) {
    var text = line + "\n"
    text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

#if VHOST_FUZZ
nonisolated(unsafe) var selectedTarget: FuzzTarget? = nil

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    let names = FuzzTargets.all.map(\.name).joined(separator: ", ")
    guard let name = getenv("VHOST_FUZZ_TARGET").map({ String(cString: $0) }) else {
        printError("vhost-fuzz: set VHOST_FUZZ_TARGET to one of \(names) (Scripts/fuzz does)")
        exit(64)
    }
    guard let target = FuzzTargets.named(name) else {
        printError("vhost-fuzz: no target \(name): the targets are \(names)")
        exit(64)
    }
    selectedTarget = target
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    // SAFETY: libFuzzer hands `size` readable bytes at `data`, valid for the call.
    let bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
    let broken = selectedTarget?.brokenPromises(bytes) ?? []
    // A broken promise is a finding: stop the way a crash does, so that libFuzzer keeps the input.
    if !broken.isEmpty { printError(broken.joined(separator: "\n")); abort() }
    return 0
}
#else
@main
struct ReplayCorpus {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        let names = FuzzTargets.all.map(\.name).joined(separator: ", ")
        guard arguments.count >= 2, let target = FuzzTargets.named(arguments[0]) else {
            printError("usage: vhost-fuzz TARGET FILE|DIR... (TARGET: \(names)); Scripts/fuzz builds the fuzzer itself")
            exit(64)
        }
        var count = 0
        for path in arguments.dropFirst() {
            for file in files(at: path) {
                guard let bytes = CorpusFiles.contents(of: file) else {
                    printError("vhost-fuzz: cannot read \(file)")
                    exit(66)
                }
                let broken = bytes.withUnsafeBytes { target.brokenPromises($0) }
                if !broken.isEmpty {
                    printError("vhost-fuzz: \(file): " + broken.joined(separator: "; "))
                    exit(1)
                }
                count += 1
            }
        }
        print("vhost-fuzz: \(target.name): \(count) inputs ran")
    }

    /// The files in `path` (one level), or `path` itself when it is no directory.
    static func files(at path: String) -> [String] {
        CorpusFiles.names(in: path).map { $0.map { path + "/" + $0 } } ?? [path]
    }
}
#endif
