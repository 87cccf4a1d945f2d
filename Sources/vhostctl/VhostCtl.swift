import ArgumentParser

@main
struct VhostCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhostctl",
        abstract: "Drive the Linux kernel's vhost-net from userspace: be the virtio-net driver for a tap.",
        subcommands: [Info.self]
    )
}
