import ArgumentParser
import Foundation
import Logging
import Policy

/// `sidecar bench tokens`: verified-token throughput on one core, cold (RSA) and cached.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Micro-benchmarks that print numbers (not tests).", shouldDisplay: false, subcommands: [Tokens.self])

    struct Tokens: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Token verification per second on one core: cold and cached.")

        @Option(help: "Seconds per measurement.") var seconds: Double = 2

        func run() async throws {
            let fleet = try FleetDecryptionKey.generate()
            let issuer = IssuerSigningKey.generateES256()
            let minter = TokenMinter(signingKey: issuer, encryptionKey: fleet.publicKey)
            let verifier = TokenVerifier(decryptionKeys: [fleet], issuerKeys: [issuer.verificationKey], issuer: "agent-sidecar", audience: "agent-sidecar")
            let now = Int64(Date().timeIntervalSince1970)
            let claims = TokenClaims(iss: "agent-sidecar", sub: "agt_bench", aud: ["agent-sidecar"], iat: now, nbf: now, exp: now + 3600, jti: "tok_bench", role: "scraper")
            let token = try minter.mint(claims)
            let store = try SQLiteIdentityStore(path: ":memory:")
            try await store.createAgent(AgentRecord(id: "agt_bench", name: "b", role: "scraper", status: .active, createdBy: "bench", createdAt: now))
            let state = IdentityState(store: store)
            try await state.refresh()
            let authenticator = Authenticator(
                verifier: verifier, state: state, settings: AuthSettings(), metrics: GatewayMetrics(), now: { now },
                logger: Logger(label: "bench"))

            func measure(_ body: () -> Void) -> Double {
                let start = ContinuousClock.now
                var n = 0
                while (ContinuousClock.now - start) < .milliseconds(Int64(seconds * 1000)) {
                    for _ in 0..<16 { body() }
                    n += 16
                }
                let elapsed = ContinuousClock.now - start
                return Double(n) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
            }
            let cold = measure { _ = verifier.verify(token, now: now) }
            _ = authenticator.authenticate(token: token, presentedAgentID: nil)
            let cached = measure { _ = authenticator.authenticate(token: token, presentedAgentID: nil) }
            print(String(format: "cold (decrypt + verify) %.0f/s = %.1f us each", cold, 1e6 / cold))
            print(String(format: "cached (digest + lookup + checks) %.0f/s = %.2f us each", cached, 1e6 / cached))
            print(String(format: "ratio %.0fx", cached / cold))
        }
    }
}
