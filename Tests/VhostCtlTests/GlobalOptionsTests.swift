import ArgumentParser
import Glibc
import Testing
@testable import vhostctl

/// The global options (`--verbose`, `--quiet`, `--trace`, `--version`) are accepted before and
/// after the subcommand, and mean the same in both places.
@Suite struct GlobalOptionsTests {
    /// Parses a command line the way `vhostctl`'s main does and returns the command it chose.
    private func parse<Command: ParsableCommand>(_ arguments: [String], as: Command.Type) throws -> Command {
        let parsed = try VhostCtl.parseAsRoot(arguments)
        return try #require(parsed as? Command, "\(arguments) parsed as \(type(of: parsed)), not \(Command.self)")
    }

    @Test(arguments: [["--trace", "info"], ["info", "--trace"]])
    func traceIsGlobal(arguments: [String]) throws {
        let info = try parse(arguments, as: Info.self)
        #expect(info.common.trace)
        #expect(!info.common.verbose && !info.common.quiet)
    }

    @Test(arguments: [["--verbose", "bench", "backends"], ["bench", "backends", "--verbose"], ["-v", "bench", "backends"], ["bench", "backends", "-v"]])
    func verboseIsGlobal(arguments: [String]) throws {
        let bench = try parse(arguments, as: BenchBackends.self)
        #expect(bench.common.verbose)
        #expect(bench.common.makeLogger().logLevel == .debug)
    }

    @Test(arguments: [["--quiet", "migrate-test"], ["migrate-test", "--quiet"], ["-q", "script", "run", "x.vhost"], ["script", "run", "x.vhost", "-q"]])
    func quietIsGlobal(arguments: [String]) throws {
        let command = try VhostCtl.parseAsRoot(arguments)
        let common: CommonOptions
        switch command {
        case let test as MigrateTest: common = test.common
        case let run as ScriptRun: common = run.common
        default: Issue.record("\(arguments) parsed as \(type(of: command))"); return
        }
        #expect(common.quiet)
        #expect(common.makeLogger().logLevel == .error)
    }

    /// Without a flag the log stays at its default level, wherever the subcommand is.
    @Test func noFlagsMeansDefaults() throws {
        let info = try parse(["info"], as: Info.self)
        #expect(!info.common.trace && !info.common.verbose && !info.common.quiet)
        #expect(info.common.makeLogger().logLevel == .info)
    }

    /// Flags before and after the subcommand add up (each position may carry a different one).
    @Test func flagsOnBothSidesCombine() throws {
        let info = try parse(["--trace", "info", "--verbose"], as: Info.self)
        #expect(info.common.trace && info.common.verbose)
    }

    @Test(arguments: [["--verbose", "--quiet", "info"], ["info", "-v", "-q"], ["-q", "info", "--verbose"]])
    func verboseAndQuietAreRefused(arguments: [String]) {
        #expect {
            _ = try VhostCtl.parseAsRoot(arguments)
        } throws: { error in
            VhostCtl.exitCode(for: error) == .validationFailure
                && VhostCtl.message(for: error).contains("--verbose and --quiet")
        }
    }

    /// Commands without device options (script check) still accept the global flags.
    @Test(arguments: [["--trace", "script", "check", "x.vhost"], ["script", "check", "x.vhost", "--quiet"]])
    func globalFlagsOnCommandsWithoutDeviceOptions(arguments: [String]) throws {
        let check = try VhostCtl.parseAsRoot(arguments)
        #expect(check is ScriptCheck)
    }

    @Test(arguments: [["--version"], ["info", "--version"], ["bench", "backends", "--version"], ["script", "check", "--version"]])
    func versionAnywhere(arguments: [String]) {
        #expect {
            _ = try VhostCtl.parseAsRoot(arguments)
        } throws: { error in
            VhostCtl.exitCode(for: error) == .success
                && VhostCtl.message(for: error) == VhostCtlVersion.description
        }
    }

    @Test func versionNamesTheRevision() {
        #expect(VhostCtlVersion.describe(commit: "b6edd26", date: "2026-05-01", modified: false)
            == "vhostctl \(VhostCtlVersion.number) (git b6edd26, committed 2026-05-01)")
        #expect(VhostCtlVersion.describe(commit: "b6edd26", date: "2026-05-01", modified: true)
            == "vhostctl \(VhostCtlVersion.number) (git b6edd26 with local changes, committed 2026-05-01)")
        #expect(VhostCtlVersion.describe(commit: nil, date: nil, modified: false)
            == "vhostctl \(VhostCtlVersion.number) (unknown revision: not built from a git checkout)")
        // Built from a git checkout of this repository, the binary names its commit.
        // This file is PACKAGE/Tests/VhostCtlTests/GlobalOptionsTests.swift.
        let packageRoot = #filePath.split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
        if access(packageRoot + "/.git", F_OK) == 0 {
            #expect(VhostCtlVersion.description.hasPrefix("vhostctl \(VhostCtlVersion.number) (git "))
        }
    }
}
