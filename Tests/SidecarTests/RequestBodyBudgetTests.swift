import Testing

@testable import Sidecar

/// The bound on request bodies held across connections: taken chunk by chunk, refused past the limit
/// without counting the refused chunk, given back whole.
@Suite("Request body budget")
struct RequestBodyBudgetTests {
    @Test func takesUpToTheLimitRefusesPastItAndGivesBack() {
        let budget = RequestBodyBudget(limit: 100)
        #expect(budget.take(60) && budget.current == 60)
        #expect(!budget.take(41) && budget.current == 60)  // refused: nothing of it is held
        #expect(budget.take(40) && budget.current == 100)  // exactly the limit fits
        #expect(!budget.take(1))
        budget.give(60)
        #expect(budget.current == 40 && budget.take(60))
        budget.give(100)
        #expect(budget.current == 0)
    }

    @Test func concurrentTakersNeverHoldMoreThanTheLimit() async {
        let budget = RequestBodyBudget(limit: 1000)
        let taken = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<64 {
                group.addTask { (0..<100).reduce(0) { n, _ in budget.take(7) ? n + 7 : n } }
            }
            return await group.reduce(0, +)
        }
        // A refused take is counted for an instant: at most one per task can crowd out a fitting one.
        #expect(taken <= 1000 && taken == budget.current && taken > 1000 - 7 * 64)
    }
}
