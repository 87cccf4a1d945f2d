import Glibc

/// What the running kernel says about vhost: module parameters and version.
public enum KernelInfo {
    /// `max_mem_regions` and friends from /sys/module/vhost*/parameters, by "module.parameter".
    public static func moduleParameters() -> [(name: String, value: String)] {
        var result: [(String, String)] = []
        for module in ["vhost", "vhost_net", "vhost_iotlb"] {
            let directory = "/sys/module/\(module)/parameters"
            guard let dir = opendir(directory) else { continue }
            defer { closedir(dir) }
            var names: [String] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if !name.hasPrefix(".") { names.append(name) }
            }
            for name in names.sorted() {
                if let value = readFile("\(directory)/\(name)") {
                    result.append(("\(module).\(name)", value.trimmingTrailingNewlines()))
                }
            }
        }
        return result
    }

    /// One module parameter's value (trimmed), e.g. `moduleParameter("vhost", "fork_from_owner_default")`.
    public static func moduleParameter(_ module: String, _ name: String) -> String? {
        readFile("/sys/module/\(module)/parameters/\(name)")?.trimmingTrailingNewlines()
    }

    /// vhost.c: the memory table may have at most this many regions (default 64).
    public static func maxMemoryRegions() -> Int? {
        readFile("/sys/module/vhost/parameters/max_mem_regions").flatMap { Int($0.trimmingTrailingNewlines()) }
    }

    /// The running kernel's (major, minor), from uname's release.
    public static let version: (major: Int, minor: Int) = {
        let parts = release().split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return (parts.first ?? 0, parts.count > 1 ? parts[1] : 0)
    }()

    /// tun takes UDP_L4 GSO (USO) frames from Linux 6.2 on; before, such a frame sent into a tap
    /// is dropped without any counter (seen on 6.1).
    public static var tapSupportsUDPSegmentation: Bool { version >= (6, 2) }

    public static func release() -> String {
        var info = utsname()
        uname(&info)
        return withUnsafeBytes(of: info.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    public static func readFile(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, file)
            if n <= 0 { break }
            bytes.append(contentsOf: buffer.prefix(n))
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Writes a sysctl-style file; returns false when it could not.
    @discardableResult
    public static func writeFile(_ path: String, _ text: String) -> Bool {
        guard let file = fopen(path, "w") else { return false }
        defer { fclose(file) }
        return fputs(text, file) >= 0
    }

    /// Reads a counter from /sys/class/net/NAME/statistics.
    public static func interfaceStatistic(_ interface: String, _ counter: String) -> UInt64? {
        readFile("/sys/class/net/\(interface)/statistics/\(counter)").flatMap { UInt64($0.trimmingTrailingNewlines()) }
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var s = self
        while s.last == "\n" || s.last == " " { s.removeLast() }
        return s
    }
}

extension KernelInfo {
    /// Whether capability number `capability` (linux/capability.h) is in this process's
    /// effective set, from the `CapEff:` line of /proc/self/status.
    public static func hasEffectiveCapability(_ capability: Int) -> Bool {
        guard let status = readFile("/proc/self/status") else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            let hexDigits = line.dropFirst("CapEff:".count).filter { !$0.isWhitespace }
            guard let mask = UInt64(hexDigits, radix: 16) else { return false }
            return capability < 64 && mask >> UInt64(capability) & 1 == 1
        }
        return false
    }
}
