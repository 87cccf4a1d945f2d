import ArgumentParser
import Vhost
import Virtio

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Say whether vhost-net is usable here, and what the kernel offers.")

    func run() throws {
        print("kernel: \(KernelInfo.release())")
        do {
            let device = try VhostNetDevice()
            let features = try device.features()
            print("vhost-net: available at \(device.path)")
            print("features: \(features)")
            let backend = try device.backendFeatures()
            print("backend features: \(backend)")
        } catch {
            print("vhost-net: not usable: \(error)")
        }
        for (name, value) in KernelInfo.moduleParameters() {
            print("\(name) = \(value)")
        }
    }
}
