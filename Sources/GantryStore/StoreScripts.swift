import GantryRedis

/// The Lua scripts behind ``RedisStateStore``: one per state transition, so each is atomic.
///
/// Every key of a run shares the hash tag `{run-id}`: `KEYS[1]` is the run hash
/// `<ns>:{R}:run` and every other key the scripts touch is derived from it with the same tag, so
/// they all live in one slot and the scripts stay valid on Redis Cluster. The batch scripts
/// (``claimBatch``, ``commitBatch``) take one run key per item and switch to each in turn with
/// `use_run`; every key they touch is declared in `KEYS`, so on a cluster they stay valid when
/// their items are grouped by hash slot.
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
/// - `P t`        sorted set of timers, one member per node whose score is when it needs
///                attention: a running node's lease expiry, a queued node's visibility
///                deadline, a retrying node's due time; plus `|D` for the run deadline
/// - `P ev`       stream of every state change (capped)
///
/// Node states: `waiting queued running retrying succeeded failed skipped cancelled`.
/// Run states: `running succeeded failed cancelled`.
enum StoreScripts {
    /// What every script needs: key names and the event log.
    static let base = """
        local RUN, P, T
        local function use_run(key)
          RUN = key
          P = string.sub(key, 1, -4)
          T = P .. 't'
        end
        if KEYS[1] then use_run(KEYS[1]) end
        local function nkey(node) return P .. 'n:' .. node end
        local function event(kind, node, now, ...)
          redis.call('XADD', P .. 'ev', 'MAXLEN', '~', 10000, '*', 'k', kind, 'n', node, 't', now, ...)
        end

        """

    /// Helpers of the scripts that move a run forward: completion, fan-out, failure policies.
    static let full = base + """
        local function rkey(node) return P .. 'r:' .. node end
        local FINAL = { succeeded = true, failed = true, skipped = true, cancelled = true }
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
        local function each_node(fn)
          for _, stage in ipairs(split(redis.call('HGET', RUN, 'stages'))) do
            fn(stage)
            local n = tonumber(redis.call('HGET', nkey(stage), 'N') or '0')
            for i = 0, n - 1 do fn(stage .. '[' .. i .. ']') end
          end
        end
        local function finish_run(state, now, reason)
          redis.call('HSET', RUN, 's', state, 'fin', now, 'reason', reason or '')
          -- Nothing unfinished will run now; a running node's worker learns it at its next renew.
          -- (In a run that succeeded every node is final already, so that run skips the walk.)
          if state ~= 'succeeded' then
            each_node(function(node)
              local nk = nkey(node)
              local s = redis.call('HGET', nk, 's')
              if s and not FINAL[s] then redis.call('HSET', nk, 's', 'cancelled', 'fin', now) end
            end)
          end
          -- Node hashes keep the safety TTL they were created with and results their result TTL,
          -- so finishing costs the same for one stage or ten thousand.
          local ttl = tonumber(redis.call('HGET', RUN, 'ttl'))
          redis.call('DEL', T)
          event('run', '', now, 's', state, 'reason', reason or '')
          for _, k in ipairs({ RUN, P .. 'in', P .. 'ev' }) do redis.call('PEXPIRE', k, ttl) end
        end
        local function queue_node(node, epoch, attempt, now, vis, out)
          redis.call('HSET', nkey(node), 's', 'queued', 'e', epoch, 'a', attempt, 'q', now, 'o', '')
          redis.call('ZADD', T, now + vis, node)
          out[#out + 1] = node
          out[#out + 1] = epoch
          out[#out + 1] = attempt
        end
        local function new_element(stage, i, sk, now, vis, out)
          local v = redis.call('HMGET', sk, 'ma', 'mk', 'f', 'x')
          local ek = nkey(stage .. '[' .. i .. ']')
          redis.call('HSET', ek, 'ma', v[1], 'mk', v[2], 'f', v[3], 'k', 0)
          redis.call('PEXPIRE', ek, v[4])
          queue_node(stage .. '[' .. i .. ']', 1, 1, now, vis, out)
        end
        -- Marks stages done (succeeded, skipped or failed) and releases their dependents, breadth
        -- first: a dependent whose pending count reaches zero is queued, expanded (map) or, when
        -- one of its dependencies did not succeed, skipped in turn. `first_out` is the first
        -- stage's dependents when the caller has already recorded its new state.
        -- Returns the run's done count after the last stage.
        local function settle(first, first_state, now, vis, out, first_out, run_state)
          local work = { { first, first_state } }
          local i = 1
          local done = 0
          local running = (run_state or redis.call('HGET', RUN, 's')) == 'running'
          while i <= #work do
            local stage, state = work[i][1], work[i][2]
            local sk = nkey(stage)
            local deps
            if i == 1 and first_out then
              deps = first_out
            else
              if state ~= 'failed' then redis.call('HSET', sk, 's', state, 'fin', now) end
              event('stage', stage, now, 's', state)
              deps = redis.call('HGET', sk, 'out')
            end
            i = i + 1
            done = redis.call('HINCRBY', RUN, 'done', 1)
            for _, dep in ipairs(split(deps)) do
              local dk = nkey(dep)
              if state ~= 'succeeded' then redis.call('HSET', dk, 'skip', stage) end
              if redis.call('HINCRBY', dk, 'p', -1) == 0 and running then
                local dv = redis.call('HMGET', dk, 'skip', 'm', 'mp')
                if dv[1] then
                  work[#work + 1] = { dep, 'skipped' }
                elseif dv[2] and dv[2] ~= '' then
                  local n = tonumber(redis.call('HGET', nkey(dv[2]), 'N') or '-1')
                  if n < 0 then
                    local ok, list = pcall(cjson.decode, redis.call('GET', rkey(dv[2])) or 'null')
                    if ok and type(list) == 'table' then n = #list end
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
          return done
        end
        -- Ends the run when every stage is done. Returns the run's new state, or ''.
        local function check_complete(now, done, total)
          -- The caller that knows the run's size and done count spares a read on the common path.
          if done and total and done < total then return '' end
          local v = redis.call('HMGET', RUN, 's', 'done', 'total', 'failed', 'failed_list')
          if v[1] ~= 'running' or tonumber(done or v[2]) < tonumber(v[3]) then return '' end
          if tonumber(v[4] or '0') > 0 then
            finish_run('failed', now, 'stages failed: ' .. (v[5] or ''))
            return 'failed'
          end
          finish_run('succeeded', now, '')
          return 'succeeded'
        end
        -- A node failed for good: dead-letter it, then fail the run or skip what depends on it.
        local function fail_node(node, now, err, vis, out)
          local stage, idx = stage_of(node)
          local nk = nkey(node)
          redis.call('HSET', nk, 's', 'failed', 'err', err, 'fin', now, 'dl', 1)
          redis.call('ZREM', T, node)
          event('node', node, now, 's', 'failed', 'err', err)
          local sk = nkey(stage)
          if idx then
            if FINAL[redis.call('HGET', sk, 's')] then return check_complete(now) end
            redis.call('HSET', sk, 's', 'failed', 'err', 'element ' .. idx .. ': ' .. err, 'fin', now)
          end
          redis.call('HINCRBY', RUN, 'failed', 1)
          local fl = redis.call('HGET', RUN, 'failed_list')
          redis.call('HSET', RUN, 'failed_list', (fl and fl ~= '') and (fl .. ',' .. stage) or stage)
          if redis.call('HGET', sk, 'f') == 'c' then
            return check_complete(now, settle(stage, 'failed', now, vis, out))
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
    static let createRun = RedisScript(name: "create_run", source: full + """
        if redis.call('EXISTS', RUN) == 1 then return { 'exists' } end
        local now, ttl, vis, deadline = tonumber(ARGV[1]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
        local count = tonumber(ARGV[8])
        local names = {}
        local out = { 'created' }
        for s = 0, count - 1 do
          local b = 9 + s * 8
          names[#names + 1] = ARGV[b]
          local sk = nkey(ARGV[b])
          redis.call('HSET', sk, 's', 'waiting', 'p', ARGV[b + 1], 'out', ARGV[b + 2], 'm', ARGV[b + 3], 'mp', ARGV[b + 4],
            'f', ARGV[b + 5], 'ma', ARGV[b + 6], 'mk', ARGV[b + 7], 'e', 0, 'a', 0, 'k', 0, 'x', ttl * 4)
          -- Node hashes carry a safety TTL of four retention periods from creation, so nothing
          -- outlives a run by accident; the run's own keys get the retention period when it ends.
          redis.call('PEXPIRE', sk, ttl * 4)
        end
        redis.call('HSET', RUN, 's', 'running', 'name', ARGV[2], 'spec', ARGV[3], 'stages', table.concat(names, ','),
          'total', count, 'done', 0, 'failed', 0, 'created', now, 'ttl', ttl, 'stale', 0)
        redis.call('SET', P .. 'in', ARGV[4])
        for s = 0, count - 1 do
          local b = 9 + s * 8
          if tonumber(ARGV[b + 1]) == 0 then queue_node(ARGV[b], 1, 1, now, vis, out) end
        end
        if deadline > 0 then redis.call('ZADD', T, deadline, '|D') end
        event('run', '', now, 's', 'running')
        for _, k in ipairs({ RUN, P .. 'in', T, P .. 'ev' }) do redis.call('PEXPIRE', k, ttl * 4) end
        return out
        """)

    /// Takes the leases on queued nodes, possibly of many runs, in one call: `KEYS[i]` is the run
    /// of item `i`. Returns one reply per item: `{'ok', epoch, attempt}`, or `{'stale', epoch}`
    /// (a newer attempt exists), `{'busy'}` (leased, possibly by a worker that died: the
    /// coordinator's wake re-queues it once the lease expires), `{'done'}`, `{'cancelled'}`,
    /// `{'gone'}` (no such run) or `{'early'}` (not queued yet).
    ///
    /// ARGV: owner, now, lease ms, then per item: node, epoch.
    static let claimBatch = RedisScript(name: "claim_batch", source: claimFunction + """
        local owner, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
        local out = {}
        for i = 1, #KEYS do
          use_run(KEYS[i])
          out[i] = claim_node(ARGV[2 + 2 * i], tonumber(ARGV[3 + 2 * i]), owner, now, ttl)
        end
        return out
        """)

    /// `claim_node(node, epoch, owner, now, lease ms)`: the claim of one node of the current run.
    static let claimFunction = base + """
        local function claim_node(node, epoch, owner, now, ttl)
          local nk = nkey(node)
          local v = redis.call('HMGET', nk, 's', 'e', 'a')
          local s = v[1]
          if not s then return { 'gone' } end
          if s == 'queued' then
            local e = tonumber(v[2])
            if e ~= epoch then return { 'stale', e } end
            redis.call('HSET', nk, 's', 'running', 'o', owner, 'l', now + ttl, 'st', now)
            redis.call('ZADD', T, now + ttl, node)
            event('node', node, now, 's', 'running', 'o', owner, 'e', e)
            return { 'ok', e, tonumber(v[3]) }
          end
          if s == 'cancelled' or s == 'skipped' then return { 'cancelled' } end
          if s == 'succeeded' or s == 'failed' then return { 'done' } end
          if tonumber(v[2]) ~= epoch then return { 'stale', tonumber(v[2]) } end
          if s == 'running' then return { 'busy' } end
          return { 'early' }
        end

        """

    /// Extends a lease. Returns `'ok'`, `'lost'` (the caller no longer holds it) or
    /// `'cancelled'` (the run was cancelled or failed: stop the work).
    ///
    /// ARGV: node, epoch, owner, now, lease ms.
    static let renew = RedisScript(name: "renew", source: base + """
        local node, epoch, owner, now, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
        local nk = nkey(node)
        local v = redis.call('HMGET', nk, 's', 'e', 'o')
        if tonumber(v[2]) ~= epoch or v[3] ~= owner then return 'lost' end
        if v[1] == 'cancelled' then return 'cancelled' end
        if v[1] ~= 'running' then return 'lost' end
        redis.call('HSET', nk, 'l', now + ttl)
        redis.call('ZADD', T, now + ttl, node)
        return 'ok'
        """)

    /// Hands a leased node back (graceful shutdown): it is queued again with the same epoch, so
    /// the redelivered message can claim it. Returns `'ok'` or `'lost'`.
    ///
    /// ARGV: node, epoch, owner, now, visibility ms.
    static let release = RedisScript(name: "release", source: base + """
        local node, epoch, owner, now, vis = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
        local nk = nkey(node)
        local v = redis.call('HMGET', nk, 's', 'e', 'o')
        if v[1] ~= 'running' or tonumber(v[2]) ~= epoch or v[3] ~= owner then return 'lost' end
        redis.call('HSET', nk, 's', 'queued', 'o', '', 'q', now)
        redis.call('ZADD', T, now + vis, node)
        event('node', node, now, 's', 'queued', 'why', 'released')
        return 'ok'
        """)

    /// Commits results, possibly of many runs, in one call: `KEYS[i]` is the run of item `i`.
    /// Each result is written only if the caller holds the node's current epoch; the node is
    /// marked done and every node that became ready is queued. Returns one reply per item:
    /// `{'ok', run_state, node, epoch, attempt, …}` or `{'stale'}`; `run_state` is `''` unless
    /// that commit finished the run.
    ///
    /// ARGV: owner, now, result ttl ms, visibility ms, then per item: node, epoch, result.
    static let commitBatch = RedisScript(name: "commit_batch", source: commitFunction + """
        local owner, now, rttl, vis = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
        local out = {}
        for i = 1, #KEYS do
          use_run(KEYS[i])
          out[i] = commit_node(ARGV[2 + 3 * i], tonumber(ARGV[3 + 3 * i]), owner, now, ARGV[4 + 3 * i], rttl, vis)
        end
        return out
        """)

    /// `commit_node(node, epoch, owner, now, result, result ttl ms, visibility ms)`: the commit of
    /// one node of the current run.
    static let commitFunction = full + """
        local function commit_node(node, epoch, owner, now, result, rttl, vis)
          local nk = nkey(node)
          local v = redis.call('HMGET', nk, 's', 'e', 'o', 'out')
          if v[1] ~= 'running' or tonumber(v[2]) ~= epoch or v[3] ~= owner then
            -- A cancelled node's late result is dropped quietly; anything else is a refused stale write.
            if v[1] ~= 'cancelled' then redis.call('HINCRBY', RUN, 'stale', 1) end
            return { 'stale' }
          end
          redis.call('SET', rkey(node), result, 'PX', rttl)
          redis.call('HSET', nk, 's', 'succeeded', 'fin', now, 'sz', #result, 'o', '')
          redis.call('ZREM', T, node)
          event('node', node, now, 's', 'succeeded', 'e', epoch)
          local out = { 'ok', '' }
          local run = redis.call('HMGET', RUN, 's', 'total')
          if run[1] ~= 'running' then return out end
          local total = tonumber(run[2])
          local stage, idx = stage_of(node)
          if idx then
            local sk = nkey(stage)
            local sv = redis.call('HMGET', sk, 's', 'nx', 'N')
            if sv[1] ~= 'running' then return out end
            local nx, n = tonumber(sv[2]), tonumber(sv[3])
            if nx < n then
              redis.call('HSET', sk, 'nx', nx + 1)
              new_element(stage, nx, sk, now, vis, out)
            end
            if redis.call('HINCRBY', sk, 'left', -1) == 0 then
              out[2] = check_complete(now, settle(stage, 'succeeded', now, vis, out, nil, run[1]), total)
            end
          else
            out[2] = check_complete(now, settle(stage, 'succeeded', now, vis, out, v[4] or '', run[1]), total)
          end
          return out
        end

        """

    /// Records a failed attempt. A retriable failure with attempts left is delayed for retry
    /// (`{'retry', due_ms}`); otherwise the node is dead-lettered and the stage's failure policy
    /// applied (`{'dead', run_state, node, epoch, attempt, …}`). `{'stale'}` if the caller does not
    /// hold the node.
    ///
    /// ARGV: node, epoch, owner, now, error, retriable (0/1), backoff ms, visibility ms.
    static let fail = RedisScript(name: "fail", source: full + """
        local node, epoch, owner, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
        local err, retriable, backoff, vis = ARGV[5], ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
        local nk = nkey(node)
        local v = redis.call('HMGET', nk, 's', 'e', 'o', 'a', 'ma')
        if v[1] ~= 'running' or tonumber(v[2]) ~= epoch or v[3] ~= owner then
          if v[1] ~= 'cancelled' then redis.call('HINCRBY', RUN, 'stale', 1) end
          return { 'stale' }
        end
        if retriable and tonumber(v[4]) < tonumber(v[5]) then
          redis.call('HSET', nk, 's', 'retrying', 'err', err, 'ra', now + backoff, 'o', '')
          redis.call('ZADD', T, now + backoff, node)
          event('node', node, now, 's', 'retrying', 'err', err, 'a', v[4])
          return { 'retry', now + backoff }
        end
        local out = { 'dead', '' }
        out[2] = fail_node(node, now, err, vis, out)
        return out
        """)

    /// Cancels a running run: every unfinished node is cancelled; running ones learn it at
    /// their next renew. Returns `'cancelled'`, `'ended:<state>'` if the run had already ended,
    /// or `'gone'`.
    ///
    /// ARGV: now, reason.
    static let cancel = RedisScript(name: "cancel", source: full + """
        local s = redis.call('HGET', RUN, 's')
        if not s then return 'gone' end
        if s ~= 'running' then return 'ended:' .. s end
        finish_run('cancelled', tonumber(ARGV[1]), ARGV[2])
        return 'cancelled'
        """)

    /// Handles a run's due timers, at most `limit` of them: an expired lease is re-queued with a
    /// new epoch (or dead-lettered as poison after too many), a retry whose time has come is
    /// queued, a queued node whose message may be lost is published again, and an expired run
    /// deadline fails the run. Returns `{run_state, more, node, epoch, attempt, …}` with the
    /// nodes to publish; `more` is 1 when further timers are due; `run_state` is the run's
    /// final state if it has ended (now or before), `gone` if the run does not exist.
    ///
    /// ARGV: now, limit, visibility ms.
    static let wake = RedisScript(name: "wake", source: full + """
        local now, limit, vis = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
        local out = { '', 0 }
        local rs = redis.call('HGET', RUN, 's')
        if rs ~= 'running' then
          -- A finished run still listed as active, or one whose creation never completed.
          redis.call('DEL', T)
          return { rs or 'gone', 0 }
        end
        local due = redis.call('ZRANGEBYSCORE', T, '-inf', now, 'LIMIT', 0, limit + 1)
        if #due > limit then out[2] = 1 end
        for i = 1, math.min(#due, limit) do
          local node = due[i]
          redis.call('ZREM', T, node)
          if node == '|D' then
            finish_run('failed', now, 'run deadline exceeded')
            out[1] = 'failed'
            return out
          end
          local nk = nkey(node)
          local v = redis.call('HMGET', nk, 's', 'e', 'a', 'l', 'k', 'mk')
          local s = v[1]
          if s == 'running' and tonumber(v[4]) > now then
            redis.call('ZADD', T, tonumber(v[4]), node)
          elseif s == 'running' then
            local lost = tonumber(v[5] or '0') + 1
            redis.call('HSET', nk, 'k', lost)
            if lost >= tonumber(v[6] or '3') then
              local state = fail_node(node, now, 'worker lost ' .. lost .. ' times while running this task (poison task)', vis, out)
              if state ~= '' then
                out[1] = state
                return out
              end
            else
              event('node', node, now, 's', 'queued', 'why', 'lease expired')
              queue_node(node, tonumber(v[2]) + 1, tonumber(v[3]) + 1, now, vis, out)
            end
          elseif s == 'retrying' then
            event('node', node, now, 's', 'queued', 'why', 'retry')
            queue_node(node, tonumber(v[2]) + 1, tonumber(v[3]) + 1, now, vis, out)
          elseif s == 'queued' then
            redis.call('ZADD', T, now + vis, node)
            out[#out + 1] = node
            out[#out + 1] = tonumber(v[2])
            out[#out + 1] = tonumber(v[3])
          end
        end
        return out
        """)

    /// Every script, for loading them all at start-up.
    static let all: [RedisScript] = [createRun, claimBatch, renew, release, commitBatch, fail, cancel, wake]
}
