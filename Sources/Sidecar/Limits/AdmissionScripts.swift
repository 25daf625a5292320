/// The Lua scripts that decide and settle a request's limits atomically inside Redis.
///
/// Time comes from Redis `TIME`, so host clocks do not matter. Every key of one request carries the
/// agent's hash tag (`{a:<agent>}`), so on Redis Cluster they live on one shard and one `EVALSHA`
/// decides them all. Semantics match `LimitState` exactly: every check is evaluated; if an enforce-mode
/// check refuses, nothing is counted; otherwise all checks are applied (report-mode ones included, so a
/// would-deny reflects real usage). Rate state is a GCRA TAT in microseconds.
enum AdmissionScripts {
    /// KEYS: per check — concurrency: 1 (zset), rate: 1, quota/budget: 2 (current and next window).
    /// ARGV: lease id, lease TTL ms, n, then 6 per check: kind (c|r|q|b), enforce (1|0), limit, p1, p2, p3
    ///   rate: p1 = interval µs, p2 = tolerance µs; quota/budget: p1 = cost, p2 = current end ms, p3 = next end ms.
    /// Returns {admitted, now_ms, then per check: allowed, remaining, reset_ms, window_index}.
    static let admit = LuaScript(
        """
        local t = redis.call('TIME')
        local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local now = math.floor(now_us / 1000)
        local lease = ARGV[1]
        local lease_ttl = tonumber(ARGV[2])
        local n = tonumber(ARGV[3])
        local ki = 1
        local res = {}
        local plan = {}
        local admitted = 1
        for i = 0, n - 1 do
          local b = 4 + i * 6
          local kind = ARGV[b]
          local enforce = ARGV[b + 1] == '1'
          local limit = tonumber(ARGV[b + 2])
          local p1 = tonumber(ARGV[b + 3])
          local p2 = tonumber(ARGV[b + 4])
          local p3 = tonumber(ARGV[b + 5])
          local allowed, remaining, reset, widx = 1, 0, 0, 0
          if kind == 'c' then
            local key = KEYS[ki]; ki = ki + 1
            redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
            local count = redis.call('ZCARD', key)
            if count < limit then remaining = limit - count - 1 else allowed = 0; reset = 1000 end
            if allowed == 1 then plan[#plan + 1] = {'c', key} end
          elseif kind == 'r' then
            local key = KEYS[ki]; ki = ki + 1
            local stored = tonumber(redis.call('GET', key))
            local tat = now_us
            if stored and stored > now_us then tat = stored end
            if tat - now_us > p2 then
              allowed = 0
              reset = math.ceil((tat - now_us - p2) / 1000)
            else
              local newtat = tat + p1
              remaining = math.floor((p2 - (newtat - now_us - p1)) / p1)
              plan[#plan + 1] = {'r', key, newtat}
            end
          else
            local key, wend = KEYS[ki], p2
            if now >= p2 then key, wend, widx = KEYS[ki + 1], p3, 1 end
            ki = ki + 2
            local used = tonumber(redis.call('GET', key)) or 0
            if used + p1 <= limit then remaining = limit - used - p1 else allowed = 0; remaining = math.max(0, limit - used) end
            reset = wend - now
            plan[#plan + 1] = {'q', key, p1, wend}
          end
          if allowed == 0 and enforce then admitted = 0 end
          res[#res + 1] = allowed
          res[#res + 1] = remaining
          res[#res + 1] = reset
          res[#res + 1] = widx
        end
        if admitted == 1 then
          for _, p in ipairs(plan) do
            if p[1] == 'c' then
              redis.call('ZADD', p[2], now + lease_ttl, lease)
              redis.call('PEXPIRE', p[2], lease_ttl)
            elseif p[1] == 'r' then
              redis.call('SET', p[2], string.format('%d', p[3]), 'PX', math.ceil((p[3] - now_us) / 1000) + 1000)
            else
              redis.call('INCRBY', p[2], p[3])
              redis.call('PEXPIREAT', p[2], p[4] + 3600000)
            end
          end
        end
        local out = {admitted, now}
        for _, v in ipairs(res) do out[#out + 1] = v end
        return out
        """)

    /// KEYS: one per settled check (the concurrency zset, or the quota/budget key of the window used).
    /// ARGV: lease id, n, then per check: kind (c|q), delta.
    static let settle = LuaScript(
        """
        local lease = ARGV[1]
        local n = tonumber(ARGV[2])
        for i = 0, n - 1 do
          local kind = ARGV[3 + i * 2]
          local delta = tonumber(ARGV[4 + i * 2])
          if kind == 'c' then
            redis.call('ZREM', KEYS[i + 1], lease)
          elseif delta ~= 0 then
            local v = redis.call('INCRBY', KEYS[i + 1], delta)
            if v < 0 then redis.call('INCRBY', KEYS[i + 1], -v) end
          end
        end
        return 1
        """)
}
