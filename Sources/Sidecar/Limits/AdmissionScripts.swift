/// The Lua scripts that decide and settle a request's limits atomically inside Redis.
///
/// Time comes from Redis `TIME`, so host clocks do not matter. Every key of one request carries the
/// agent's hash tag (`{a:<agent>}`), so on Redis Cluster they live on one shard and one `EVALSHA`
/// decides them all. Semantics match `LimitState` exactly: every check is evaluated; if an enforce-mode
/// check refuses, nothing is counted; otherwise all checks are applied (report-mode ones included, so a
/// would-deny reflects real usage). Rate state is a GCRA TAT in microseconds.
enum AdmissionScripts {
    /// KEYS: per check — concurrency: 1 (zset), rate: 1, quota/budget: 2 (current and next window).
    /// ARGV: lease id, lease TTL ms, n, then 7 per check: kind (c|r|q|b), enforce (1|0), limit, p1, p2, p3, want
    ///   rate: p1 = interval µs, p2 = tolerance µs; quota/budget: p1 = cost, p2 = current end ms, p3 = next end ms;
    ///   want: extra units to lease to this sidecar (`LimitLeases`), granted up to an eighth of the
    ///   headroom left after this request, only when the request is admitted.
    /// Returns {admitted, now_ms, then per check: allowed, remaining, reset_ms, window_index, extra}.
    /// Extra concurrency slots are members `<lease id>#<n>`; extra rate slots advance the TAT; extra
    /// quota/budget units are counted.
    ///
    /// Written for Redis's cost, which every request of the fleet waits on (measured with
    /// redis-benchmark, 30 arguments: 17.8 µs per call for the first version, 13.2 µs for this one):
    /// the plan of writes is two flat tables, not a table per check; expired leases are removed only
    /// when the count reaches the limit (below it they cannot change the decision; `remaining` may then
    /// count a lease that a crashed host never freed, until its TTL); a window's key gets its expiry
    /// once, when it is new, not on every call.
    static let admit = LuaScript(
        """
        local t = redis.call('TIME')
        local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local now = math.floor(now_us / 1000)
        local lease_ttl = tonumber(ARGV[2])
        local n = tonumber(ARGV[3])
        local out = {1, now}
        local ki = 1
        local admitted = 1
        local pk, pv = {}, {}
        for i = 0, n - 1 do
          local b = 4 + i * 7
          local kind = ARGV[b]
          local limit = tonumber(ARGV[b + 2])
          local allowed, remaining, reset, widx = 1, 0, 0, 0
          local key = KEYS[ki]
          if kind == 'c' then
            ki = ki + 1
            local count = redis.call('ZCARD', key)
            if count >= limit then
              redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
              count = redis.call('ZCARD', key)
            end
            if count < limit then remaining = limit - count - 1; pk[i + 1] = key else allowed = 0; reset = 1000 end
          elseif kind == 'r' then
            ki = ki + 1
            local p1 = tonumber(ARGV[b + 3])
            local p2 = tonumber(ARGV[b + 4])
            local tat = tonumber(redis.call('GET', key)) or now_us
            if tat < now_us then tat = now_us end
            if tat - now_us > p2 then
              allowed = 0
              reset = math.ceil((tat - now_us - p2) / 1000)
            else
              local newtat = tat + p1
              remaining = math.floor((p2 - (newtat - now_us - p1)) / p1)
              pk[i + 1] = key; pv[i + 1] = newtat
            end
          else
            local cost = tonumber(ARGV[b + 3])
            local wend = tonumber(ARGV[b + 4])
            if now >= wend then key, wend, widx = KEYS[ki + 1], tonumber(ARGV[b + 5]), 1 end
            ki = ki + 2
            local used = tonumber(redis.call('GET', key)) or 0
            if used + cost <= limit then remaining = limit - used - cost else allowed = 0; remaining = math.max(0, limit - used) end
            reset = wend - now
            pk[i + 1] = key
            if used == 0 then pv[i + 1] = wend end
          end
          if allowed == 0 and ARGV[b + 1] == '1' then admitted = 0 end
          out[3 + i * 5] = allowed
          out[4 + i * 5] = remaining
          out[5 + i * 5] = reset
          out[6 + i * 5] = widx
          out[7 + i * 5] = 0
        end
        if admitted == 1 then
          for i = 0, n - 1 do
            local key = pk[i + 1]
            if key then
              local b = 4 + i * 7
              local kind = ARGV[b]
              local want = tonumber(ARGV[b + 6])
              local extra = 0
              if want > 0 then extra = math.min(want, math.floor(out[4 + i * 5] / 8)) end
              out[7 + i * 5] = extra
              if kind == 'c' then
                if extra > 0 then
                  local members = {}
                  for j = 1, extra do members[#members + 1] = now + lease_ttl; members[#members + 1] = ARGV[1] .. '#' .. j end
                  redis.call('ZADD', key, unpack(members))
                end
                redis.call('ZADD', key, now + lease_ttl, ARGV[1])
                redis.call('PEXPIRE', key, lease_ttl)
              elseif kind == 'r' then
                local v = pv[i + 1] + extra * tonumber(ARGV[b + 3])
                redis.call('SET', key, string.format('%d', v), 'PX', math.ceil((v - now_us) / 1000) + 1000)
              else
                redis.call('INCRBY', key, tonumber(ARGV[b + 3]) + extra)
                -- A new window's key gets its expiry once (an hour after the window, for late settlements).
                if pv[i + 1] then redis.call('PEXPIREAT', key, pv[i + 1] + 3600000) end
              end
            end
          end
        else
          out[1] = 0
        end
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

    /// KEYS: the agent's concurrency zset. ARGV: lease TTL ms, then the lease ids to extend. Extends
    /// only leases still present (`XX`): one that was released or swept stays gone. The key's own
    /// expiry moves with the latest lease.
    static let renew = LuaScript(
        """
        local t = redis.call('TIME')
        local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
        local n = 0
        for i = 2, #ARGV do
          n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', until_ms, ARGV[i])
        end
        if n > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1])) end
        return n
        """)

    /// Gives back units a sidecar leased and did not spend (`LimitLeases.GiveBack`).
    /// KEYS: one per item. ARGV: n, then per item: kind (q|r|c), amount (units; rate: µs to move the TAT
    /// back), count of members, members… (concurrency slots).
    /// A quota/budget counter never goes below zero; a TAT moved back to the past is deleted (the same as
    /// idle); released slots are removed from the lease set.
    static let giveBack = LuaScript(
        """
        local t = redis.call('TIME')
        local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local a = 2
        for i = 1, tonumber(ARGV[1]) do
          local kind, amount, m = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
          local key = KEYS[i]
          if kind == 'q' and amount > 0 then
            local v = redis.call('DECRBY', key, amount)
            if v < 0 then redis.call('INCRBY', key, -v) end
          elseif kind == 'r' and amount > 0 then
            local tat = tonumber(redis.call('GET', key))
            if tat then
              tat = tat - amount
              if tat <= now_us then redis.call('DEL', key)
              else redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now_us) / 1000) + 1000) end
            end
          elseif kind == 'c' and m > 0 then
            redis.call('ZREM', key, unpack(ARGV, a + 3, a + 2 + m))
          end
          a = a + 3 + m
        end
        return 1
        """)

    static let all = [admit, settle, renew, giveBack]
}
