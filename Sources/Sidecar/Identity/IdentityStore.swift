/// An agent as the control API knows it.
public struct AgentRecord: Sendable, Hashable, Codable {
    public enum Status: String, Sendable, Hashable, Codable {
        case active
        case disabled
    }

    public var id: String
    public var name: String
    public var role: String
    public var status: Status
    public var createdBy: String
    /// Unix seconds.
    public var createdAt: Int64
}

/// Metadata of a token (never the token itself).
public struct TokenRecord: Sendable, Hashable, Codable {
    public enum Source: String, Sendable, Hashable, Codable {
        /// Minted by the control API.
        case api
        /// Minted elsewhere (CLI, another issuer) and first seen by this sidecar.
        case observed
    }

    public var jti: String
    public var agentId: String
    public var issuedAt: Int64
    public var expiresAt: Int64
    public var scopes: [String]?
    public var source: Source
    public var revokedAt: Int64?
}

/// Agents, token metadata and revocations. The embedded implementation is SQLite (GRDB); the Redis one
/// shares them across a fleet. Both run the same contract tests.
public protocol IdentityStore: Sendable {
    func createAgent(_ agent: AgentRecord) async throws
    func agent(id: String) async throws -> AgentRecord?
    func agents(role: String?, status: AgentRecord.Status?) async throws -> [AgentRecord]
    /// Returns false when the agent does not exist.
    func setAgentStatus(id: String, status: AgentRecord.Status) async throws -> Bool

    /// Inserts the token's metadata unless it is already known.
    func recordToken(_ token: TokenRecord) async throws
    func token(jti: String) async throws -> TokenRecord?
    func tokens(agentId: String) async throws -> [TokenRecord]
    /// Returns false when the token is unknown.
    func revokeToken(jti: String, at: Int64) async throws -> Bool

    /// Everything the hot path needs, loaded into memory at start and after changes.
    func snapshot() async throws -> IdentitySnapshot

    /// Whether the store can lose its data behind the fleet's back (Redis without persistence, a
    /// flush, a replacement) and so names its generation, an epoch, in every snapshot.
    var tracksEpochs: Bool { get }
    /// Makes `candidate` the store's epoch unless it has one already; returns the one it has.
    func claimEpoch(_ candidate: String) async throws -> String
    /// Adds what `snapshot` knows and the store does not — agents, revocations — never removing or
    /// overwriting anything (several sidecars may restore at once; the union is the safe side).
    func merge(_ snapshot: IdentitySnapshot) async throws
}

extension IdentityStore {
    /// The embedded store loses nothing behind the sidecar's back: no epochs.
    public var tracksEpochs: Bool { false }
    public func claimEpoch(_ candidate: String) async throws -> String { candidate }
    public func merge(_ snapshot: IdentitySnapshot) async throws {}
}

/// The identity facts the per-request checks read: which agents exist with which status, which token
/// ids are revoked. Small, immutable, swapped whole.
public struct IdentitySnapshot: Sendable, Hashable, Codable {
    public var agents: [String: AgentRecord.Status]
    public var revoked: Set<String>
    /// The agents in full, so a store that lost them can be given them back (shared stores only).
    public var agentRecords: [AgentRecord] = []
    /// The shared store's generation when this was read (nil: the store keeps none, or has none yet).
    public var epoch: String?

    public init(agents: [String: AgentRecord.Status] = [:], revoked: Set<String> = []) {
        self.agents = agents
        self.revoked = revoked
    }

    /// Everything `other` knows that this does not, added (statuses already here are kept).
    mutating func formUnion(_ other: IdentitySnapshot) {
        revoked.formUnion(other.revoked)
        for (id, status) in other.agents where agents[id] == nil { agents[id] = status }
        let known = Set(agentRecords.map(\.id))
        agentRecords += other.agentRecords.filter { !known.contains($0.id) }
    }
}
