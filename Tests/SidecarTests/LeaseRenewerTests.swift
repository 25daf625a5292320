import Logging
import Policy
import Synchronization
import Testing

@testable import Sidecar

/// Concurrency leases: a running call's slot is renewed; a dead holder's frees within the TTL.
@Suite struct LeaseRenewerTests {
    let slot = LimitCheck(kind: .concurrency, mode: .enforce, key: "c", limit: 1)

    @Test func aLeaseLivesItsTTLUnlessRenewed() {
        var state = LimitState()
        #expect(state.admit(agent: "a", checks: [slot], leaseID: "l1", now: 0, leaseTTL: 3000).admitted)
        #expect(!state.admit(agent: "a", checks: [slot], leaseID: "l2", now: 2999, leaseTTL: 3000).admitted)
        state.renew(agent: "a", leaseIDs: ["l1"], now: 2000, ttl: 3000)
        #expect(!state.admit(agent: "a", checks: [slot], leaseID: "l3", now: 4999, leaseTTL: 3000).admitted, "renewed to 5000")
        #expect(state.admit(agent: "a", checks: [slot], leaseID: "l4", now: 5000, leaseTTL: 3000).admitted, "expired at 5000")
        // A lease that is gone is not brought back by a late renewal.
        state.renew(agent: "a", leaseIDs: ["l1"], now: 5001, ttl: 3000)
        #expect(state.leases["a"]?["l1"] == nil)
    }

    /// Records renewals instead of keeping counters.
    final class Recorder: LimitStore {
        let renewed = Mutex<[String: [String]]>([:])
        func admit(agent: String, checks: [LimitCheck], leaseID: String) async throws -> Admission {
            Admission(admitted: true, results: [], leaseID: leaseID)
        }
        func settle(agent: String, _ settlement: Settlement) async throws {}
        func renew(agent: String, leaseIDs: [String]) async throws {
            renewed.withLock { $0[agent, default: []] += leaseIDs }
        }
    }

    @Test func onlyHeldLeasesOlderThanAThirdAreRenewedAndDroppedOnesAreForgotten() async {
        let store = Recorder()
        let renewer = LeaseRenewer(store: store, ttl: .seconds(30), logger: Logger(label: "test"))
        let start = ContinuousClock.now
        let kept = renewer.hold(agent: "a", leaseID: "kept")
        let settled = renewer.hold(agent: "a", leaseID: "settled")
        var dropped: HeldLease? = renewer.hold(agent: "b", leaseID: "dropped")
        #expect(dropped != nil)
        renewer.release(settled)
        dropped = nil
        #expect(renewer.due(now: start + .seconds(5)).isEmpty, "younger than a third of the TTL")
        #expect(renewer.due(now: start + .seconds(11)) == ["a": ["kept"]])
        #expect(renewer.count == 1, "a call gone without settling is forgotten (its lease then expires)")
        #expect(renewer.due(now: start + .seconds(15)).isEmpty, "renewed at 11 s")
        #expect(renewer.due(now: start + .seconds(21)) == ["a": ["kept"]])
        withExtendedLifetime(kept) {}
    }
}
