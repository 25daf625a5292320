import Synchronization
import Upstreams

/// The secrets this sidecar holds now, for the outbound exfiltration check (`ExfiltrationScanner`):
/// every tool's credential (vault entries and `credential_env` values), Gmail's OAuth client secret,
/// refresh token and current access token, and the configured canaries. Groups are replaced whole by
/// their owner (a vault reload, a new access token); the scanner is rebuilt only when something changed,
/// on the first request that needs it.
final class SecretCatalog: Sendable {
    private struct State {
        var generation = 0
        var groups: [String: [ExfiltrationScanner.Secret]] = [:]
        var built = -1
        var scanner = ExfiltrationScanner([])
    }

    private let state = Mutex(State())

    /// Replaces one group's secrets (`vault`, `gmail-token`, `canaries`).
    func set(_ group: String, _ secrets: [ExfiltrationScanner.Secret]) {
        state.withLock { s in
            guard s.groups[group] != secrets else { return }
            s.groups[group] = secrets
            s.generation += 1
        }
    }

    /// Adds one secret to a group that keeps its newest `keep` (Gmail access tokens: the previous one is
    /// still valid for its last minutes after a refresh).
    func add(_ group: String, _ secret: ExfiltrationScanner.Secret, keep: Int) {
        state.withLock { s in
            var list = s.groups[group] ?? []
            guard !list.contains(secret) else { return }
            list.append(secret)
            s.groups[group] = Array(list.suffix(keep))
            s.generation += 1
        }
    }

    /// The scanner for the secrets held now.
    var scanner: ExfiltrationScanner {
        if let current = state.withLock({ s in s.built == s.generation ? s.scanner : nil }) { return current }
        let (generation, secrets) = state.withLock { s in (s.generation, s.groups.keys.sorted().flatMap { s.groups[$0]! }) }
        let fresh = ExfiltrationScanner(secrets)
        state.withLock { s in
            if s.generation == generation {
                s.scanner = fresh
                s.built = generation
            }
        }
        return fresh
    }
}
