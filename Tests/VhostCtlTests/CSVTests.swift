import Testing
@testable import vhostctl

/// bench's CSV output quotes per RFC 4180 section 2.
@Suite struct CSVTests {
    @Test(arguments: [
        ("plain", "plain"),
        ("", ""),
        ("a,b", "\"a,b\""),
        ("say \"hi\"", "\"say \"\"hi\"\"\""),
        ("\"", "\"\"\"\""),
        ("line\nbreak", "\"line\nbreak\""),
        ("carriage\rreturn", "\"carriage\rreturn\""),
        ("crlf\r\nend", "\"crlf\r\nend\""),
        ("tab\tand space", "tab\tand space"),
    ])
    func fieldQuoting(text: String, expected: String) {
        #expect(CSV.field(text) == expected)
    }

    @Test func rowJoinsQuotedFields() {
        #expect(CSV.row(["tx", "tap, multi-queue", "1500", "he said \"no\""]) == "tx,\"tap, multi-queue\",1500,\"he said \"\"no\"\"\"")
    }

    /// Reads a row back the way RFC 4180 says, to check the writer's output round-trips.
    @Test func rowsRoundTrip() {
        let fields = ["a", "b,c", "\"q\"", "x\ny", ""]
        #expect(Self.parse(CSV.row(fields)) == fields)
    }

    static func parse(_ row: String) -> [String] {
        var fields: [String] = [], current = "", quoted = false, index = row.startIndex
        while index < row.endIndex {
            let c = row[index]
            if quoted {
                if c == "\"" {
                    let next = row.index(after: index)
                    if next < row.endIndex && row[next] == "\"" { current.append("\""); index = next } else { quoted = false }
                } else { current.append(c) }
            } else if c == "\"" { quoted = true } else if c == "," { fields.append(current); current = "" } else { current.append(c) }
            index = row.index(after: index)
        }
        fields.append(current)
        return fields
    }
}
