import Testing
import Vhost

/// The `Duration` units the loops and reports use instead of a hand-written clock.
@Suite struct DurationUnitsTests {
    @Test func conversions() {
        #expect(Duration.milliseconds(1500).inSeconds == 1.5)
        #expect(Duration.milliseconds(1500).inMilliseconds == 1500)
        #expect(Duration.microseconds(-2500).inMilliseconds == -2)
        #expect(Duration.nanoseconds(1_234_567_891).inNanoseconds == 1_234_567_891)
        #expect(Duration.nanoseconds(-5).inNanoseconds == 0)
        #expect(Duration.seconds(Int64.max).inNanoseconds == .max)
        #expect(Duration.seconds(Int64.max).inMilliseconds == .max)
    }

    @Test func clampedSecondsNeverTraps() {
        #expect(Duration.clampedSeconds(0.25) == .milliseconds(250))
        #expect(Duration.clampedSeconds(-1) == .zero)
        #expect(Duration.clampedSeconds(.nan) == .zero)
        #expect(Duration.clampedSeconds(.infinity) == .seconds(1_000_000_000))
    }
}
