import NIOCore
import Testing

@testable import Sidecar

/// A warning at most once per interval, carrying how many occurred since the last one.
@Suite struct LogThrottleTests {
    @Test func oncePerIntervalWithTheCountHeldBack() {
        let throttle = LogThrottle(interval: .seconds(10))
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        #expect(throttle.admit(now: t0) == 1, "the first one is logged, even a second after boot")
        #expect(throttle.admit(now: t0 + .seconds(1)) == nil)
        #expect(throttle.admit(now: t0 + .seconds(9)) == nil)
        #expect(throttle.admit(now: t0 + .seconds(10)) == 3)
        #expect(throttle.admit(now: t0 + .seconds(11)) == nil)
        #expect(throttle.admit(now: t0 + .seconds(30)) == 2)
    }
}
