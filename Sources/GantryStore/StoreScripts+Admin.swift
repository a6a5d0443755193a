import GantryRedis

/// Scripts behind the operator commands (`gantry retry`, `gantry dlq requeue`).
///
/// They follow the run key layout documented on ``StoreScripts`` but carry their own small
/// prelude, so they depend on that layout only, not on the helpers of the hot-path scripts.
enum AdminScripts {
    /// Key names, the event log and the helpers the admin scripts share.
    static let prelude = """
        local RUN = KEYS[1]
        local P = string.sub(RUN, 1, -4)
        local T = P .. 't'
        local NODES = P .. 'n'
        local FINAL = { succeeded = true, failed = true, skipped = true, cancelled = true }
        """ + "\n" + StoreScripts.nodeFields + """
        -- `del(node, f1, f2, …)` unsets fields.
        local function del(node, ...)
          local names = { ... }
          local other, r = {}, nil
          for j = 1, #names do
            local i = RECF[names[j]]
            if i then
              if r == nil then r = record(node) or false end
              if r then r[i] = (i == 2 or i == 3) and '0' or '' end
            else
              other[#other + 1] = node .. '.' .. names[j]
            end
          end
          if r then redis.call('HSET', NODES, node, table.concat(r, '|', 1, 10)) end
          if #other > 0 then redis.call('HDEL', NODES, unpack(other)) end
        end
        local function event(kind, node, now, ...)
          redis.call('XADD', P .. 'ev', 'MAXLEN', '~', 10000, '*', 'k', kind, 'n', node, 't', now, ...)
        end
        local function split(csv)
          local out = {}
          if csv and csv ~= '' then for item in string.gmatch(csv, '[^,]+') do out[#out + 1] = item end end
          return out
        end

        """

    /// Re-runs the failed stages of a run (all of them, or those named) and everything that did
    /// not run because of them, in one atomic step.
    ///
    /// The stages reset are the selected failed stages plus every skipped or cancelled stage
    /// (cancelled: stopped when the run failed). Walking the stages in dependency order, each
    /// reset stage, and each stage still waiting, gets its pending count recomputed from what
    /// its dependencies will be: a stage whose dependencies have all succeeded is queued with a
    /// new epoch and a fresh attempt count; one with a dependency that stays failed is skipped;
    /// the others wait. A mapped stage that had fanned out keeps its succeeded elements and
    /// queues the others again (never more than `max_parallel`: only elements that were in
    /// flight or failed are re-queued, and each completion releases the next as before); its
    /// elements still in flight are left to finish.
    /// A failed run becomes running again, with a fresh deadline when the pipeline has one.
    ///
    /// Everything is checked before anything is written, so a refusal changes nothing.
    ///
    /// Returns `{'ok', retried csv, reset csv, node, epoch, attempt, …}` with the nodes to
    /// publish, or `{'refused', code, detail, run state}` with code `gone` (no such run),
    /// `state` (the run succeeded or was cancelled), `stage` (a named stage is not failed),
    /// `nofailed` (no failed stage to retry), `notlist` (a mapped stage's upstream result is
    /// not a JSON list) or `nothing` (nothing would run).
    ///
    /// ARGV: now, visibility ms, deadline ms (0 none), selected stages csv (empty: every failed
    /// stage), stage count, then per stage in dependency order: name, its dependencies csv.
    static let retry = RedisScript(name: "admin_retry", source: prelude + """
        local now, vis, deadline = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
        local rs = redis.call('HGET', RUN, 's')
        if not rs then return { 'refused', 'gone', '', '' } end
        if rs ~= 'running' and rs ~= 'failed' then return { 'refused', 'state', rs, rs } end
        local selected, any_selected = {}, false
        for _, name in ipairs(split(ARGV[4])) do selected[name] = true; any_selected = true end
        local order, after, cur = {}, {}, {}
        for i = 0, tonumber(ARGV[5]) - 1 do
          local name = ARGV[6 + 2 * i]
          order[#order + 1] = name
          after[name] = split(ARGV[7 + 2 * i])
          cur[name] = mget(name, 's', 'm', 'N', 'nx', 'e', 'mp')
        end
        for name in pairs(selected) do
          local v = cur[name]
          if not v then return { 'refused', 'stage', name .. ':unknown', rs } end
          if v[1] ~= 'failed' then return { 'refused', 'stage', name .. ':' .. (v[1] or 'unknown'), rs } end
        end
        -- The stages to reset.
        local reset, retried = {}, {}
        for _, x in ipairs(order) do
          local s = cur[x][1]
          if s == 'failed' and (not any_selected or selected[x]) then
            reset[x] = true
            retried[#retried + 1] = x
          elseif s == 'skipped' or s == 'cancelled' then
            reset[x] = true
          end
        end
        if #retried == 0 and rs == 'running' then return { 'refused', 'nofailed', '', rs } end
        -- What each stage will be, in dependency order; nothing is written yet.
        local post, action, pend_of, skip_of, size_of = {}, {}, {}, {}, {}
        for _, x in ipairs(order) do
          local v = cur[x]
          local s = v[1]
          if reset[x] or s == 'waiting' then
            local pend, skip = 0, nil
            for _, d in ipairs(after[x]) do
              local ps = post[d]
              if ps == 'succeeded' then
              elseif FINAL[ps] then skip = skip or d
              else pend = pend + 1 end
            end
            pend_of[x], skip_of[x] = pend, skip
            if pend > 0 then
              post[x], action[x] = 'waiting', 'wait'
            elseif skip then
              post[x], action[x] = 'skipped', 'skip'
            elseif not reset[x] then
              post[x] = s
            elseif v[2] and v[2] ~= '' then
              if tonumber(v[3] or '-1') > 0 then
                action[x] = 'elements'
              else
                local n = tonumber(get(v[2], 'N') or '-1')
                if n < 0 then
                  local ok, list = pcall(cjson.decode, redis.call('HGET', P .. 'r', v[2]) or 'null')
                  if ok and type(list) == 'table' then n = #list end
                end
                if n < 0 then return { 'refused', 'notlist', x .. ':' .. v[2], rs } end
                size_of[x], action[x] = n, 'expand'
              end
              post[x] = 'running'
              if action[x] == 'expand' and size_of[x] == 0 then post[x] = 'succeeded' end
            else
              post[x], action[x] = 'queued', 'queue'
            end
          else
            post[x] = s
          end
        end
        local done, failed, failed_list = 0, 0, {}
        for _, x in ipairs(order) do
          if FINAL[post[x]] then done = done + 1 end
          if post[x] == 'failed' then
            failed = failed + 1
            failed_list[#failed_list + 1] = x
          end
        end
        if done == #order then return { 'refused', 'nothing', '', rs } end

        -- Apply.
        local out = { 'ok', table.concat(retried, ','), '' }
        local reset_names = {}
        local function clear(node)
          del(node, 'err', 'dl', 'fin', 'st', 'sz', 'o', 'l', 'ra', 'skip', 'q')
        end
        local function queue(node, epoch)
          set(node, 's', 'queued', 'e', epoch, 'a', 1, 'q', now, 'o', '', 'k', 0)
          redis.call('ZADD', T, now + vis, node)
          event('node', node, now, 's', 'queued', 'why', 'retry')
          out[#out + 1] = node
          out[#out + 1] = epoch
          out[#out + 1] = 1
        end
        -- Elements take their retry and poison limits from their stage.
        local function element(stage, i)
          local node = stage .. '[' .. i .. ']'
          local e = tonumber(get(node, 'e') or '0')
          clear(node)
          queue(node, e + 1)
        end
        for _, x in ipairs(order) do
          local a = action[x]
          if reset[x] then reset_names[#reset_names + 1] = x end
          if a == 'wait' then
            if reset[x] then
              clear(x)
              del(x, 'N', 'nx', 'left')
              set(x, 's', 'waiting', 'a', 0, 'k', 0)
              event('stage', x, now, 's', 'waiting', 'why', 'retry')
            end
            set(x, 'p', pend_of[x])
            if skip_of[x] then set(x, 'skip', skip_of[x]) else del(x, 'skip') end
          elseif a == 'skip' then
            clear(x)
            set(x, 's', 'skipped', 'fin', now, 'skip', skip_of[x], 'p', 0)
            event('stage', x, now, 's', 'skipped')
          elseif a == 'queue' then
            clear(x)
            set(x, 'p', 0)
            queue(x, tonumber(cur[x][5] or '0') + 1)
          elseif a == 'expand' then
            local n = size_of[x]
            clear(x)
            if n == 0 then
              set(x, 's', 'succeeded', 'N', 0, 'nx', 0, 'left', 0, 'p', 0, 'fin', now)
              event('stage', x, now, 's', 'succeeded')
            else
              local par = tonumber(cur[x][6] or '0')
              if par <= 0 or par > n then par = n end
              set(x, 's', 'running', 'N', n, 'nx', par, 'left', n, 'st', now, 'p', 0, 'k', 0)
              event('stage', x, now, 's', 'running', 'why', 'retry')
              for j = 0, par - 1 do element(x, j) end
            end
          elseif a == 'elements' then
            local n, nx = tonumber(cur[x][3]), tonumber(cur[x][4] or '0')
            local ok, busy = 0, 0
            clear(x)
            for i = 0, nx - 1 do
              local es = get(x .. '[' .. i .. ']', 's')
              if es == 'succeeded' then
                ok = ok + 1
              elseif es and not FINAL[es] then
                -- Still in flight (the run went on after the stage failed): it counts when it ends.
                busy = busy + 1
              else
                element(x, i)
                busy = busy + 1
              end
            end
            -- Every element released so far had succeeded: release the next ones.
            if busy == 0 and nx < n then
              local par = tonumber(cur[x][6] or '0')
              if par <= 0 then par = n end
              local last = math.min(n, nx + par) - 1
              for j = nx, last do element(x, j) end
              nx = last + 1
            end
            set(x, 's', 'running', 'nx', nx, 'left', n - ok, 'st', now, 'p', 0, 'k', 0)
            event('stage', x, now, 's', 'running', 'why', 'retry')
          end
        end
        out[3] = table.concat(reset_names, ',')
        redis.call('HSET', RUN, 's', 'running', 'done', done, 'failed', failed, 'failed_list', table.concat(failed_list, ','), 'reason', '')
        redis.call('HDEL', RUN, 'fin')
        if rs ~= 'running' then
          if deadline > 0 then redis.call('ZADD', T, deadline, '|D') end
          event('run', '', now, 's', 'running', 'why', 'retry')
          local ttl = tonumber(redis.call('HGET', RUN, 'ttl') or '0')
          if ttl > 0 then
            for _, k in ipairs({ RUN, P .. 'in', NODES, T, P .. 'ev' }) do redis.call('PEXPIRE', k, ttl * 4) end
          end
        end
        return out
        """)
}
