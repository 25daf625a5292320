import Logging
import Testing

@testable import Sidecar

@Suite("Connection caps")
struct ConnectionCapTests {
    /// Sized from the descriptors: the admin port an eighth of what is left after the reserve (16 to
    /// 1 024), the proxy half the rest (two descriptors per agent connection: its upstream's too).
    @Test(arguments: [
        (256, nil, nil, 56, 16, false),
        (1024, nil, nil, 392, 112, false),
        (20000, nil, nil, 9424, 1024, false),
        (100, nil, nil, 16, 16, true),
        (20000, 500, 50, 500, 50, false),
        (1024, 1000, nil, 1000, 112, true),
        (1024, nil, 900, 0, 900, true),
    ] as [(Int, Int?, Int?, Int, Int, Bool)])
    func budget(_ descriptors: Int, _ proxy: Int?, _ admin: Int?, _ wantProxy: Int, _ wantAdmin: Int, _ warns: Bool) {
        let b = ConnectionCap.budget(descriptors: descriptors, proxy: proxy, admin: admin)
        #expect(b.admin == wantAdmin)
        if wantProxy > 0 { #expect(b.proxy == wantProxy) }
        #expect(b.proxy >= 16)
        #expect((b.warning != nil) == warns, "\(b)")
    }

    @Test func admitsUpToTheCapAndAgainAfterARelease() {
        let cap = ConnectionCap(listener: "proxy", max: 3, metrics: GatewayMetrics(), logger: Logger(label: "test"))
        #expect((0..<5).map { _ in cap.admit() } == [true, true, true, false, false])
        #expect(cap.count == 3)
        cap.release()
        #expect(cap.admit() && !cap.admit() && cap.count == 3)
    }

    @Test func theProcessMayOpenAtLeastWhatItCouldBefore() {
        #expect(ConnectionCap.raiseDescriptorLimit() >= 256)
    }
}
