/// CSV fields and rows as RFC 4180 section 2 quotes them: a field that holds a comma, a double
/// quote, a CR or an LF is enclosed in double quotes, and each double quote in it is doubled.
/// Other fields are written as they are. Rows end in LF (as the files have always been written,
/// and as every CSV reader takes them), not RFC 4180's CRLF.
enum CSV {
    static func field(_ text: String) -> String {
        guard text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\r" || $0 == "\n" || $0 == "\r\n" }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    static func row(_ fields: [String]) -> String { fields.map(field).joined(separator: ",") }
}

extension String {
    /// Every `target` replaced with `replacement` (without Foundation).
    fileprivate func replacingOccurrences(of target: Character, with replacement: String) -> String {
        var result = ""
        for character in self { if character == target { result += replacement } else { result.append(character) } }
        return result
    }
}
