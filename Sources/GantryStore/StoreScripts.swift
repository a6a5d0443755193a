import GantryRedis

/// The Lua scripts behind ``RedisStateStore``: one per state transition, so each is atomic.
///
/// Every key of a run shares the hash tag `{run-id}`: `KEYS[1]` is the run hash
/// `<ns>:{R}:run` and every other key the scripts touch is derived from it with the same tag, so
/// they all live in one slot and the scripts stay valid on Redis Cluster.
///
/// Keys of a run (prefix `P = <ns>:{R}:`):
/// - `P run`      hash: `s` state, `name`, `spec`, `stages` (csv), `total`, `done`, `ok`, `failed`,
///                `created`, `fin`, `reason`, `stale` (refused commits), `ttl` (retention ms)
/// - `P in`       the run input
/// - `P n:<node>` hash per stage and per mapped element: `s` state, `e` epoch, `a` attempt,
///                `o` owner, `l` lease expiry, `k` leases lost, `p` pending dependencies,
///                `out` dependents (csv), `m` mapped upstream, `mp` max parallel, `N` elements,
///                `nx` next element to release, `left` unfinished elements, `ma` max attempts,
///                `mk` lost leases that make a task poison, `f` on-failure (`f` fail run, `c` continue),
///                `q` queued at, `st` started, `fin` finished, `ra` retry at, `err` error, `dl`
///                dead-lettered, `sz` result size
/// - `P r:<node>` the result bytes
/// - `P t`        sorted set of timers by due time: `L|node` lease expiry, `Q|node` queue
///                visibility deadline, `R|node` retry due, `D|` run deadline
/// - `P ev`       stream of every state change (capped)
///
/// Node states: `waiting queued running retrying succeeded failed skipped cancelled`.
/// Run states: `running succeeded failed cancelled`.
enum StoreScripts {
    /// Shared helpers, prepended to every script.
    static let prelude = """
        local RUN = KEYS[1]
        local P = string.sub(RUN, 1, -4)
        local T = P .. 't'
        local function nkey(node) return P .. 'n:' .. node end
        local function rkey(node) return P .. 'r:' .. node end
        local MAXEV = 10000
        local function event(kind, node, now, ...)
          redis.call('XADD', P .. 'ev', 'MAXLEN', '~', MAXEV, '*', 'k', kind, 'n', node, 't', now, ...)
        end
        local function split(csv)
          local out = {}
          if csv and csv ~= '' then for item in string.gmatch(csv, '[^,]+') do out[#out + 1] = item end end
          return out
        end
        local function stage_of(node)
          local b = string.find(node, '[', 1, true)
          if b then return string.sub(node, 1, b - 1), tonumber(string.sub(node, b + 1, -2)) end
          return node, nil
        end
        local FINAL = { succeeded = true, failed = true, skipped = true, cancelled = true }
        local function ttl_all(ttl)
          -- A finished run keeps its keys for the retention period, then Redis drops them.
          for _, stage in ipairs(split(redis.call('HGET', RUN, 'stages'))) do
            local sk = nkey(stage)
            local n = tonumber(redis.call('HGET', sk, 'N') or '0')
            redis.call('PEXPIRE', sk, ttl)
            redis.call('PEXPIRE', rkey(stage), ttl)
            for i = 0, n - 1 do
              local el = stage .. '[' .. i .. ']'
              redis.call('PEXPIRE', nkey(el), ttl)
              redis.call('PEXPIRE', rkey(el), ttl)
            end
          end
          for _, k in ipairs({ RUN, P .. 'in', P .. 'ev', T }) do redis.call('PEXPIRE', k, ttl) end
        end
        local function finish_run(state, now, reason)
          redis.call('HSET', RUN, 's', state, 'fin', now, 'reason', reason or '')
          -- Nothing that has not started will run now.
          for _, stage in ipairs(split(redis.call('HGET', RUN, 'stages'))) do
            local sk = nkey(stage)
            local v = redis.call('HMGET', sk, 's', 'N')
            if v[1] and not FINAL[v[1]] and v[1] ~= 'running' then
              redis.call('HSET', sk, 's', 'cancelled', 'fin', now)
            end
            for i = 0, tonumber(v[2] or '0') - 1 do
              local ek = nkey(stage .. '[' .. i .. ']')
              local es = redis.call('HGET', ek, 's')
              if es and not FINAL[es] and es ~= 'running' then redis.call('HSET', ek, 's', 'cancelled', 'fin', now) end
            end
          end
          local keep = {}
          local timers = redis.call('ZRANGE', T, 0, -1, 'WITHSCORES')
          for j = 1, #timers, 2 do
            if string.sub(timers[j], 1, 2) == 'L|' then keep[#keep + 1] = { timers[j + 1], timers[j] } end
          end
          redis.call('DEL', T)
          -- Leases of nodes still running stay, so that a lost worker's node is tidied by wake.
          for _, pair in ipairs(keep) do redis.call('ZADD', T, pair[1], pair[2]) end
          event('run', '', now, 's', state, 'reason', reason or '')
          ttl_all(tonumber(redis.call('HGET', RUN, 'ttl')))
        end
        local function queue_node(node, epoch, attempt, now, vis, out)
          redis.call('HSET', nkey(node), 's', 'queued', 'e', epoch, 'a', attempt, 'q', now, 'o', '')
          redis.call('ZADD', T, now + vis, 'Q|' .. node)
          out[#out + 1] = node
          out[#out + 1] = epoch
          out[#out + 1] = attempt
        end
        local function new_element(stage, i, sk, now, vis, out)
          local v = redis.call('HMGET', sk, 'ma', 'mk', 'f')
          redis.call('HSET', nkey(stage .. '[' .. i .. ']'), 'ma', v[1], 'mk', v[2], 'f', v[3], 'k', 0)
          queue_node(stage .. '[' .. i .. ']', 1, 1, now, vis, out)
        end
        -- Marks stages done (succeeded or skipped) and releases their dependents, breadth first:
        -- a dependent whose pending count reaches zero is queued, expanded (map) or, when one of
        -- its dependencies was skipped or failed, skipped in turn.
        local function settle(first, first_state, now, vis, out)
          local work = { { first, first_state } }
          local i = 1
          local running = redis.call('HGET', RUN, 's') == 'running'
          while i <= #work do
            local stage, state = work[i][1], work[i][2]
            i = i + 1
            local sk = nkey(stage)
            if state ~= 'failed' then redis.call('HSET', sk, 's', state, 'fin', now) end
            redis.call('HINCRBY', RUN, 'done', 1)
            if state == 'succeeded' then redis.call('HINCRBY', RUN, 'ok', 1) end
            if state ~= 'succeeded' then redis.call('HSET', RUN, 'blocked', 1) end
            event('stage', stage, now, 's', state)
            for _, dep in ipairs(split(redis.call('HGET', sk, 'out'))) do
              local dk = nkey(dep)
              if state ~= 'succeeded' then redis.call('HSET', dk, 'skip', stage) end
              local left = redis.call('HINCRBY', dk, 'p', -1)
              if left == 0 and running then
                local dv = redis.call('HMGET', dk, 'skip', 'm', 'mp')
                if dv[1] then
                  work[#work + 1] = { dep, 'skipped' }
                elseif dv[2] and dv[2] ~= '' then
                  local up = nkey(dv[2])
                  local n = tonumber(redis.call('HGET', up, 'N') or '-1')
                  if n < 0 then
                    local ok, list = pcall(cjson.decode, redis.call('GET', rkey(dv[2])) or 'null')
                    if ok and type(list) == 'table' then n = #list else n = -1 end
                  end
                  if n < 0 then
                    redis.call('HSET', dk, 's', 'failed', 'err', 'maps over ' .. dv[2] .. ', whose result is not a JSON list', 'fin', now)
                    redis.call('HINCRBY', RUN, 'failed', 1)
                    work[#work + 1] = { dep, 'failed' }
                  elseif n == 0 then
                    redis.call('HSET', dk, 'N', 0, 'nx', 0, 'left', 0)
                    work[#work + 1] = { dep, 'succeeded' }
                  else
                    local par = tonumber(dv[3] or '0')
                    if par <= 0 or par > n then par = n end
                    redis.call('HSET', dk, 's', 'running', 'N', n, 'nx', par, 'left', n, 'st', now)
                    for j = 0, par - 1 do new_element(dep, j, dk, now, vis, out) end
                  end
                else
                  queue_node(dep, tonumber(redis.call('HGET', dk, 'e') or '0') + 1, 1, now, vis, out)
                end
              end
            end
          end
        end
        local function check_complete(now)
          local v = redis.call('HMGET', RUN, 's', 'done', 'total', 'failed')
          if v[1] == 'running' and tonumber(v[2]) >= tonumber(v[3]) then
            if tonumber(v[4] or '0') > 0 then
              finish_run('failed', now, 'stages failed: ' .. (redis.call('HGET', RUN, 'failed_list') or ''))
              return 'failed'
            end
            finish_run('succeeded', now, '')
            return 'succeeded'
          end
          return ''
        end
        -- A node failed for good: dead-letter it, then fail the run or skip what depends on it.
        local function fail_node(node, now, err, vis, out)
          local stage, idx = stage_of(node)
          local nk = nkey(node)
          redis.call('HSET', nk, 's', 'failed', 'err', err, 'fin', now, 'dl', 1, 'o', '')
          redis.call('ZREM', T, 'L|' .. node, 'Q|' .. node, 'R|' .. node)
          event('node', node, now, 's', 'failed', 'err', err)
          local sk = nkey(stage)
          if idx then
            local ss = redis.call('HGET', sk, 's')
            if FINAL[ss] then return check_complete(now) end
            redis.call('HSET', sk, 's', 'failed', 'err', 'element ' .. idx .. ': ' .. err, 'fin', now)
          end
          redis.call('HINCRBY', RUN, 'failed', 1)
          local fl = redis.call('HGET', RUN, 'failed_list')
          redis.call('HSET', RUN, 'failed_list', (fl and fl ~= '') and (fl .. ',' .. stage) or stage)
          if redis.call('HGET', sk, 'f') == 'c' then
            settle(stage, 'failed', now, vis, out)
            return check_complete(now)
          end
          if redis.call('HGET', RUN, 's') == 'running' then
            finish_run('failed', now, 'stage ' .. stage .. ' failed: ' .. err)
            return 'failed'
          end
          return ''
        end

        """

    /// Creates a run unless it exists. Returns `{'created'|'exists', node, epoch, attempt, …}` with
    /// the root nodes to publish.
    ///
    /// ARGV: now, name, spec JSON, input, retention ms, visibility ms, deadline ms (0 none),
    /// stage count, then per stage: name, pending, dependents csv, map upstream, max parallel,
    /// on-failure (`f`/`c`), max attempts, max lost leases.
    static let createRun = RedisScript(name: "create_run", source: prelude + """
        if redis.call('EXISTS', RUN) == 1 then return { 'exists' } end
        local now, ttl, vis, deadline = tonumber(ARGV[1]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
        local count = tonumber(ARGV[8])
        local names = {}
        local out = { 'created' }
        for s = 0, count - 1 do
          local b = 9 + s * 8
          local name = ARGV[b]
          names[#names + 1] = name
          local sk = nkey(name)
          redis.call('HSET', sk, 's', 'waiting', 'p', ARGV[b + 1], 'out', ARGV[b + 2], 'm', ARGV[b + 3], 'mp', ARGV[b + 4],
            'f', ARGV[b + 5], 'ma', ARGV[b + 6], 'mk', ARGV[b + 7], 'e', 0, 'a', 0, 'k', 0)
          redis.call('PEXPIRE', sk, ttl * 4)
        end
        redis.call('HSET', RUN, 's', 'running', 'name', ARGV[2], 'spec', ARGV[3], 'stages', table.concat(names, ','),
          'total', count, 'done', 0, 'ok', 0, 'failed', 0, 'created', now, 'ttl', ttl, 'stale', 0)
        redis.call('SET', P .. 'in', ARGV[4])
        for s = 0, count - 1 do
          local b = 9 + s * 8
          if tonumber(ARGV[b + 1]) == 0 then queue_node(ARGV[b], 1, 1, now, vis, out) end
        end
        if deadline > 0 then redis.call('ZADD', T, deadline, 'D|') end
        -- Until the run finishes its keys carry a long safety TTL, so nothing outlives it by accident.
        for _, k in ipairs({ RUN, P .. 'in', T }) do redis.call('PEXPIRE', k, ttl * 4) end
        event('run', '', now, 's', 'running')
        redis.call('PEXPIRE', P .. 'ev', ttl * 4)
        return out
        """)

    /// Takes the lease on a queued node. Returns `{'ok', epoch, attempt}`, or `{'stale', epoch}`
    /// (a newer attempt exists), `{'busy'}` (leased elsewhere), `{'done'}`, `{'cancelled'}`,
    /// `{'gone'}` (no such run), `{'early'}` (not queued yet), or `{'poison', err}`.
    ///
    /// A node whose holder's lease has expired is taken over with a new epoch, so the old
    /// holder's late commit is refused.
    ///
    /// ARGV: node, epoch, owner, now, lease ms, visibility ms.
    static let claim = RedisScript(name: "claim", source: prelude + """
        local node, epoch, owner, now, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
        local nk = nkey(node)
        local v = redis.call('HMGET', nk, 's', 'e', 'l', 'a', 'k', 'mk')
        local s, e = v[1], tonumber(v[2] or '0')
        if not s then return { 'gone' } end
        if s == 'cancelled' or s == 'skipped' then return { 'cancelled' } end
        if FINAL[s] then return { 'done' } end
        if e ~= epoch then return { 'stale', e } end
        if s == 'running' then
          if tonumber(v[3] or '0') > now then return { 'busy' } end
          local lost = tonumber(v[5] or '0') + 1
          redis.call('HSET', nk, 'k', lost)
          if lost >= tonumber(v[6] or '3') then
            local err = 'worker lost ' .. lost .. ' times while running this task (poison task)'
            fail_node(node, now, err, tonumber(ARGV[6]), {})
            return { 'poison', err }
          end
          e = e + 1
        elseif s ~= 'queued' then
          return { 'early' }
        end
        redis.call('HSET', nk, 's', 'running', 'o', owner, 'e', e, 'l', now + ttl, 'st', now)
        redis.call('ZADD', T, now + ttl, 'L|' .. node)
        redis.call('ZREM', T, 'Q|' .. node)
        event('node', node, now, 's', 'running', 'o', owner, 'e', e)
        return { 'ok', e, tonumber(v[4] or '1') }
        """)

    /// Extends a lease. Returns `'ok'`, `'lost'` (the caller no longer holds it) or
    /// `'cancelled'` (the run was cancelled or failed: stop the work).
    ///
    /// ARGV: node, epoch, owner, now, lease ms.
    static let renew = RedisScript(name: "renew", source: prelude + """
        local node, epoch, owner, now, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
        local nk = nkey(node)
        local v = redis.call('HMGET', nk, 's', 'e', 'o')
        if v[1] ~= 'running' or tonumber(v[2]) ~= epoch or v[3] ~= owner then return 'lost' end
        if redis.call('HGET', RUN, 's') ~= 'running' then return 'cancelled' end
        redis.call('HSET', nk, 'l', now + ttl)
        redis.call('ZADD', T, now + ttl, 'L|' .. node)
        return 'ok'
        """)

    /// Hands a leased node back (graceful shutdown): it is queued again with the same epoch, so
    /// the redelivered message can claim it. Returns `'ok'` or `'lost'`.
    ///
    /// ARGV: node, epoch, owner, now, visibility ms.
    static let release = RedisScript(name: "release", source: prelude + """
        local node, epoch, owner, now, vis = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
        local nk = nkey(node)
        local v = redis.call('HMGET', nk, 's', 'e', 'o')
        if v[1] ~= 'running' or tonumber(v[2]) ~= epoch or v[3] ~= owner then return 'lost' end
        redis.call('HSET', nk, 's', 'queued', 'o', '', 'q', now)
        redis.call('ZREM', T, 'L|' .. node)
        redis.call('ZADD', T, now + vis, 'Q|' .. node)
        event('node', node, now, 's', 'queued', 'why', 'released')
        return 'ok'
        """)

    /// Commits a result if the caller holds the current epoch, marks the node done and queues
    /// every node that became ready. Returns `{'ok', run_state, node, epoch, attempt, …}` or
    /// `{'stale'}`; `run_state` is `''` unless this commit finished the run.
    ///
    /// ARGV: node, epoch, owner, now, result, result ttl ms, visibility ms.
    static let commit = RedisScript(name: "commit", source: prelude + """
        local node, epoch, owner, now, vis = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[7])
        local nk = nkey(node)
        local v = redis.call('HMGET', nk, 's', 'e', 'o')
        if v[1] ~= 'running' or tonumber(v[2]) ~= epoch or v[3] ~= owner then
          redis.call('HINCRBY', RUN, 'stale', 1)
          return { 'stale' }
        end
        redis.call('SET', rkey(node), ARGV[5], 'PX', ARGV[6])
        redis.call('HSET', nk, 's', 'succeeded', 'fin', now, 'sz', #ARGV[5], 'o', '')
        redis.call('ZREM', T, 'L|' .. node)
        event('node', node, now, 's', 'succeeded', 'e', epoch)
        local out = { 'ok', '' }
        local stage, idx = stage_of(node)
        if redis.call('HGET', RUN, 's') ~= 'running' then return out end
        if idx then
          local sk = nkey(stage)
          local sv = redis.call('HMGET', sk, 's', 'nx', 'N')
          if sv[1] ~= 'running' then return out end
          local nx, n = tonumber(sv[2]), tonumber(sv[3])
          if nx < n then
            redis.call('HSET', sk, 'nx', nx + 1)
            new_element(stage, nx, sk, now, vis, out)
          end
          if redis.call('HINCRBY', sk, 'left', -1) == 0 then settle(stage, 'succeeded', now, vis, out) end
        else
          settle(stage, 'succeeded', now, vis, out)
        end
        out[2] = check_complete(now)
        return out
        """)

    /// Records a failed attempt. A retriable failure with attempts left is delayed for retry
    /// (`{'retry', due_ms}`); otherwise the node is dead-lettered and the stage's failure policy
    /// applied (`{'dead', run_state, node, epoch, attempt, …}`). `{'stale'}` if the caller does not
    /// hold the node.
    ///
    /// ARGV: node, epoch, owner, now, error, retriable (0/1), backoff ms, visibility ms.
    static let fail = RedisScript(name: "fail", source: prelude + """
        local node, epoch, owner, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
        local err, retriable, backoff, vis = ARGV[5], ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
        local nk = nkey(node)
        local v = redis.call('HMGET', nk, 's', 'e', 'o', 'a', 'ma')
        if v[1] ~= 'running' or tonumber(v[2]) ~= epoch or v[3] ~= owner then
          redis.call('HINCRBY', RUN, 'stale', 1)
          return { 'stale' }
        end
        redis.call('ZREM', T, 'L|' .. node)
        if retriable and tonumber(v[4]) < tonumber(v[5]) and redis.call('HGET', RUN, 's') == 'running' then
          redis.call('HSET', nk, 's', 'retrying', 'err', err, 'ra', now + backoff, 'o', '')
          redis.call('ZADD', T, now + backoff, 'R|' .. node)
          event('node', node, now, 's', 'retrying', 'err', err, 'a', v[4])
          return { 'retry', now + backoff }
        end
        local out = { 'dead', '' }
        out[2] = fail_node(node, now, err, vis, out)
        return out
        """)

    /// Cancels a running run: every node not yet running is cancelled, running ones learn it
    /// at their next renew. Returns `'cancelled'` or the run's final state if it already ended.
    ///
    /// ARGV: now, reason.
    static let cancel = RedisScript(name: "cancel", source: prelude + """
        local s = redis.call('HGET', RUN, 's')
        if not s then return 'gone' end
        if s ~= 'running' then return s end
        finish_run('cancelled', tonumber(ARGV[1]), ARGV[2])
        return 'cancelled'
        """)

    /// Handles a run's due timers, at most `limit` of them: expired leases are re-queued with a
    /// new epoch (or dead-lettered as poison after too many), retries whose time has come are
    /// queued, queued nodes whose message may be lost are published again, and an expired run
    /// deadline fails the run. Returns `{run_state, more, node, epoch, attempt, …}` with the
    /// nodes to publish; `more` is 1 when further timers are due.
    ///
    /// ARGV: now, limit, visibility ms.
    static let wake = RedisScript(name: "wake", source: prelude + """
        local now, limit, vis = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
        local out = { '', 0 }
        local due = redis.call('ZRANGEBYSCORE', T, '-inf', now, 'LIMIT', 0, limit + 1)
        if #due > limit then out[2] = 1 end
        local running = redis.call('HGET', RUN, 's') == 'running'
        for i = 1, math.min(#due, limit) do
          local m = due[i]
          redis.call('ZREM', T, m)
          local kind, node = string.sub(m, 1, 1), string.sub(m, 3)
          if kind == 'D' then
            if running then
              finish_run('failed', now, 'run deadline exceeded')
              out[1] = 'failed'
              running = false
            end
          else
            local nk = nkey(node)
            local v = redis.call('HMGET', nk, 's', 'e', 'a', 'l', 'k', 'mk')
            local s = v[1]
            if not running then
              if s and not FINAL[s] then redis.call('HSET', nk, 's', 'cancelled', 'fin', now, 'o', '') end
            elseif kind == 'L' and s == 'running' and tonumber(v[4]) <= now then
              local lost = tonumber(v[5] or '0') + 1
              redis.call('HSET', nk, 'k', lost)
              if lost >= tonumber(v[6] or '3') then
                local state = fail_node(node, now, 'worker lost ' .. lost .. ' times while running this task (poison task)', vis, out)
                if state ~= '' then out[1] = state; running = false end
              else
                event('node', node, now, 's', 'queued', 'why', 'lease expired')
                queue_node(node, tonumber(v[2]) + 1, tonumber(v[3]) + 1, now, vis, out)
              end
            elseif kind == 'L' and s == 'running' then
              redis.call('ZADD', T, tonumber(v[4]), m)
            elseif kind == 'R' and s == 'retrying' then
              event('node', node, now, 's', 'queued', 'why', 'retry')
              queue_node(node, tonumber(v[2]) + 1, tonumber(v[3]) + 1, now, vis, out)
            elseif kind == 'Q' and s == 'queued' then
              redis.call('ZADD', T, now + vis, m)
              out[#out + 1] = node
              out[#out + 1] = tonumber(v[2])
              out[#out + 1] = tonumber(v[3])
            end
          end
        end
        return out
        """)

    /// Every script, for loading them all at start-up.
    static let all: [RedisScript] = [createRun, claim, renew, release, commit, fail, cancel, wake]
}
