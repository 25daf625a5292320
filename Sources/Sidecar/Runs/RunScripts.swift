/// The Lua scripts of the Redis run store. A run is a hash `{r:<root>}:<id>` (its fixed description as
/// JSON in `doc`; status, times and the ledger as fields: `s0`…`s5` spent, `r0`…`r5` reserved, `l0`…`l5`
/// limits, -1 for none), its events a stream `{r:<root>}:<id>:ev`. A run family shares the hash tag of its
/// root, so a reservation against a run and its ancestors is one script on one shard.
///
/// Ledger dimensions are in `RunLedger.values` order: calls, OpenAI tokens, searches, emails, fetch
/// bytes, cost in millionths of a dollar. The rules are `RunBook`'s and `RunBudget.reserve`'s, so both
/// stores pass the same contract tests.
enum RunScripts {
    /// Appends an event to stream `key`, trimming the oldest tenth past `max` with a marker first.
    /// (Shared by every script that writes events, so each of them stays one atomic step.)
    static let appendFunction = """
        local function append(key, max, etype, at, data)
          if redis.call('XLEN', key) >= max then
            local keep = max - math.max(1, math.floor(max / 10))
            redis.call('XTRIM', key, 'MAXLEN', keep)
            local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
            local before = first[1] and first[1][1] or ''
            redis.call('XADD', key, '*', 't', 'run.events_trimmed', 'a', at,
              'd', cjson.encode({trimmed_before = before, max_events = max}))
          end
          return redis.call('XADD', key, '*', 't', etype, 'a', at, 'd', data)
        end
        local dims = {'calls', 'openai_tokens', 'serpapi_searches', 'emails', 'fetch_bytes', 'cost_usd'}
        local function ledger(key)
          local v = redis.call('HMGET', key, 's0', 's1', 's2', 's3', 's4', 's5')
          local o = {}
          for i = 1, 6 do o[dims[i]] = tonumber(v[i]) or 0 end
          o.cost_usd = o.cost_usd / 1000000
          return o
        end
        local terminal = {completed = true, failed = true, cancelled = true}
        local function transition(hash, stream, max, target, command, reason, now)
          local cur = redis.call('HMGET', hash, 'status', 'started')
          local changed = cur[1] ~= target
          redis.call('HSET', hash, 'status', target)
          if target == 'running' and (cur[2] == false or cur[2] == '') then redis.call('HSET', hash, 'started', now) end
          if terminal[target] and changed then redis.call('HSET', hash, 'ended', now) end
          if changed and reason ~= '' then redis.call('HSET', hash, 'reason', reason) end
          if command == 'resume' then redis.call('HSET', hash, 'reason', '') end
          if changed then
            local data = {status = target, command = command}
            local r = redis.call('HGET', hash, 'reason')
            if r and r ~= '' then data.reason = r end
            if terminal[target] then data.final = true; data.ledger = ledger(hash) end
            append(stream, max, 'run.' .. target, now, cjson.encode(data))
          end
        end
        """

    /// KEYS: hash, stream. ARGV: max events, event type, at, data, then field/value pairs.
    /// Returns 1, or 0 when the run already exists.
    static let create = LuaScript(
        appendFunction + """

            if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
            local fields = {}
            for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
            redis.call('HSET', KEYS[1], unpack(fields))
            append(KEYS[2], tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4])
            return 1
            """)

    /// KEYS: hash, stream. ARGV: now, reason ('' for none), command, max events, then for each status in
    /// `RunStatus.allCases` order the status the command leads to, or `!<refusal code>`.
    /// Returns {1, HGETALL} after the change, {2, code} for a refusal, {0} for no such run.
    static let apply = LuaScript(
        appendFunction + """

            local cur = redis.call('HGET', KEYS[1], 'status')
            if not cur then return {0} end
            local statuses = {'created', 'running', 'paused', 'completed', 'failed', 'cancelled'}
            local outcome
            for i = 1, 6 do if statuses[i] == cur then outcome = ARGV[4 + i] end end
            if not outcome then return {0} end
            if string.sub(outcome, 1, 1) == '!' then return {2, string.sub(outcome, 2)} end
            transition(KEYS[1], KEYS[2], tonumber(ARGV[4]), outcome, ARGV[3], ARGV[2], ARGV[1])
            return {1, redis.call('HGETALL', KEYS[1])}
            """)

    /// KEYS: the chain's hashes (nearest first), then their streams. ARGV: now, agent, max events,
    /// the fixed charge (6), fetch up to, micros per MB.
    /// Returns {'ok', granted ledger (6)} | {'unknown'} | {'forbidden'} | {'status', index, status, reason}
    /// | {'expired', index} | {'exhausted', index, dimension index (1-6)}.
    static let reserve = LuaScript(
        appendFunction + """

            local n = #KEYS / 2
            local now = tonumber(ARGV[1])
            local owner = redis.call('HGET', KEYS[1], 'agent')
            if not owner then return {'unknown'} end
            if owner == '' then
              -- A run made without an agent belongs to the first agent that calls in it.
              redis.call('HSET', KEYS[1], 'agent', ARGV[2])
              owner = ARGV[2]
            end
            if owner ~= ARGV[2] then return {'forbidden'} end
            local fixed = {}
            for i = 1, 6 do fixed[i] = tonumber(ARGV[3 + i]) end
            local upto = tonumber(ARGV[10])
            local permb = tonumber(ARGV[11])
            local grant = upto
            local fields = {'status', 'started', 'maxdur', 'reason',
              's0', 's1', 's2', 's3', 's4', 's5', 'r0', 'r1', 'r2', 'r3', 'r4', 'r5', 'l0', 'l1', 'l2', 'l3', 'l4', 'l5'}
            for k = 1, n do
              local f = redis.call('HMGET', KEYS[k], unpack(fields))
              if not f[1] then return {'unknown'} end
              local maxdur = tonumber(f[3]) or 0
              local started = tonumber(f[2])
              if f[1] == 'running' and maxdur > 0 and started and now - started >= maxdur * 1000 then
                transition(KEYS[k], KEYS[n + k], tonumber(ARGV[3]), 'failed', 'fail', 'max_duration', ARGV[1])
                return {'expired', k}
              end
              if f[1] ~= 'running' then return {'status', k, f[1], f[4] or ''} end
              local held, lim = {}, {}
              for i = 1, 6 do
                held[i] = (tonumber(f[4 + i]) or 0) + (tonumber(f[10 + i]) or 0)
                lim[i] = tonumber(f[16 + i]) or -1
              end
              for i = 1, 6 do
                if fixed[i] > 0 and lim[i] >= 0 and held[i] + fixed[i] > lim[i] then return {'exhausted', k, i} end
              end
              if upto > 0 then
                if lim[5] >= 0 then
                  local room = lim[5] - held[5]
                  if room < 1 then return {'exhausted', k, 5} end
                  if room < grant then grant = room end
                end
                if lim[6] >= 0 and permb > 0 then
                  local room = lim[6] - held[6] - fixed[6]
                  local bytes = -1
                  if room > 0 then bytes = math.floor(room / permb) * 1048576 + math.floor((room % permb) * 1048576 / permb) end
                  if bytes < 1 then return {'exhausted', k, 6} end
                  if bytes < grant then grant = bytes end
                end
              end
            end
            local charge = {fixed[1], fixed[2], fixed[3], fixed[4], fixed[5], fixed[6]}
            if upto > 0 then
              charge[5] = grant
              if permb > 0 then
                charge[6] = charge[6] + math.floor(grant / 1048576) * permb + math.ceil((grant % 1048576) * permb / 1048576)
              end
            end
            for k = 1, n do
              for i = 1, 6 do
                if charge[i] ~= 0 then redis.call('HINCRBY', KEYS[k], 'r' .. (i - 1), charge[i]) end
              end
            end
            return {'ok', charge[1], charge[2], charge[3], charge[4], charge[5], charge[6]}
            """)

    /// KEYS: the chain's hashes. ARGV: reserved (6), actual (6). Reserved is released (never below zero),
    /// actual added to spent.
    static let settle = LuaScript(
        """
        for k = 1, #KEYS do
          if redis.call('EXISTS', KEYS[k]) == 1 then
            for i = 1, 6 do
              local r = tonumber(ARGV[i])
              if r ~= 0 then
                local v = redis.call('HINCRBY', KEYS[k], 'r' .. (i - 1), -r)
                if v < 0 then redis.call('HSET', KEYS[k], 'r' .. (i - 1), 0) end
              end
              local a = tonumber(ARGV[6 + i])
              if a ~= 0 then redis.call('HINCRBY', KEYS[k], 's' .. (i - 1), a) end
            end
          end
        end
        return 1
        """)

    /// KEYS: hash, stream. ARGV: agent ('' for any), max events, type, at, data.
    /// Returns the event id, or false when there is no such run (or it is another agent's).
    static let append = LuaScript(
        appendFunction + """

            local owner = redis.call('HGET', KEYS[1], 'agent')
            if not owner then return false end
            if ARGV[1] ~= '' and owner ~= ARGV[1] then return false end
            return append(KEYS[2], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5])
            """)

    static let all = [create, apply, reserve, settle, append]
}
