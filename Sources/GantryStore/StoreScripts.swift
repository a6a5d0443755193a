import GantryRedis

/// The Lua scripts behind ``RedisStateStore``: one per state transition, so each is atomic.
///
/// Every key of a run shares the hash tag `{run-id}`: `KEYS[1]` is the run hash
/// `<ns>:{R}:run` and every other key the scripts touch is derived from it with the same tag, so
/// they all live in one slot and the scripts stay valid on Redis Cluster. The batch scripts
/// (``claimBatch``, ``commitBatch``) take their items grouped by run, one run key per group,
/// and switch to each in turn with `use_run`, so on a cluster they stay valid when their items
/// are grouped by hash slot.
///
/// A run's node state lives in one hash and its results in another, so a batch of one run's
/// claims or commits reads and writes them with one command each, not one or more per node;
/// the run's timer set, counters and event stream are likewise written once per batch. The
/// fields every transition touches are one record per node, so a claim or a commit reads and
/// writes one hash field per node.
///
/// Keys of a run (prefix `P = <ns>:{R}:`):
/// - `P run` hash: `s` state, `name`, `spec`, `stages` (csv), `total`, `done`, `failed`,
///           `failed_list`, `created`, `fin`, `reason`, `stale` (refused commits), `ttl`
///           (retention ms), `mk` (lost leases that make a task poison)
/// - `P in`  the run input
/// - `P n`   hash of every node's fields (stages and mapped elements). Field `<node>` is the
///           node's record, `s|e|a|q|l|st|fin|sz|out|o`: state, epoch, attempt, queued at, lease
///           expiry, started, finished, result size, dependents (csv, stages only) and owner (last,
///           so it may hold any character); empty where unset. The other fields are
///           `<node>.<field>`: `k` leases lost, `ra` retry at, `err` error, `dl` dead-lettered,
///           `skip` the dependency that made it skip; a stage also has `ma` max attempts and,
///           where they are not the default, `p` pending dependencies (0), `m` mapped upstream
///           (none), `mp` max parallel (no limit), `f` on-failure `c` continue (fail the run),
///           `mk` lost leases that make a task poison (the run's `mk`); its elements use the
///           stage's limits; once expanded it has `N` elements, `nx` next element to release,
///           `left` unfinished elements
/// - `P r`   hash of results: node → result bytes
/// - `P t`   sorted set of timers, one member per node whose score is when it needs
///           attention: a running node's lease expiry, a queued node's visibility deadline, a
///           retrying node's due time; plus `|D` for the run deadline
/// - `P ev`  stream of every state change (capped at about 10,000 entries); an entry holds one
///           event or several node events of one batch (see ``base``)
///
/// TTLs: `run`, `in`, `n`, `t` and `ev` carry four retention periods from creation (a safety
/// net for a run that never ends) and the retention period once the run ends; `r` expires the
/// result TTL after the run's last commit.
///
/// Node states: `waiting queued running retrying succeeded failed skipped cancelled`.
/// Run states: `running succeeded failed cancelled`.
enum StoreScripts {
    /// Reading and writing a node's fields in the run's node hash `NODES`: `record(node)` (the
    /// record's fields as a table), `new_record()`, `mget(node, f…)`, `get(node, f)` and
    /// `set(node, f1, v1, …)`. The script declares `NODES` first.
    static let nodeFields = """
        -- Node fields. Those of the record (field `<node>`) are read and written through it.
        local RECF = { s = 1, e = 2, a = 3, q = 4, l = 5, st = 6, fin = 7, sz = 8, out = 9, o = 10 }
        local RECP = '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$'
        local function record(node)
          local v = redis.call('HGET', NODES, node)
          if not v then return nil end
          local r = { string.match(v, RECP) }
          if #r ~= 10 then return nil end
          return r
        end
        local function new_record() return { '', '0', '0', '', '', '', '', '', '', '' } end
        -- `get(node, f)`: the field, or false when unset. `mget(node, f1, f2, …)`: a table of them.
        local function mget(node, ...)
          local names = { ... }
          local out, other, at, r = {}, {}, {}, nil
          for j = 1, #names do
            local i = RECF[names[j]]
            if i then
              if r == nil then r = record(node) or false end
              local x = r and r[i]
              out[j] = (x and x ~= '') and x or false
            else
              other[#other + 1] = node .. '.' .. names[j]
              at[#at + 1] = j
            end
          end
          if #other > 0 then
            local v = redis.call('HMGET', NODES, unpack(other))
            for k = 1, #other do out[at[k]] = v[k] end
          end
          return out
        end
        local function get(node, f) return mget(node, f)[1] end
        -- `set(node, f1, v1, f2, v2, …)`.
        local function set(node, ...)
          local args = { ... }
          local hargs, n, r = {}, 0, nil
          for j = 1, #args, 2 do
            local i = RECF[args[j]]
            if i then
              if not r then r = record(node) or new_record() end
              r[i] = args[j + 1]
            else
              hargs[n + 1] = node .. '.' .. args[j]
              hargs[n + 2] = args[j + 1]
              n = n + 2
            end
          end
          if r then
            hargs[n + 1] = node
            hargs[n + 2] = table.concat(r, '|', 1, 10)
            n = n + 2
          end
          redis.call('HSET', NODES, unpack(hargs, 1, n))
        end

        """

    /// What every script needs: key names, node fields and the event log.
    ///
    /// Events go to the run's stream in one of two shapes, both read by
    /// ``RedisStateStore/decodeEvents(_:)``: `event` appends one entry per event
    /// (`k <kind> n <node> t <now> <fields…>`); `node_event` gathers consecutive node events that
    /// share their fields into one entry (`t <now> k node s <state> … n <node> e <epoch> n <node>
    /// e <epoch> …`), so a batch of one run's claims or commits appends one entry, not one per
    /// node. The fields before an entry's first `n` belong to every event of the entry; each `n`
    /// starts an event. A script that uses `node_event` calls `flush_events` before it returns
    /// (`use_run` and `event` flush too, so the events of a run keep their order).
    static let base = """
        local RUN, P, T, NODES
        -- The current run's events not yet appended: the fields of one stream entry, how many, and
        -- the shared fields they began with.
        local EV, EVN, EVS = nil, 0, nil
        local function flush_events()
          if EV then
            redis.call('XADD', P .. 'ev', 'MAXLEN', '~', 10000, '*', unpack(EV, 1, EVN))
            EV, EVN, EVS = nil, 0, nil
          end
        end
        local function use_run(key)
          flush_events()
          RUN = key
          P = string.sub(key, 1, -4)
          T = P .. 't'
          NODES = P .. 'n'
        end
        if KEYS[1] then use_run(KEYS[1]) end
        """ + "\n" + nodeFields + """
        -- `HSET key` (or `ZADD key`) with the first `n` of `args` (field, value, … or score,
        -- member, …), a few thousand at a time.
        local function many(command, key, args, n)
          for i = 1, n, 4000 do redis.call(command, key, unpack(args, i, math.min(n, i + 3999))) end
        end
        local function hset_many(key, args, n) many('HSET', key, args, n) end
        local function event(kind, node, now, ...)
          flush_events()
          redis.call('XADD', P .. 'ev', 'MAXLEN', '~', 10000, '*', 'k', kind, 'n', node, 't', now, ...)
        end
        -- A node event with the fields `shared` (one constant table per kind of event) and its epoch:
        -- it joins the entry being gathered when that began with the same `shared`.
        local function node_event(shared, node, epoch)
          if EVS ~= shared or EVN >= 4000 then
            flush_events()
            EV, EVS = {}, shared
            for i = 1, #shared do EV[i] = shared[i] end
            EVN = #shared
          end
          EV[EVN + 1] = 'n'
          EV[EVN + 2] = node
          EV[EVN + 3] = 'e'
          EV[EVN + 4] = epoch
          EVN = EVN + 4
        end

        """

    /// Helpers of the scripts that move a run forward: completion, fan-out, failure policies.
    static let full = base + """
        local FINAL = { succeeded = true, failed = true, skipped = true, cancelled = true }
        local NONE = {}
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
        local function finish_run(state, now, reason)
          redis.call('HSET', RUN, 's', state, 'fin', now, 'reason', reason or '')
          -- Nothing unfinished will run now; a running node's worker learns it at its next renew.
          -- (In a run that succeeded every node is final already, so that run skips the walk.)
          if state ~= 'succeeded' then
            local args, n = {}, 0
            local function cancel_node(node)
              local r = record(node)
              if r and not FINAL[r[1]] then
                r[1], r[7] = 'cancelled', now
                args[n + 1] = node
                args[n + 2] = table.concat(r, '|', 1, 10)
                n = n + 2
              end
            end
            for _, stage in ipairs(split(redis.call('HGET', RUN, 'stages'))) do
              cancel_node(stage)
              for i = 0, tonumber(get(stage, 'N') or '0') - 1 do cancel_node(stage .. '[' .. i .. ']') end
            end
            if n > 0 then hset_many(NODES, args, n) end
          end
          local ttl = tonumber(redis.call('HGET', RUN, 'ttl'))
          redis.call('DEL', T)
          event('run', '', now, 's', state, 'reason', reason or '')
          -- Results keep their own TTL from the run's last commit.
          for _, k in ipairs({ RUN, P .. 'in', NODES, P .. 'ev' }) do redis.call('PEXPIRE', k, ttl) end
        end
        local function queue_node(node, epoch, attempt, now, vis, out)
          set(node, 's', 'queued', 'e', epoch, 'a', attempt, 'q', now, 'o', '')
          redis.call('ZADD', T, now + vis, node)
          out[#out + 1] = node
          out[#out + 1] = epoch
          out[#out + 1] = attempt
        end
        -- Element `i` of a mapped stage is released. Its retry and poison limits are its stage's.
        local function new_element(stage, i, now, vis, out)
          queue_node(stage .. '[' .. i .. ']', 1, 1, now, vis, out)
        end
        -- Elements `first`…`last` of a stage being expanded: none has a record yet, so theirs are
        -- written (queued, epoch 1, attempt 1), with their timers, in a few commands for them all.
        local function new_elements(stage, first, last, now, vis, out)
          local records, rn, timers, tn = {}, 0, {}, 0
          local queued, due = 'queued|1|1|' .. now .. '||||||', now + vis
          for i = first, last do
            local node = stage .. '[' .. i .. ']'
            records[rn + 1], records[rn + 2] = node, queued
            timers[tn + 1], timers[tn + 2] = due, node
            rn, tn = rn + 2, tn + 2
            out[#out + 1] = node
            out[#out + 1] = 1
            out[#out + 1] = 1
          end
          hset_many(NODES, records, rn)
          many('ZADD', T, timers, tn)
        end
        -- Marks stages done (succeeded, skipped or failed) and releases their dependents, breadth
        -- first: a dependent whose pending count reaches zero is queued, expanded (map) or, when
        -- one of its dependencies did not succeed, skipped in turn. `first_out` is the first
        -- stage's dependents when the caller has already recorded its new state.
        -- Returns how many stages it marked done; the caller adds them to the run's `done`.
        local function settle(first, first_state, now, vis, out, first_out, run_state)
          local work = { { first, first_state } }
          local i = 1
          local running = (run_state or redis.call('HGET', RUN, 's')) == 'running'
          while i <= #work do
            local stage, state = work[i][1], work[i][2]
            local deps
            if i == 1 and first_out then
              deps = first_out
            else
              if state ~= 'failed' then set(stage, 's', state, 'fin', now) end
              event('stage', stage, now, 's', state)
              deps = get(stage, 'out')
            end
            i = i + 1
            for _, dep in ipairs(deps ~= '' and split(deps) or NONE) do
              if state ~= 'succeeded' then set(dep, 'skip', stage) end
              if redis.call('HINCRBY', NODES, dep .. '.p', -1) == 0 and running then
                local dv = mget(dep, 'skip', 'm', 'mp')
                if dv[1] then
                  work[#work + 1] = { dep, 'skipped' }
                elseif dv[2] and dv[2] ~= '' then
                  local n = tonumber(get(dv[2], 'N') or '-1')
                  if n < 0 then
                    local ok, list = pcall(cjson.decode, redis.call('HGET', P .. 'r', dv[2]) or 'null')
                    if ok and type(list) == 'table' then n = #list end
                  end
                  if n < 0 then
                    set(dep, 's', 'failed', 'err', 'maps over ' .. dv[2] .. ', whose result is not a JSON list', 'fin', now)
                    redis.call('HINCRBY', RUN, 'failed', 1)
                    work[#work + 1] = { dep, 'failed' }
                  elseif n == 0 then
                    set(dep, 'N', 0, 'nx', 0, 'left', 0)
                    work[#work + 1] = { dep, 'succeeded' }
                  else
                    local par = tonumber(dv[3] or '0')
                    if par <= 0 or par > n then par = n end
                    set(dep, 's', 'running', 'N', n, 'nx', par, 'left', n, 'st', now)
                    new_elements(dep, 0, par - 1, now, vis, out)
                  end
                else
                  queue_node(dep, tonumber(get(dep, 'e') or '0') + 1, 1, now, vis, out)
                end
              end
            end
          end
          return #work
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
          set(node, 's', 'failed', 'err', err, 'fin', now, 'dl', 1)
          redis.call('ZREM', T, node)
          event('node', node, now, 's', 'failed', 'err', err)
          if idx then
            if FINAL[get(stage, 's')] then return check_complete(now) end
            set(stage, 's', 'failed', 'err', 'element ' .. idx .. ': ' .. err, 'fin', now)
          end
          redis.call('HINCRBY', RUN, 'failed', 1)
          local fl = redis.call('HGET', RUN, 'failed_list')
          redis.call('HSET', RUN, 'failed_list', (fl and fl ~= '') and (fl .. ',' .. stage) or stage)
          if get(stage, 'f') == 'c' then
            return check_complete(now, redis.call('HINCRBY', RUN, 'done', settle(stage, 'failed', now, vis, out)))
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
    static let createRun = RedisScript(name: "create_run", source: base + """
        if redis.call('EXISTS', RUN) == 1 then return { 'exists' } end
        local now, ttl, vis, deadline = tonumber(ARGV[1]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
        local count = tonumber(ARGV[8])
        local names = {}
        local out = { 'created' }
        local fields, n = {}, 0
        local timers, tn = {}, 0
        local function field(node, f, value)
          fields[n + 1] = node .. '.' .. f
          fields[n + 2] = value
          n = n + 2
        end
        for s = 0, count - 1 do
          local b = 9 + s * 8
          local stage = ARGV[b]
          names[#names + 1] = stage
          fields[n + 1] = stage
          if ARGV[b + 1] == '0' then
            -- A root is queued at once (epoch 1, attempt 1) until its visibility deadline.
            fields[n + 2] = 'queued|1|1|' .. now .. '|||||' .. ARGV[b + 2] .. '|'
            timers[tn + 1], timers[tn + 2] = now + vis, stage
            tn = tn + 2
            out[#out + 1] = stage
            out[#out + 1] = 1
            out[#out + 1] = 1
          else
            fields[n + 2] = 'waiting|0|0||||||' .. ARGV[b + 2] .. '|'
          end
          n = n + 2
          -- Unset means: no pending dependency, no map, no limit on parallelism, failing fails
          -- the run, and the run's own poison limit.
          if ARGV[b + 1] ~= '0' then field(stage, 'p', ARGV[b + 1]) end
          if ARGV[b + 3] ~= '' then field(stage, 'm', ARGV[b + 3]) end
          if ARGV[b + 4] ~= '0' then field(stage, 'mp', ARGV[b + 4]) end
          if ARGV[b + 5] == 'c' then field(stage, 'f', 'c') end
          field(stage, 'ma', ARGV[b + 6])
          if ARGV[b + 7] ~= ARGV[16] then field(stage, 'mk', ARGV[b + 7]) end
        end
        hset_many(NODES, fields, n)
        redis.call('HSET', RUN, 's', 'running', 'name', ARGV[2], 'spec', ARGV[3], 'stages', table.concat(names, ','),
          'total', count, 'done', 0, 'failed', 0, 'created', now, 'ttl', ttl, 'stale', 0, 'mk', ARGV[16] or '3')
        redis.call('SET', P .. 'in', ARGV[4])
        if deadline > 0 then
          timers[tn + 1], timers[tn + 2] = deadline, '|D'
          tn = tn + 2
        end
        many('ZADD', T, timers, tn)
        event('run', '', now, 's', 'running')
        -- Four retention periods from creation, so nothing outlives a run by accident; the run's
        -- keys get the retention period when it ends.
        for _, k in ipairs({ RUN, P .. 'in', NODES, T, P .. 'ev' }) do redis.call('PEXPIRE', k, ttl * 4) end
        return out
        """)

    /// Takes the leases on queued nodes, possibly of many runs, in one call. The items come
    /// grouped by run: `KEYS[g]` is the run of group `g`, and each group reads and writes the
    /// run's node records, timer set and event stream with one command each.
    ///
    /// Returns three integers per item, in the order of the items: a code, the node's epoch and
    /// its attempt. Codes: `1` leased (epoch and attempt are the lease's), `2` stale (a newer
    /// attempt exists; epoch is the current one), `3` busy (leased, possibly by a worker that
    /// died: the coordinator's wake re-queues it once the lease expires), `4` done, `5`
    /// cancelled, `6` gone (no such run or node), `7` early (not queued yet).
    ///
    /// ARGV: owner, now, lease ms, then per group: item count `c`, the `c` nodes, their `c` epochs.
    static let claimBatch = RedisScript(name: "claim_batch", source: base + """
        local argv, tonumber = ARGV, tonumber
        local owner, now = argv[1], argv[2]
        -- Written as text once: a number passed to redis.call is formatted on every call.
        local expiry = tostring(tonumber(now) + tonumber(argv[3]))
        local RUNNING = { 't', now, 'k', 'node', 's', 'running', 'o', owner }
        -- A record's state, epoch, attempt, queued at, and its finished|size|dependents.
        local FIELDS = '^(%a*)|(%d*)|(%d*)|(%d*)|[^|]*|[^|]*|([^|]*|[^|]*|[^|]*)|'
        local out, o, a = {}, 0, 4
        for g = 1, #KEYS do
          use_run(KEYS[g])
          local count = tonumber(argv[a])
          local records = redis.call('HMGET', NODES, unpack(argv, a + 1, a + count))
          local writes, wn, timers, tn, leased = {}, 0, {}, 0, {}
          for i = 1, count do
            local node, epoch = argv[a + i], tonumber(argv[a + count + i])
            local code, e, attempt = 6, 0, 0
            local record = records[i]
            if record then
              local s, es, as, q, rest = string.match(record, FIELDS)
              e = tonumber(es) or 0
              -- A node leased by an earlier item of this batch.
              if leased[node] then s = 'running' end
              if s == 'queued' then
                if e ~= epoch then
                  code = 2
                else
                  writes[wn + 1] = node
                  writes[wn + 2] = 'running|' .. es .. '|' .. as .. '|' .. q .. '|' .. expiry .. '|' .. now .. '|' .. rest .. '|' .. owner
                  wn = wn + 2
                  timers[tn + 1] = expiry
                  timers[tn + 2] = node
                  tn = tn + 2
                  leased[node] = true
                  node_event(RUNNING, node, es)
                  code, attempt = 1, tonumber(as)
                end
              elseif s == 'cancelled' or s == 'skipped' then code = 5
              elseif s == 'succeeded' or s == 'failed' then code = 4
              elseif not s then code = 6
              elseif e ~= epoch then code = 2
              elseif s == 'running' then code = 3
              else code = 7 end
            end
            out[o + 1] = code
            out[o + 2] = e
            out[o + 3] = attempt
            o = o + 3
          end
          if wn > 0 then
            hset_many(NODES, writes, wn)
            redis.call('ZADD', T, unpack(timers, 1, tn))
          end
          a = a + 1 + 2 * count
        end
        flush_events()
        return out
        """)

    /// Extends a lease. Returns `'ok'`, `'lost'` (the caller no longer holds it) or
    /// `'cancelled'` (the run was cancelled or failed: stop the work).
    ///
    /// ARGV: node, epoch, owner, now, lease ms.
    static let renew = RedisScript(name: "renew", source: base + """
        local node, epoch, owner, now, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
        local v = mget(node, 's', 'e', 'o')
        if tonumber(v[2]) ~= epoch or v[3] ~= owner then return 'lost' end
        if v[1] == 'cancelled' then return 'cancelled' end
        if v[1] ~= 'running' then return 'lost' end
        set(node, 'l', now + ttl)
        redis.call('ZADD', T, now + ttl, node)
        return 'ok'
        """)

    /// Hands a leased node back (graceful shutdown): it is queued again with the same epoch, so
    /// the redelivered message can claim it. Returns `'ok'` or `'lost'`.
    ///
    /// ARGV: node, epoch, owner, now, visibility ms.
    static let release = RedisScript(name: "release", source: base + """
        local node, epoch, owner, now, vis = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
        local v = mget(node, 's', 'e', 'o')
        if v[1] ~= 'running' or tonumber(v[2]) ~= epoch or v[3] ~= owner then return 'lost' end
        set(node, 's', 'queued', 'o', '', 'q', now)
        redis.call('ZADD', T, now + vis, node)
        event('node', node, now, 's', 'queued', 'why', 'released')
        return 'ok'
        """)

    /// Commits results, possibly of many runs, in one call. Each result is written only if the
    /// caller holds the node's current epoch; the node is marked done and every node that
    /// became ready is queued. The items come grouped by run: `KEYS[g]` is the run of group
    /// `g`, and each group reads and writes the run's node records, results, counters, timer
    /// set and event stream with one command each (a node with dependents, or an element of a
    /// mapped stage, has its writes made before its dependents are released).
    ///
    /// An item may also ask to lease some of the nodes its commit makes ready to the committing
    /// owner at once (local continuation: the worker runs them next, without a claim of its own):
    /// up to `limit` of them whose stage is one of `stages`, each leased for `lease ms` exactly
    /// as a claim would.
    ///
    /// Returns, per item in the order of the items: a code (`1` committed, `0` stale: refused),
    /// the run's new state if that commit ended the run (else `0`), the number of nodes that
    /// became ready, then `node, epoch, attempt` for each of them; the attempt is negative for a
    /// node leased to the owner.
    ///
    /// ARGV: owner, now, result ttl ms, visibility ms, then per group: item count `c`, the `c`
    /// nodes, their `c` epochs, their `c` results, their `c` leases to take (`limit|lease ms|stage,
    /// stage…`, or empty).
    static let commitBatch = RedisScript(name: "commit_batch", source: full + """
        local argv, tonumber = ARGV, tonumber
        local owner, now, rttl, vis = argv[1], argv[2], argv[3], tonumber(argv[4])
        local clock = tonumber(now)
        local SUCCEEDED = { 't', now, 'k', 'node', 's', 'succeeded' }
        local RUNNING = { 't', now, 'k', 'node', 's', 'running', 'o', owner }
        -- Leases the first nodes of out[from…] (node, epoch, attempt triples) that `take` allows:
        -- their records read with one command and written with another.
        local function take_ready(out, take, from)
          local limit, lease, stages = string.match(take, '^(%d+)|(%d+)|(.*)$')
          limit = tonumber(limit or '0')
          if limit == 0 then return end
          local allowed = {}
          for _, stage in ipairs(split(stages)) do allowed[stage] = true end
          local nodes, at = {}, {}
          for j = from, #out - 2, 3 do
            if #nodes == limit then break end
            if allowed[(stage_of(out[j]))] then
              nodes[#nodes + 1] = out[j]
              at[#at + 1] = j
            end
          end
          local expiry = tostring(clock + tonumber(lease))
          local writes, wn, timers, tn = {}, 0, {}, 0
          for c = 1, #nodes, 4000 do
            local last = math.min(#nodes, c + 3999)
            local records = redis.call('HMGET', NODES, unpack(nodes, c, last))
            for k = c, last do
              local v = records[k - c + 1]
              local r = v and { string.match(v, RECP) }
              if r and #r == 10 and r[1] == 'queued' then
                r[1], r[5], r[6], r[10] = 'running', expiry, now, owner
                writes[wn + 1], writes[wn + 2] = nodes[k], table.concat(r, '|', 1, 10)
                timers[tn + 1], timers[tn + 2] = expiry, nodes[k]
                wn, tn = wn + 2, tn + 2
                node_event(RUNNING, nodes[k], r[2])
                out[at[k] + 2] = -out[at[k] + 2]
              end
            end
          end
          hset_many(NODES, writes, wn)
          many('ZADD', T, timers, tn)
        end
        -- A record's state, epoch, attempt|queued at|lease|started, dependents and owner.
        local FIELDS = '^(%a*)|(%d*)|([^|]*|[^|]*|[^|]*|[^|]*)|[^|]*|[^|]*|([^|]*)|(.*)$'
        local sizes = {}
        local out, a = {}, 5
        for g = 1, #KEYS do
          use_run(KEYS[g])
          local count = tonumber(argv[a])
          local records = redis.call('HMGET', NODES, unpack(argv, a + 1, a + count))
          local rv = redis.call('HMGET', RUN, 's', 'total', 'done')
          local rs, total, done = rv[1], tonumber(rv[2] or '0'), tonumber(rv[3] or '0')
          -- Writes gathered for the group, stages finished and refused commits not yet counted.
          local writes, wn, results, rn, timers, tn = {}, 0, {}, 0, {}, 0
          local settled, stale, committed, any = 0, 0, {}, false
          -- Mapped stages of this group's elements: { state, next element, elements }, read once.
          -- Dropped whenever a stage may have moved on (settle, run completion).
          local mapped = {}
          local function write_gathered()
            if wn > 0 then hset_many(NODES, writes, wn) end
            if rn > 0 then hset_many(P .. 'r', results, rn) end
            wn, rn = 0, 0
          end
          for i = 1, count do
            local node, epoch, result, take = argv[a + i], argv[a + count + i], argv[a + 2 * count + i], argv[a + 3 * count + i]
            local s, es, mid, deps, o
            if records[i] then s, es, mid, deps, o = string.match(records[i], FIELDS) end
            -- A node committed by an earlier item of this batch.
            if committed[node] then s = 'succeeded' end
            local h = #out
            if s ~= 'running' or tonumber(es) ~= tonumber(epoch) or o ~= owner then
              -- A cancelled node's late result is dropped quietly; anything else is a refused stale write.
              if s ~= 'cancelled' then stale = stale + 1 end
              out[h + 1] = 0
              out[h + 2] = 0
              out[h + 3] = 0
            else
              local size = sizes[#result]
              if not size then
                size = tostring(#result)
                sizes[#result] = size
              end
              results[rn + 1] = node
              results[rn + 2] = result
              rn = rn + 2
              writes[wn + 1] = node
              writes[wn + 2] = 'succeeded|' .. es .. '|' .. mid .. '|' .. now .. '|' .. size .. '|' .. deps .. '|'
              wn = wn + 2
              timers[tn + 1] = node
              tn = tn + 1
              committed[node] = true
              any = true
              node_event(SUCCEEDED, node, epoch)
              out[h + 1] = 1
              out[h + 2] = 0
              out[h + 3] = 0
              if rs == 'running' then
                local stage, idx = stage_of(node)
                local k = 1
                if idx then
                  -- An element: its own write can wait with the others (releasing the next
                  -- element writes only that element); settling its stage reads node state and
                  -- results, so everything gathered is written first.
                  k = 0
                  local sv = mapped[stage]
                  if not sv then
                    sv = mget(stage, 's', 'nx', 'N')
                    sv[2], sv[3] = tonumber(sv[2]), tonumber(sv[3])
                    mapped[stage] = sv
                  end
                  if sv[1] == 'running' then
                    if sv[2] < sv[3] then
                      set(stage, 'nx', sv[2] + 1)
                      new_element(stage, sv[2], clock, vis, out)
                      sv[2] = sv[2] + 1
                    end
                    if redis.call('HINCRBY', NODES, stage .. '.left', -1) == 0 then
                      write_gathered()
                      mapped = {}
                      k = settle(stage, 'succeeded', clock, vis, out, nil, rs)
                    end
                  end
                elseif deps ~= '' then
                  -- What follows reads node state and results: everything so far is written first.
                  write_gathered()
                  mapped = {}
                  k = settle(stage, 'succeeded', clock, vis, out, deps, rs)
                end
                settled = settled + k
                if k > 0 and done + settled >= total then
                  -- The run may be complete: its state and counter are brought up to date first.
                  write_gathered()
                  mapped = {}
                  done = redis.call('HINCRBY', RUN, 'done', settled)
                  settled = 0
                  local state = check_complete(clock, done, total)
                  if state ~= '' then
                    rs = state
                    out[h + 2] = state
                  end
                end
                out[h + 3] = (#out - h - 3) / 3
                if take ~= '' and out[h + 3] > 0 and rs == 'running' then take_ready(out, take, h + 4) end
              end
            end
          end
          write_gathered()
          if any then redis.call('PEXPIRE', P .. 'r', rttl) end
          if settled > 0 then redis.call('HINCRBY', RUN, 'done', settled) end
          if stale > 0 then redis.call('HINCRBY', RUN, 'stale', stale) end
          if tn > 0 then redis.call('ZREM', T, unpack(timers, 1, tn)) end
          a = a + 1 + 4 * count
        end
        flush_events()
        return out
        """)

    /// Records a failed attempt. A retriable failure with attempts left is delayed for retry
    /// (`{'retry', due_ms}`); otherwise the node is dead-lettered and the stage's failure policy
    /// applied (`{'dead', run_state, node, epoch, attempt, …}`). `{'stale'}` if the caller does not
    /// hold the node.
    ///
    /// ARGV: node, epoch, owner, now, error, retriable (0/1), backoff ms, visibility ms.
    static let fail = RedisScript(name: "fail", source: full + """
        local node, epoch, owner, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
        local err, retriable, backoff, vis = ARGV[5], ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
        local v = mget(node, 's', 'e', 'o', 'a')
        if v[1] ~= 'running' or tonumber(v[2]) ~= epoch or v[3] ~= owner then
          if v[1] ~= 'cancelled' then redis.call('HINCRBY', RUN, 'stale', 1) end
          return { 'stale' }
        end
        local max_attempts = tonumber(get((stage_of(node)), 'ma') or '1')
        if retriable and tonumber(v[4]) < max_attempts then
          set(node, 's', 'retrying', 'err', err, 'ra', now + backoff, 'o', '')
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
          local v = mget(node, 's', 'e', 'a', 'l', 'k')
          local s = v[1]
          if s == 'running' and tonumber(v[4]) > now then
            redis.call('ZADD', T, tonumber(v[4]), node)
          elseif s == 'running' then
            local lost = tonumber(v[5] or '0') + 1
            set(node, 'k', lost)
            if lost >= tonumber(get((stage_of(node)), 'mk') or redis.call('HGET', RUN, 'mk') or '3') then
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
