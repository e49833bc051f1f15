@testable import Collector
import Testing

/// The bound on failed-login audit records (docs/DASHBOARD.md "Failed logins"): `budget`
/// records a window, then one notice, then nothing until the window ends; and the per-address
/// count that a success does not clear.
@Suite struct LoginAuditBudgetTests {
    @Test func theBudgetRecordsThenNoticesOnceThenSkipsUntilTheWindowEnds() {
        let budget = FailedLoginAuditBudget(budget: 3, window: .seconds(60))
        let t0 = ContinuousClock.now
        let first = (0..<6).map { i in budget.admit(now: t0 + .seconds(i)) }
        #expect(first == [.record, .record, .record, .lastNotice, .skip, .skip])
        #expect(budget.windowEndMs(nowMs: 1_000_000, now: t0 + .seconds(10)) == 1_050_000)
        #expect(budget.admit(now: t0 + .seconds(61)) == .record, "a new window")
    }

    @Test func theAddressCountOnlyEndsWithItsWindow() {
        let limiter = LoginRateLimiter(maxFailures: 2, window: .seconds(60))
        let t0 = ContinuousClock.now
        #expect(limiter.failed("10.0.0.1", now: t0) == 1 && limiter.failed("10.0.0.1", now: t0) == 2)
        #expect(limiter.retryAfter("10.0.0.1", now: t0 + .seconds(30)) == 31)
        #expect(limiter.retryAfter("10.0.0.2", now: t0) == nil)
        #expect(limiter.retryAfter("10.0.0.1", now: t0 + .seconds(60)) == nil)
        #expect(limiter.failed("10.0.0.1", now: t0 + .seconds(61)) == 1)
    }
}
