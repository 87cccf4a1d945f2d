import ArgumentParser
import Glibc
import Vhost
import Virtio

/// Completion hints for option values: the shell asks `vhostctl` (through the completion
/// scripts `--generate-completion-script` writes) for the candidates at completion time, so
/// interface names and CPUs are this host's as they are now.
enum CompletionHints {
    /// The network interfaces of this host (the entries of /sys/class/net) starting with `prefix`.
    static let interfaceNames = CompletionKind.custom { _, _, prefix in
        interfaces(in: "/sys/class/net").filter { $0.hasPrefix(prefix) }
    }

    /// The CPUs online now (/sys/devices/system/cpu/online), as numbers.
    static let cpus = CompletionKind.custom { _, _, prefix in
        onlineCPUs().map(String.init).filter { $0.hasPrefix(prefix) }
    }

    /// `none`, then the CPUs online now: for options where `none` leaves the thread unpinned.
    static let cpusOrNone = CompletionKind.custom { _, _, prefix in
        (["none"] + onlineCPUs().map(String.init)).filter { $0.hasPrefix(prefix) }
    }

    /// The virtio feature names `--features` takes (every named bit, each in its shortest
    /// spelling that `VirtioFeatures.parse` or `HighFeatures.parse` reads back as that bit).
    static let features = CompletionKind.list(featureNames)

    /// Script files (`*.vhost`) and folders.
    static let scriptFiles = CompletionKind.file(extensions: ["vhost"])

    /// The shortest spelling of each named feature bit that parses back to the same bit:
    /// `EVENT_IDX` for `F_EVENT_IDX`, `CSUM` for `NET_F_CSUM`; vhost's own (`VHOST_F_LOG_ALL`,
    /// `VHOST_NET_F_VIRTIO_NET_HDR`) whole; both names of bit 27.
    static let featureNames: [String] = {
        var names: [String] = []
        for (bit, name) in VirtioFeatures.names.sorted(by: { $0.key < $1.key }) {
            for alias in name.split(separator: "/").map(String.init) {
                // vhost's own bits keep their VHOST_ names, as the docs write them.
                let spellings = alias.hasPrefix("VHOST_") ? [alias] : ["NET_F_", "F_"].compactMap { alias.hasPrefix($0) ? String(alias.dropFirst($0.count)) : nil } + [alias]
                if let shortest = spellings.sorted(by: { $0.count < $1.count }).first(where: { VirtioFeatures.parse($0) == VirtioFeatures(bit: bit) }) {
                    names.append(shortest)
                }
            }
        }
        for (bit, name) in HighFeatures.names.sorted(by: { $0.key < $1.key }) {
            let spellings = [name.hasPrefix("NET_F_") ? String(name.dropFirst("NET_F_".count)) : name, name]
            if let shortest = spellings.first(where: { HighFeatures.parse($0) == HighFeatures(bit: bit) }) {
                names.append(shortest)
            }
        }
        return names
    }()

    /// The entries of a directory, without `.` and `..`; none when it cannot be read.
    static func interfaces(in directory: String) -> [String] {
        guard let stream = opendir(directory) else { return [] }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            // SAFETY: d_name is a NUL-terminated array inside the dirent readdir returned, valid
            // until the next readdir or closedir on this stream; it is copied out at once.
            let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                String(decoding: bytes.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// The CPUs in /sys/devices/system/cpu/online; none when it cannot be read or parsed.
    static func onlineCPUs(path: String = "/sys/devices/system/cpu/online") -> [Int] {
        KernelInfo.readFile(path).flatMap { parseCPUList($0) } ?? []
    }

    /// The most CPUs a list may name (the kernel's largest NR_CPUS, arch/x86/Kconfig: 8192).
    static let maximumCPUs = 8192

    /// Parses the kernel's CPU list format (`0-3,5,8-9`, lib/bitmap-str.c bitmap_parselist,
    /// as the sysfs cpu masks print it); nil for text that is not one, or names a CPU at or
    /// above `maximumCPUs`.
    static func parseCPUList(_ text: String) -> [Int]? {
        let trimmed = text.trimmingTrailingNewline
        guard !trimmed.isEmpty else { return [] }
        var cpus: [Int] = []
        for part in trimmed.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count),
                  let first = Int(bounds[0]), let last = Int(bounds[bounds.count - 1]),
                  first >= 0, first <= last, last < maximumCPUs else { return nil }
            cpus.append(contentsOf: first...last)
            guard cpus.count <= maximumCPUs else { return nil }
        }
        return cpus
    }
}

private extension String {
    var trimmingTrailingNewline: String {
        var text = Substring(self)
        while let last = text.last, last == "\n" || last == " " { text.removeLast() }
        return String(text)
    }
}
