import Glibc

/// Every `.vhost` file under `directory`, except the `lib/` includes, sorted.
public func scriptFiles(under directory: String) -> [String] {
    guard let dir = opendir(directory) else { return [] }
    defer { closedir(dir) }
    var found: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard !name.hasPrefix(".") else { continue }
        let path = directory + "/" + name
        if entry.pointee.d_type == UInt8(DT_DIR) {
            if name != "lib" { found += scriptFiles(under: path) }
        } else if name.hasSuffix(".vhost") {
            found.append(path)
        }
    }
    return found.sorted()
}
