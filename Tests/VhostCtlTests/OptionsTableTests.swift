import ArgumentParser
import Glibc
import Testing
@testable import vhostctl

/// docs/options.md (written by Scripts/options-table) lists every option the argument parser
/// has, for every command, and gives each concept one name and one type.
@Suite struct OptionsTableTests {
    struct Row: Equatable {
        var command: String
        var option: String
        var aliases: [String]
        var concept: String
        var type: String
    }

    /// The table's rows: `| command | option | aliases | concept | type | meaning |`.
    static func tableRows() throws -> [Row] {
        let path = String(#filePath.dropLast("Tests/VhostCtlTests/OptionsTableTests.swift".count)) + "docs/options.md"
        let text: String = try #require(readTextFile(path), "cannot read \(path)")
        return text.split(separator: "\n").map(String.init).compactMap { line -> Row? in
            guard line.hasPrefix("| vhostctl") else { return nil }
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { String($0).trimmingCharacters(in: " ") }
            guard cells.count >= 7 else { return nil }
            let names = { (cell: String) in cell.split(separator: ",").map { String($0).trimmingCharacters(in: " ").filter { $0 != "`" } }.filter { !$0.isEmpty } }
            return Row(command: cells[1], option: names(cells[2]).first ?? "", aliases: names(cells[3]), concept: cells[4], type: cells[5])
        }
    }

    /// Every command with its name as typed (`vhostctl bench backends`), but the hidden reaper.
    static func commands(_ command: ParsableCommand.Type = VhostCtl.self, path: String = "vhostctl") -> [(String, ParsableCommand.Type)] {
        [(path, command)] + command.configuration.subcommands.filter { $0 != Reaper.self }.flatMap { sub in
            commands(sub, path: path + " " + sub._commandName)
        }
    }

    /// The names each option of `command`'s help shows (`--queue-pairs`, `--queues`, `-j`).
    static func optionNames(_ command: ParsableCommand.Type) -> Set<String> {
        var names: Set<String> = []
        for line in VhostCtl.helpMessage(for: command, columns: 10_000).split(separator: "\n") {
            let entry = String(line).trimmingCharacters(in: " ")
            guard entry.hasPrefix("-") else { continue }
            // The names and value come before the two spaces that start the help text.
            let head = entry.firstRange(of: "  ").map { entry[..<$0.lowerBound] } ?? entry[...]
            for token in head.split(whereSeparator: { $0 == " " || $0 == "," }) where token.hasPrefix("-") {
                names.insert(String(token))
            }
        }
        return names
    }

    @Test func tableListsEveryOptionOfEveryCommand() throws {
        let rows = try Self.tableRows()
        #expect(rows.count > 100)
        for (path, command) in Self.commands() {
            let listed = Set(rows.filter { $0.command == path }.flatMap { [$0.option] + $0.aliases })
            let shown = Self.optionNames(command)
            #expect(!shown.isEmpty, "\(path) shows no option")
            #expect(shown.subtracting(listed).isEmpty, "docs/options.md lacks \(path) \(shown.subtracting(listed).sorted()): run Scripts/options-table")
            let stale = listed.filter { $0.hasPrefix("-") }.subtracting(shown)
            #expect(stale.isEmpty, "docs/options.md lists \(path) \(stale.sorted()), which the command does not have: run Scripts/options-table")
        }
    }

    @Test func oneConceptOneNameOneType() throws {
        let rows = try Self.tableRows()
        func base(_ type: String) -> String {
            var type = type
            if type.hasPrefix("comma-separated sweep of ") { type.removeFirst("comma-separated sweep of ".count) }
            for extra in [" or none", " or 64k"] where type.hasSuffix(extra) { type.removeLast(extra.count) }
            return type
        }
        for concept in Set(rows.map(\.concept)) {
            let named = rows.filter { $0.concept == concept }
            #expect(Set(named.map(\.option)).count == 1, "\(concept) has several names: \(Set(named.map(\.option)).sorted())")
            #expect(Set(named.map { base($0.type) }).count == 1, "\(concept) has several types: \(Set(named.map(\.type)).sorted())")
        }
        for option in Set(rows.map(\.option)) {
            let concepts = Set(rows.filter { $0.option == option }.map(\.concept))
            #expect(concepts.count == 1, "\(option) means several things: \(concepts.sorted())")
        }
        // No alias is another option's name.
        let names = Set(rows.map(\.option))
        for row in rows { for alias in row.aliases { #expect(!names.contains(alias), "\(row.command) \(row.option)'s alias \(alias) is an option's name too") } }
    }

    /// The renamed options keep their old spellings where they do not clash.
    @Test func oldSpellingsStillParse() throws {
        let attach = try #require(try VhostCtl.parseAsRoot(["attach", "--tap", "t0", "--queues", "3"]) as? Attach)
        #expect(attach.queuePairs == 3)
        let bench = try #require(try VhostCtl.parseAsRoot(["bench", "backends", "--queues", "1,2", "--mode", "poll", "--frame-size", "64,64k", "--worker-cpu", "none,0"]) as? BenchBackends)
        #expect(bench.queuePairCounts == [1, 2])
        #expect(bench.modes == [.poll])
        #expect(bench.frameSizes == [64, 65536])
        #expect(bench.workerCPUs == [nil, 0])
        #expect(throws: (any Error).self) { try VhostCtl.parseAsRoot(["bench", "backends", "--frame-size", "64,x"]) }
        let echo = try #require(try VhostCtl.parseAsRoot(["bench", "echo", "--reply-path", "burst", "--json-file", "/tmp/x.json"]) as? BenchEcho)
        #expect(echo.paths == [.burst] && echo.jsonFile == "/tmp/x.json")
    }

    /// `--json` is one flag, before or after the subcommand, for every command.
    @Test(arguments: [["--json", "cleanup"], ["cleanup", "--json"], ["-j", "script", "check", "x"], ["script", "check", "x", "-j"],
                      ["--json", "bench", "backends"], ["demo", "--json"], ["--json", "migrate-test"], ["attach", "--tap", "t", "--json"]])
    func jsonIsGlobal(arguments: [String]) throws {
        let command = try VhostCtl.parseAsRoot(arguments)
        let json: Bool? = switch command {
        case let c as Cleanup: c.global.json
        case let c as ScriptCheck: c.global.json
        case let c as BenchBackends: c.common.json
        case let c as Demo: c.common.json
        case let c as MigrateTest: c.common.json
        case let c as Attach: c.common.json
        default: nil
        }
        #expect(json == true, "\(arguments) parsed as \(type(of: command))")
    }
}

private func readTextFile(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n == 0 { break }
        bytes += buffer.prefix(n)
    }
    return String(decoding: bytes, as: UTF8.self)
}
