import Foundation

/// Compiles a policy document into a `CompiledPolicy`, or fails naming the field path of the first error.
///
///     version: 1
///     roles:
///       scraper:
///         allow: [serpapi:search, "http_fetch:*"]
///         concurrency: 4
///         rules:
///           - scope: "http_fetch:*"
///             mode: enforce                     # or report: allowed, logged and counted as would-deny
///             guards: {allow_hosts: ["*.example.com"], schemes: [https]}
///             time_window: {timezone: America/New_York, days: [mon, tue, wed, thu, fri], hours: ["08:00-18:00"]}
///             rate: {limit: 10, per: 1s, burst: 20}
///             quota: {limit: 1000, window: day, timezone: UTC, cost: 1}
///             budget: {tokens: 200000, window: day, timezone: UTC}
///     agents:
///       agt_123: {allow: [...], rules: [...], concurrency: 2}
public enum PolicyCompiler {
    /// The tools and actions a policy may name.
    public static let knownActions: [String: [String]] = [
        "serpapi": ["search"], "openai": ["chat", "completions", "embeddings", "responses", "models", "moderations", "images", "image_edits", "image_variations", "speech", "transcriptions", "translations", "traces", "stored_responses"], "http_fetch": ["get", "head"],
        "gmail_send": ["send", "profile"],
    ]

    /// `isCIDR` validates `allow_cidrs` entries: address ranges are the transport's business, so the
    /// module that parses them for connecting also judges them here (Policy stays free of networking).
    public static func compile(
        _ node: DocumentNode, source: String, isCIDR: (String) -> Bool = { _ in false }
    ) throws(DocumentError) -> CompiledPolicy {
        let root = DocumentReader(node)
        try root.checkKeys(["version", "roles", "agents", "prices"])
        let version = try root["version"].int() ?? 1
        guard version == 1 else { throw root["version"].error("unsupported version \(version) (expected 1)") }
        var roles: [String: RolePolicy] = [:]
        for (name, roleNode) in try root["roles"].entries() {
            guard name.range(of: "^[a-z0-9_-]{1,64}$", options: .regularExpression) != nil else {
                throw roleNode.error("role names are 1-64 of a-z, 0-9, _ and -")
            }
            roles[name] = try compileRole(roleNode, id: "roles.\(name)", requireAllow: true, isCIDR: isCIDR)
        }
        guard !roles.isEmpty else { throw root["roles"].error("at least one role is required") }
        var agents: [String: RolePolicy] = [:]
        for (id, agentNode) in try root["agents"].entries() {
            agents[id] = try compileRole(agentNode, id: "agents.\(id)", requireAllow: false, isCIDR: isCIDR)
        }
        return CompiledPolicy(
            version: version, hash: CompiledPolicy.digest(source), roles: roles, agents: agents, source: source,
            prices: try compilePrices(root["prices"]))
    }

    static func compileRole(_ node: DocumentReader, id: String, requireAllow: Bool, isCIDR: (String) -> Bool) throws(DocumentError) -> RolePolicy {
        try node.checkKeys(["allow", "rules", "concurrency", "concurrency_mode", "loop"])
        var allow: [ScopePattern] = []
        for e in try node["allow"].elements() {
            guard let text = try e.string(), let p = ScopePattern(text, known: knownActions) else {
                throw e.error("expected tool:action, tool:* or * for a known tool and action")
            }
            allow.append(p)
        }
        if requireAllow, !node["allow"].isPresent { throw node["allow"].error("is required (a list of tool:action scopes)") }
        var rules: [Rule] = []
        for (i, ruleNode) in try node["rules"].elements().enumerated() {
            rules.append(try compileRule(ruleNode, id: "\(id).rules[\(i)]", isCIDR: isCIDR))
        }
        let concurrency = try node["concurrency"].int()
        if let c = concurrency, c < 1 { throw node["concurrency"].error("must be at least 1") }
        return RolePolicy(
            allow: allow, rules: rules, concurrency: concurrency, concurrencyMode: try mode(node["concurrency_mode"], default: .enforce),
            loop: try compileLoop(node["loop"]))
    }

    /// `loop: {max_repeats: 5, window: 60s, max_cycles: 3, max_refusals: 10, action: pause}` (each optional).
    static func compileLoop(_ node: DocumentReader) throws(DocumentError) -> LoopDetector.Settings? {
        guard node.isPresent else { return nil }
        try node.checkKeys(["max_repeats", "window", "max_cycles", "max_refusals", "action"])
        var s = LoopDetector.Settings()
        s.maxRepeats = try positiveInt(node["max_repeats"], required: false) ?? s.maxRepeats
        s.maxCycles = try positiveInt(node["max_cycles"], required: false) ?? s.maxCycles
        s.maxRefusals = try positiveInt(node["max_refusals"], required: false) ?? s.maxRefusals
        if let w = try node["window"].duration() {
            guard w >= .seconds(1), w <= .seconds(86_400) else { throw node["window"].error("must be between 1s and 24h") }
            s.windowMilliseconds = w.components.seconds * 1000 + w.components.attoseconds / 1_000_000_000_000_000
        }
        if let a = try node["action"].string() {
            guard let action = LoopDetector.Action(rawValue: a) else { throw node["action"].error("expected pause, cancel or report") }
            s.action = action
        }
        return s
    }

    /// `prices:` in dollars: `serpapi: {per_search}`, `gmail_send: {per_email}`, `http_fetch: {per_mb}`,
    /// `openai: {<model or *>: {input_per_1k, output_per_1k}}`. Kept as millionths of a dollar.
    static func compilePrices(_ node: DocumentReader) throws(DocumentError) -> RunPrices {
        var prices = RunPrices()
        guard node.isPresent else { return prices }
        try node.checkKeys(["serpapi", "gmail_send", "http_fetch", "openai"])
        func micros(_ n: DocumentReader) throws(DocumentError) -> Int {
            guard let d = try n.double() else { return 0 }
            guard d >= 0, d <= 1000 else { throw n.error("must be a price in dollars between 0 and 1000") }
            return Int((d * 1_000_000).rounded())
        }
        try node["serpapi"].checkKeys(["per_search"])
        prices.perSearchMicros = try micros(node["serpapi"]["per_search"])
        try node["gmail_send"].checkKeys(["per_email"])
        prices.perEmailMicros = try micros(node["gmail_send"]["per_email"])
        try node["http_fetch"].checkKeys(["per_mb"])
        prices.perMBFetchedMicros = try micros(node["http_fetch"]["per_mb"])
        for (model, entry) in try node["openai"].entries() {
            try entry.checkKeys(["input_per_1k", "output_per_1k"])
            prices.openAI[model] = (try micros(entry["input_per_1k"]), try micros(entry["output_per_1k"]))
        }
        return prices
    }

    static func mode(_ node: DocumentReader, default value: LimitCheck.Mode) throws(DocumentError) -> LimitCheck.Mode {
        guard let s = try node.string() else { return value }
        guard let m = LimitCheck.Mode(rawValue: s) else { throw node.error("expected enforce or report") }
        return m
    }

    static func timeZone(_ node: DocumentReader) throws(DocumentError) -> TimeZone {
        let name = try node.string() ?? "UTC"
        guard let tz = TimeZone(identifier: name) else { throw node.error("unknown IANA time zone '\(name)'") }
        return tz
    }

    static func positiveInt(_ node: DocumentReader, required: Bool = true) throws(DocumentError) -> Int? {
        guard let v = try node.int() else {
            if required { throw node.error("is required") }
            return nil
        }
        guard v >= 1 else { throw node.error("must be at least 1") }
        return v
    }

    /// OpenAI actions that bill no tokens (the adapter's `spendsNoTokens`; a test keeps the two equal).
    public static let tokenFreeOpenAIActions: Set<String> = ["models", "moderations", "traces", "stored_responses"]

    /// The tool whose calls each guard field judges (`max_body_bytes` and `mode` judge any call).
    static let guardOwners: [(key: String, tool: String)] = [
        ("allow_hosts", "http_fetch"), ("block_hosts", "http_fetch"), ("schemes", "http_fetch"), ("ports", "http_fetch"),
        ("methods", "http_fetch"), ("allow_cidrs", "http_fetch"), ("models", "openai"), ("max_tokens", "openai"),
        ("allow_stream", "openai"), ("allowed_domains", "gmail_send"), ("max_recipients", "gmail_send"),
        ("max_subject_bytes", "gmail_send"), ("max_email_body_bytes", "gmail_send"), ("reject_crlf", "gmail_send"),
        ("engines", "serpapi"), ("max_num", "serpapi"),
    ]

    static func compileRule(_ node: DocumentReader, id: String, isCIDR: (String) -> Bool = { _ in false }) throws(DocumentError) -> Rule {
        try node.checkKeys(["scope", "mode", "guards", "time_window", "rate", "quota", "budget", "approval"])
        guard let scopeText = try node["scope"].string(), let scope = ScopePattern(scopeText, known: knownActions) else {
            throw node["scope"].error("expected tool:action, tool:* or * for a known tool and action")
        }
        var rule = Rule(scope: scope, id: id)
        rule.mode = try mode(node["mode"], default: .enforce)
        rule.guardMode = rule.mode
        rule.timeWindowMode = rule.mode

        let g = node["guards"]
        try g.checkKeys([
            "allow_hosts", "block_hosts", "schemes", "ports", "methods", "models", "max_tokens", "allow_stream",
            "allowed_domains", "max_recipients", "max_subject_bytes", "max_email_body_bytes", "reject_crlf", "engines",
            "max_num", "max_body_bytes", "allow_cidrs", "mode",
        ])
        // A guard only the calls of another tool carry would be ignored without a word
        // (`guards: {models: [...]}` under `scope: serpapi:search` restricts nothing).
        if let tool = scope.tool {
            for (key, owner) in guardOwners where owner != tool && g[key].isPresent {
                throw g[key].error("judges \(owner) calls only; this rule's scope is \(scope)")
            }
        }
        func hosts(_ n: DocumentReader) throws(DocumentError) -> [HostPattern]? {
            guard let list = try n.strings() else { return nil }
            var out: [HostPattern] = []
            for (i, s) in list.enumerated() {
                guard let p = HostPattern(s) else {
                    throw DocumentError(path: "\(n.path)[\(i)]", message: "expected a host name or *.domain (no other wildcards)")
                }
                out.append(p)
            }
            return out
        }
        rule.guards.allowHosts = try hosts(g["allow_hosts"])
        rule.guards.blockHosts = try hosts(g["block_hosts"]) ?? []
        rule.guards.schemes = try g["schemes"].strings().map { Set($0.map { $0.lowercased() }) }
        if let ports = try g["ports"].elements().isEmpty ? nil : g["ports"].elements() {
            var set = Set<Int>()
            for p in ports {
                guard let v = try p.int(), (1...65535).contains(v) else { throw p.error("expected a port 1-65535") }
                set.insert(v)
            }
            rule.guards.ports = set
        }
        rule.guards.methods = try g["methods"].strings().map { Set($0.map { $0.uppercased() }) }
        rule.guards.models = try g["models"].strings().map(Set.init)
        rule.guards.maxTokens = try positiveInt(g["max_tokens"], required: false)
        rule.guards.allowStream = try g["allow_stream"].bool()
        rule.guards.allowedDomains = try hosts(g["allowed_domains"])
        rule.guards.maxRecipients = try positiveInt(g["max_recipients"], required: false)
        rule.guards.maxSubjectBytes = try positiveInt(g["max_subject_bytes"], required: false)
        rule.guards.maxEmailBodyBytes = try positiveInt(g["max_email_body_bytes"], required: false)
        rule.guards.rejectCRLF = try g["reject_crlf"].bool(default: true)
        rule.guards.engines = try g["engines"].strings().map { Set($0.map { $0.lowercased() }) }
        rule.guards.maxNum = try positiveInt(g["max_num"], required: false)
        rule.guards.maxBodyBytes = try positiveInt(g["max_body_bytes"], required: false)
        for (i, text) in (try g["allow_cidrs"].strings() ?? []).enumerated() {
            guard isCIDR(text) else { throw DocumentError(path: "\(g["allow_cidrs"].path)[\(i)]", message: "expected a CIDR like 10.20.0.0/16") }
            rule.guards.allowCIDRs.append(text)
        }
        rule.guardMode = try mode(g["mode"], default: rule.mode)

        let tw = node["time_window"]
        if tw.isPresent {
            try tw.checkKeys(["timezone", "days", "hours", "mode"])
            var days = Set<Int>()
            for (i, d) in (try tw["days"].strings() ?? Array(TimeWindow.dayNames.keys)).enumerated() {
                guard let n = TimeWindow.dayNames[d.lowercased()] else {
                    throw DocumentError(path: "\(tw["days"].path)[\(i)]", message: "expected mon, tue, wed, thu, fri, sat or sun")
                }
                days.insert(n)
            }
            var ranges: [TimeWindow.Range] = []
            for (i, h) in (try tw["hours"].strings() ?? []).enumerated() {
                guard let r = TimeWindow.parseRange(h) else {
                    throw DocumentError(path: "\(tw["hours"].path)[\(i)]", message: "expected HH:MM-HH:MM")
                }
                ranges.append(r)
            }
            rule.timeWindow = TimeWindow(timeZone: try timeZone(tw["timezone"]), days: days, ranges: ranges)
            rule.timeWindowMode = try mode(tw["mode"], default: rule.mode)
        }

        let rate = node["rate"]
        if rate.isPresent {
            try rate.checkKeys(["limit", "per", "burst", "mode"])
            let limit = try positiveInt(rate["limit"])!
            guard let per = try rate["per"].duration(), per > .zero else { throw rate["per"].error("expected a duration like 1s or 1m") }
            let burst = try positiveInt(rate["burst"], required: false) ?? 1
            let ms = Double(per.components.seconds) * 1000 + Double(per.components.attoseconds) / 1e15
            rule.rate = (limit, ms, burst, try mode(rate["mode"], default: rule.mode))
        }
        let quota = node["quota"]
        if quota.isPresent {
            try quota.checkKeys(["limit", "window", "timezone", "cost", "mode"])
            let limit = try positiveInt(quota["limit"])!
            guard let w = try quota["window"].string(), let period = CalendarPeriod(rawValue: w) else {
                throw quota["window"].error("expected hour, day, week or month")
            }
            let cost = try positiveInt(quota["cost"], required: false) ?? 1
            rule.quota = (limit, CalendarWindow(period: period, timeZone: try timeZone(quota["timezone"])), cost, try mode(quota["mode"], default: rule.mode))
        }
        let budget = node["budget"]
        if budget.isPresent {
            try budget.checkKeys(["tokens", "window", "timezone", "mode"])
            guard scope.tool == "openai" else { throw budget.error("budgets count OpenAI tokens: the rule's scope must be openai:*") }
            if let action = scope.action, tokenFreeOpenAIActions.contains(action) {
                throw budget.error("openai:\(action) spends no tokens: a budget there would count nothing")
            }
            let tokens = try positiveInt(budget["tokens"])!
            guard let w = try budget["window"].string(), let period = CalendarPeriod(rawValue: w) else {
                throw budget["window"].error("expected hour, day, week or month")
            }
            rule.budget = (tokens, CalendarWindow(period: period, timeZone: try timeZone(budget["timezone"])), try mode(budget["mode"], default: rule.mode))
        }
        let approval = node["approval"]
        if approval.isPresent {
            try approval.checkKeys(["required", "approvers", "expires", "hold"])
            if try approval["required"].bool(default: true) {
                var a = ApprovalRule()
                for (i, who) in (try approval["approvers"].strings() ?? []).enumerated() {
                    guard who.hasPrefix("agt_") || (who.hasPrefix("role:") && who.count > 5) else {
                        throw DocumentError(path: "\(approval["approvers"].path)[\(i)]", message: "expected an agent id (agt_…) or role:<name>")
                    }
                    a.approvers.append(who)
                }
                func ms(_ d: Duration) -> Int64 { d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000 }
                if let e = try approval["expires"].duration() {
                    guard e >= .seconds(1), e <= .seconds(7 * 86_400) else { throw approval["expires"].error("must be between 1s and 7d") }
                    a.expiresMilliseconds = ms(e)
                }
                if let h = try approval["hold"].duration() {
                    guard h >= .zero, h <= .seconds(300) else { throw approval["hold"].error("must be between 0s and 5m") }
                    a.holdMilliseconds = ms(h)
                }
                rule.approval = a
            }
        }
        return rule
    }
}
