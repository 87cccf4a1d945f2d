import FoundationEssentials

/// `--json` output: `Encodable` reports written by Foundation's `JSONEncoder`
/// (FoundationEssentials, which links into the static binary without ICU), keys in snake_case.
/// Keys are sorted; an optional that is nil is left out of its object.
enum JSONOutput {
    static func text<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}
