import Testing

@testable import Sidecar

/// Approval holds: the claim rule (grant spent once, pending, denied, expired, asked again), decisions,
/// and the in-memory store keeping one grant single-use under concurrent claims.
@Suite struct ApprovalTests {
    static func approval(_ status: Approval.Status, expiresAt: Int64 = 1_000, id: String = "apr_1") -> Approval {
        Approval(
            id: id, key: "k", agent: "agt_a", run: nil, tool: "gmail_send", action: "send", digest: "d", policy: "p", status: status,
            createdAt: 0, expiresAt: expiresAt, approvers: [], summary: [:])
    }

    @Test(arguments: [
        (nil, ApprovalClaim.created, Approval.Status.pending, "apr_new"),
        (Approval.Status.pending, .pending, .pending, "apr_1"),
        (.approved, .granted, .used, "apr_1"),
        (.denied, .denied, .denied, "apr_1"),
        (.used, .created, .pending, "apr_new"),
        (.expired, .created, .pending, "apr_new"),
    ] as [(Approval.Status?, ApprovalClaim, Approval.Status, String)])
    func claimBeforeExpiry(latest: Approval.Status?, claim: ApprovalClaim, after: Approval.Status, id: String) {
        let fresh = Self.approval(.pending, expiresAt: 2_000, id: "apr_new")
        let (c, a) = ApprovalClaim.claim(latest: latest.map { Self.approval($0) }, fresh: fresh, now: 500)
        #expect(c == claim && a.status == after && a.id == id)
    }

    @Test func pastExpiryAPendingApprovalOrAGrantExpiresOnceThenAsksAgain() {
        let fresh = Self.approval(.pending, expiresAt: 5_000, id: "apr_new")
        for status in [Approval.Status.pending, .approved] {
            let (c, a) = ApprovalClaim.claim(latest: Self.approval(status), fresh: fresh, now: 1_000)
            #expect(c == .expired && a.status == .expired && a.id == "apr_1")
            #expect(ApprovalClaim.claim(latest: a, fresh: fresh, now: 1_001).0 == .created)
        }
        #expect(ApprovalClaim.claim(latest: Self.approval(.denied), fresh: fresh, now: 1_000).0 == .created)
    }

    @Test func decisions() {
        let ok = ApprovalClaim.decide(Self.approval(.pending), approve: true, by: "admin", reason: "fine", now: 10)
        #expect((try? ok.get())?.status == .approved && (try? ok.get())?.decidedBy == "admin")
        #expect((try? ApprovalClaim.decide(Self.approval(.pending), approve: false, by: "agt_r", reason: nil, now: 10).get())?.status == .denied)
        if case .failure(let e) = ApprovalClaim.decide(Self.approval(.approved), approve: true, by: "admin", reason: nil, now: 10) {
            #expect(e.code == .approvalNotPending)
        } else {
            Issue.record("deciding twice must fail")
        }
        if case .failure(let e) = ApprovalClaim.decide(Self.approval(.pending), approve: true, by: "admin", reason: nil, now: 1_000) {
            #expect(e.code == .approvalExpired)
        } else {
            Issue.record("deciding after expiry must fail")
        }
        #expect(ApprovalClaim.restore(Self.approval(.used))?.status == .approved)
        #expect(ApprovalClaim.restore(Self.approval(.pending)) == nil)
    }

    @Test func aGrantIsSpentOnceUnderConcurrentClaims() async throws {
        let store = EmbeddedApprovalStore()
        let fresh = Self.approval(.pending, expiresAt: 10_000)
        #expect(try await store.claim(fresh, now: 0, maxPending: 100).0 == .created)
        _ = try await store.decide(id: "apr_1", approve: true, by: "admin", reason: nil, now: 1)
        let granted = try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<16 { group.addTask { try await store.claim(Self.approval(.pending, expiresAt: 10_000, id: "apr_other"), now: 2, maxPending: 100).0 == .granted } }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(granted == 1)
        // The others found the grant spent: one asked again (a new pending approval), the rest wait on it.
        #expect(try await store.pending(limit: 10, now: 3).map(\.id) == ["apr_other"])

        let again = EmbeddedApprovalStore()
        _ = try await again.claim(fresh, now: 0, maxPending: 100)
        _ = try await again.decide(id: "apr_1", approve: true, by: "admin", reason: nil, now: 1)
        #expect(try await again.claim(fresh, now: 2, maxPending: 100).0 == .granted)
        try await again.restore(id: "apr_1", now: 2)
        #expect(try await again.claim(fresh, now: 3, maxPending: 100).0 == .granted, "a grant given back is usable again")
    }

    /// Both stores: an agent waits on at most `maxPending` live pending approvals — a repeat of a call
    /// already asked for is still answered, another agent is not affected, an expired or decided one
    /// frees its place — and the list shows only live pending approvals.
    static func pendingCap(_ store: any ApprovalStore) async throws {
        func ask(_ agent: String, _ n: Int, expiresAt: Int64 = 10_000) -> Approval {
            Approval(
                id: "apr_\(agent)_\(n)", key: "\(agent)-\(n)", agent: agent, run: nil, tool: "gmail_send", action: "send", digest: "d\(n)", policy: "p",
                status: .pending, createdAt: Int64(n), expiresAt: expiresAt, approvers: [], summary: [:])
        }
        #expect(try await store.claim(ask("agt_x", 0, expiresAt: 500), now: 100, maxPending: 3).0 == .created)
        #expect(try await store.claim(ask("agt_x", 1), now: 100, maxPending: 3).0 == .created)
        #expect(try await store.claim(ask("agt_x", 2), now: 100, maxPending: 3).0 == .created)
        #expect(try await store.claim(ask("agt_x", 3), now: 200, maxPending: 3).0 == .tooManyPending)
        #expect(try await store.approval(id: "apr_agt_x_3") == nil, "nothing is stored for a refused claim")
        #expect(try await store.claim(ask("agt_x", 1), now: 200, maxPending: 3).0 == .pending, "a repeat is answered")
        #expect(try await store.claim(ask("agt_y", 0), now: 200, maxPending: 3).0 == .created, "another agent has its own places")
        // The first expires at 500: its place is free, and the list no longer shows it.
        #expect(try await store.pending(limit: 10, now: 400).map(\.id).sorted() == ["apr_agt_x_0", "apr_agt_x_1", "apr_agt_x_2", "apr_agt_y_0"])
        #expect(try await store.pending(limit: 10, now: 600).map(\.id).sorted() == ["apr_agt_x_1", "apr_agt_x_2", "apr_agt_y_0"])
        #expect(try await store.claim(ask("agt_x", 3), now: 600, maxPending: 3).0 == .created)
        #expect(try await store.claim(ask("agt_x", 4), now: 600, maxPending: 3).0 == .tooManyPending)
        // A decision frees a place too.
        _ = try await store.decide(id: "apr_agt_x_1", approve: false, by: "admin", reason: nil, now: 700)
        #expect(try await store.claim(ask("agt_x", 4), now: 700, maxPending: 3).0 == .created)
    }

    @Test func theEmbeddedStoreCapsPendingApprovals() async throws { try await Self.pendingCap(EmbeddedApprovalStore()) }

    @Test(.enabled(if: RedisServer.available)) func theRedisStoreCapsPendingApprovals() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let client = RedisTests.client(server, scripts: RedisApprovalStore.scripts)
        try await server.waitUntilUp(client)
        try await Self.pendingCap(RedisApprovalStore(redis: client))
    }

    /// Pending approvals never decided are dropped a day after they expire, as decided ones are: an agent
    /// asking once per distinct call for ever must not grow the store for ever.
    @Test func theEmbeddedStoreDropsPendingApprovalsADayPastExpiry() async throws {
        let store = EmbeddedApprovalStore(capacity: 8)
        for n in 0..<4 {
            let a = Approval(
                id: "apr_old_\(n)", key: "old-\(n)", agent: "agt_\(n)", run: nil, tool: "gmail_send", action: "send", digest: "d", policy: "p",
                status: .pending, createdAt: 0, expiresAt: 1_000, approvers: [], summary: [:])
            _ = try await store.claim(a, now: 0, maxPending: 100)
        }
        let later = Approval(
            id: "apr_new", key: "new", agent: "agt_9", run: nil, tool: "gmail_send", action: "send", digest: "d", policy: "p",
            status: .pending, createdAt: 0, expiresAt: 200_000_000, approvers: [], summary: [:])
        _ = try await store.claim(later, now: 100_000_000, maxPending: 100)
        #expect(try await store.approval(id: "apr_old_0") == nil)
        #expect(try await store.approval(id: "apr_new") != nil)
    }

    @Test func ids() {
        let id = Approval.newID(key: String(repeating: "ab", count: 32))
        #expect(Approval.isValidID(id) && id.hasPrefix("apr_abababababababab"))
        #expect(!Approval.isValidID("apr_../../etc") && !Approval.isValidID("run_0123"))
    }
}
