-- settle: commit (actual replaces estimate), release (refund) and record (post-hoc usage);
-- also shrink (a live reservation keeps only part of its estimate, see below).
-- Idempotent: the first settle of an id leaves a 'D' marker; later ones change nothing.
--
-- KEYS[1]  marker key: P:{org}:r:<reservation id> (commit/release) or P:{org}:d:<request id>
-- KEYS[2]  P:{org}:rx    KEYS[3] P:{org}:dirty    KEYS[4] P:{org}:ev
-- KEYS[5]  P:dirty-orgs (optional; omitted on Redis Cluster, where the client adds the org)
-- ARGV[1]  now (ms)        ARGV[2] op: 'commit' | 'release' | 'record'
-- ARGV[3]  marker TTL (ms) ARGV[4] strict (1/0)  ARGV[5] org id (member of P:dirty-orgs)
-- ARGV[6]  fallback plan (without state letter), used when the marker key holds nothing:
--          record always; commit when Redis forgot the reservation (its counters were lost
--          with it, so nothing is refunded). '' = none.
-- ARGV[7]  ledger expire-at (ms)
-- ARGV[8..12] actual amounts: invocations, input, output, total tokens, cost (micro-USD)
-- ARGV[13] clock tolerance (ms; -1 trusts ARGV[1]): see script_now in lib.lua
--
-- op 'shrink' (a lease that stops admitting but still covers calls in flight): ARGV[8..12]
-- are the estimates to keep (at most the reserved ones), ARGV[7] the new expiry (ms) and
-- ARGV[3] the new key TTL (ms); the rest of the estimate is refunded now. Nothing is counted.
--
-- Returns {status, newly dirty (1/0), overshoot flag, then 5 values per threshold crossed:
--          counter key, metric code, threshold percent, used, effective limit}
-- status: 1 applied, 2 duplicate (the same operation already done), 3 applied to a
--         reservation that had expired (its estimate was already refunded), 4 a commit
--         counted from the fallback plan (Redis no longer knew the reservation), -1 unknown
--         reservation, -3 a commit of a released reservation, -4 a release of a committed
--         one (nothing changed: settling is total, never a silent "duplicate");
--         {-2, Redis time (ms)} when the caller's clock is off by more than ARGV[13].

local now, redis_ms = script_now(tonumber(ARGV[1]), tonumber(ARGV[13]))
if not now then
  return {-2, redis_ms}
end
local op = ARGV[2]
-- the settle marker: 'Dr' for a release, 'Dc' for a commit or a record
local done = op == 'release' and 'Dr' or 'Dc'
local strict = ARGV[4] == '1'
local actual = {n = ARGV[8], i = ARGV[9], o = ARGV[10], t = ARGV[11], c = ARGV[12]}

local marker = redis.call('GET', KEYS[1])
local status = 1
local plan
local live = false
if marker then
  local state = string.sub(marker, 1, 1)
  if state == 'D' then
    if marker == 'D' or marker == done or op == 'shrink' then
      return {2, 0, 0}
    end
    return {op == 'release' and -4 or -3, 0, 0}
  end
  plan = string.sub(marker, 2)
  live = state == 'R'
  if state == 'X' then
    status = 3
  end
elseif ARGV[6] ~= '' then
  plan = ARGV[6]
  if op == 'commit' then
    status = 4
  end
else
  return {-1, 0, 0}
end

local head, body = plan_lines(plan)
local ledger = string.match(head, '^|%d+|(.*)$')
if op == 'shrink' then
  if not live then
    return {status == 3 and 3 or -1, 0, 0}
  end
  local until_ms = tonumber(ARGV[7]) - tonumber(ARGV[1]) + now
  local lines = {'R|' .. I(until_ms) .. '|' .. ledger .. '\n'}
  for line in string.gmatch(body, '[^\n]*\n') do
    local key, m, est, rest = string.match(line, '^c\t([^\t]+)\t(%a)\t(%d+)(\t.*)$')
    if key then
      local old = tonumber(est)
      local keep = tonumber(actual[m])
      if keep > old then
        keep = old
      end
      if keep < old then
        local h = redis.call('HINCRBY', key, 'h:' .. m, I(keep - old))
        if h == keep - old then  -- the counter expired since: recreated, expire it again
          expire_at(key, string.match(rest, '(%d+)%s*$'), now)
        end
      end
      line = 'c\t' .. key .. '\t' .. m .. '\t' .. I(keep) .. rest
    end
    lines[#lines + 1] = line
  end
  redis.call('SET', KEYS[1], table.concat(lines), 'PX', ARGV[3])
  redis.call('ZADD', KEYS[2], I(until_ms), string.match(KEYS[1], ':r:([^:]*)$'))
  return {1, 0, 0}
end
if live then
  redis.call('ZREM', KEYS[2], string.match(KEYS[1], ':r:([^:]*)$'))
end
if op == 'release' then
  if live then
    refund(body, now)
  end
  redis.call('SET', KEYS[1], done, 'PX', ARGV[3])
  return {1, 0, 0}
end

local out = {status, 0, 0}
-- The carry of a counter whose period has none stored yet, from the plan's <carry> field
-- (lib.lua), when this settle judges thresholds before any check of the period computed it
-- (thresholds are judged against limit + carry). As a check does: expired reservations of the
-- org are refunded first, so none shrinks the carry, and the carry is stored for the period.
local swept = false
local function first_carry(key, m, limit, field)
  local cap, prev = string.match(field, '^%-1|(%-?%d+)|(.+)$')
  if not cap then
    return 0  -- a plan written before the field named the previous period: as before
  end
  if not swept then
    sweep(KEYS[2], string.match(KEYS[1], '^(.*}:)[rd]:') .. 'r:', now, true)
    swept = true
  end
  local c = carry_from(prev, m, limit, tonumber(cap))
  redis.call('HSET', key, 'c:' .. m, I(c))
  return c
end

for key, m, est, limit, carry, ths, exp in string.gmatch(body,
    'c\t([^\t]+)\t(%a)\t(%d+)\t(%d+)\t([^\t]*)\t([^\t]*)\t(%d+)\n') do
  local a = tonumber(actual[m])
  if a > tonumber(est) and op == 'commit' then
    out[3] = 1
    if strict then
      a = tonumber(est)
    end
  end
  -- held (used + reserved) moves by actual minus what this reservation still held
  local held = live and a - tonumber(est) or a
  if held ~= 0 then
    -- held comes out at exactly the change when the counter expired since the check (the
    -- reservation outlived its period's key): it is recreated, and without usage to add
    -- (which sets the expiry below) it must get the period's expiry here
    if redis.call('HINCRBY', key, 'h:' .. m, I(held)) == held and a == 0 then
      expire_at(key, exp, now)
    end
  end
  if a > 0 then
    local u = redis.call('HINCRBY', key, 'u:' .. m, I(a))
    if u == a then
      expire_at(key, exp, now)
    end
    if ths ~= '' then
      local c = tonumber(carry)
      if c == nil or c < 0 then
        c = tonumber(redis.call('HGET', key, 'c:' .. m))
          or first_carry(key, m, tonumber(limit), carry)
      end
      local eff = tonumber(limit) + c
      -- highest threshold reached by committed usage
      local reached = 0
      local n = 0
      for th in string.gmatch(ths, '%d+') do
        n = n + 1
        if u * 100 >= tonumber(th) * eff then
          reached = n
        end
      end
      if reached > 0 then
        local fired = tonumber(redis.call('HGET', key, 'a:' .. m)) or 0
        if reached > fired then
          redis.call('HSET', key, 'a:' .. m, I(reached))
          n = 0
          for th in string.gmatch(ths, '%d+') do
            n = n + 1
            if n > fired and n <= reached then
              redis.call('XADD', KEYS[4], 'MAXLEN', '~', '100000', '*',
                'k', key, 'm', m, 'th', th, 'u', I(u), 'l', I(eff), 't', I(now))
              out[#out + 1] = key
              out[#out + 1] = m
              out[#out + 1] = tonumber(th)
              out[#out + 1] = u
              out[#out + 1] = eff
            end
          end
        end
      end
    end
  end
end

-- Ledger: the durable record's source (flushed to SQL by the reconciler).
local ledger_new = false
for _, m in ipairs({'n', 'i', 'o', 't', 'c'}) do
  local a = actual[m]
  if a ~= '0' then
    local v = redis.call('HINCRBY', ledger, m, a)
    if v == tonumber(a) then
      ledger_new = true
    end
  end
end
if ledger_new then
  expire_at(ledger, ARGV[7], now)
end
if redis.call('SADD', KEYS[3], ledger) == 1 and redis.call('SCARD', KEYS[3]) == 1 then
  out[2] = 1
  if KEYS[5] then
    redis.call('SADD', KEYS[5], ARGV[5])
  end
end
redis.call('SET', KEYS[1], done, 'PX', ARGV[3])
return out
