import DatapathSuite
import Vhost
import VhostNet
import Virtio

/// The suite's `transmitAndCompare` with the tap's host stack as the far side.
func transmitAndCompare(_ pair: VhostNetQueuePair, frames total: Int, batch: Int = 100) throws {
    try transmitAndCompare(pair, host: try KernelHostSide(pair), frames: total, batch: batch)
}

/// The suite's `receiveAndCompare` with the tap's host stack as the far side.
func receiveAndCompare(_ pair: VhostNetQueuePair, frames total: Int, batch: Int = 32) throws {
    try receiveAndCompare(pair, host: try KernelHostSide(pair), frames: total, batch: batch)
}

func pair(_ tap: String, _ configure: (inout VhostNetQueuePair.Configuration) -> Void = { _ in }) throws -> VhostNetQueuePair {
    var config = VhostNetQueuePair.Configuration(tapName: tap)
    configure(&config)
    return try VhostNetQueuePair(config)
}
