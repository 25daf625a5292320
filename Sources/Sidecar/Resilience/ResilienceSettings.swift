import Upstreams

/// Resilience knobs per tool, compiled from `resilience:` and `tools.<tool>.*` in the configuration.
struct ToolResilience: Sendable, Hashable {
    var retry = RetryPolicy()
    var breaker = CircuitBreaker.Settings()
    var maxConcurrent = 256
    var queue = 512
    var queueWait: Duration = .seconds(1)
    /// Cache lifetime (serpapi, openai) or the cap on `Cache-Control` lifetimes (http_fetch); zero = off.
    var cacheTTL: Duration = .zero
}

struct ResilienceSettings: Sendable, Hashable {
    var tools = PerTool { _ in ToolResilience() }
    var retryBudgetRatio = 0.2
    var retryBudgetMinimumPerSecond = 5.0
    var cacheMaxBytes = 64 * 1024 * 1024
    var cacheMaxEntryBytes = 1024 * 1024
    /// What a cached answer may decode to (`limits.max_response_body_bytes`): an answer its gzip cannot
    /// undo within it is never stored, or every hit would be the same 502 until the entry expired.
    var maxDecodedBytes = 32 * 1024 * 1024
    /// How long an expired answer may still be served when the upstream cannot answer.
    var staleIfError: Duration = .seconds(300)
    var openAICache = false
    /// Also keep cacheable answers in Redis, so one sidecar's miss is the fleet's hit (needs Redis).
    var sharedCache = false

    init() {
        tools[.serpapi]!.cacheTTL = .seconds(600)
        tools[.httpFetch]!.cacheTTL = .seconds(300)
        tools[.openai]!.cacheTTL = .seconds(3600)
        tools[.gmailSend]!.retry.maxAttempts = 1
    }
}
