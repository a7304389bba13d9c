-- budgetlimiter shared Lua prelude. Prepended to every script by the Python registry, so the
-- rules live in one place. Runs on Redis (Lua 5.1) and on lupa (fakeredis): every number
-- handed to Redis goes through I(), because Lua 5.1 would print 1e15 as "1e+15".
--
-- Reservation plan format (a string value under P:{org}:r:<id>):
--   <state>|<expiry ms>|<ledger key>\n  then one line per entry:
--   c\t<counter key>\t<metric code>\t<estimate>\t<limit>\t<carry>\t<thresholds csv>\t<expire-at ms>\n
--   (<carry>: 0 for rollover reset; for accumulate -1|<cap, -1 none>|<previous period's
--   counter key>, or a bare -1 in plans written before the carry could be computed on settle)
--   g\t<rate key>\t<metric code>\t<estimate>\t<interval us>\n
-- state: R live reservation, X expired (already refunded), D settled: 'Dc' committed (or
-- recorded), 'Dr' released; a bare 'D' (written before the op letter existed) is either.

local function I(n)
  return string.format('%d', n)
end

-- "Now" for everything a script compares across clients (reservation expiry, GCRA): Redis's
-- own clock. The caller sends its clock too (its periods and keys are computed from it); when
-- the two differ by more than the tolerance (ms) the script changes nothing and returns nil
-- and Redis's time, so the caller learns its offset and plans again. A negative tolerance
-- trusts the caller's clock (simulations and tests that move time by hand).
local function script_now(client_ms, tolerance)
  if tolerance < 0 then
    return client_ms
  end
  local t = redis.call('TIME')
  local server = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if math.abs(server - client_ms) > tolerance then
    return nil, server
  end
  return server
end

-- Expiry relative to the caller's clock (the one periods are computed from), so that a skewed
-- or simulated client clock never makes a key expire at once.
local function expire_at(key, at_ms, now_ms)
  local ttl = tonumber(at_ms) - now_ms
  if ttl < 1000 then
    ttl = 1000
  end
  redis.call('PEXPIRE', key, I(ttl))
end

local function plan_lines(plan)
  local nl = string.find(plan, '\n', 1, true)
  local head = string.sub(plan, 1, nl - 1)
  local body = string.sub(plan, nl + 1)
  return head, body
end

-- Undo the reserved amounts of a plan (counters only; rate limits are charged at admission).
-- Counter fields: u:<m> used, h:<m> held (used + reserved), c:<m> carry, a:<m> alerts fired.
-- A reservation can outlive its period's counter (a long TTL on a short period): held then
-- comes out at exactly -est, on a counter the HINCRBY created anew, which gets the period's
-- expiry again (plan field 7) instead of living forever.
local function refund(body, now)
  for key, m, est, exp in string.gmatch(body,
      'c\t([^\t]+)\t(%a)\t(%d+)\t[^\t]*\t[^\t]*\t[^\t]*\t(%d+)\n') do
    if est ~= '0' then
      if redis.call('HINCRBY', key, 'h:' .. m, '-' .. est) == -est then
        expire_at(key, exp, now)
      end
    end
  end
end

-- Refund reservations of this org whose TTL passed. Lazy: runs inside the org's own scripts,
-- so no background job is needed for limits to stay correct. Returns how many it refunded.
-- A sampled sweep does bounded work (at most 1000 reservations; the next one continues); a
-- full sweep (before a refusal, a carry or a status read) empties the backlog, however long.
local function sweep(zkey, res_prefix, now, full)
  local swept = 0
  local rounds = full and math.huge or 10
  local round = 0
  while round < rounds do
    round = round + 1
    local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, 100)
    for i = 1, #ids do
      local rkey = res_prefix .. ids[i]
      local plan = redis.call('GET', rkey)
      if plan and string.sub(plan, 1, 1) == 'R' then
        local _, body = plan_lines(plan)
        refund(body, now)
        redis.call('SET', rkey, 'X' .. string.sub(plan, 2), 'KEEPTTL')
        swept = swept + 1
      end
    end
    if #ids > 0 then
      redis.call('ZREM', zkey, unpack(ids))
    end
    if #ids < 100 then
      return swept
    end
  end
  return swept
end

-- Unused budget carried from the previous period (rollover = accumulate).
-- A previous period with no key at all carries nothing (it cannot be told from "did not exist").
local function carry_from(prev_key, m, limit, cap)
  if prev_key == nil then
    return 0
  end
  local f = redis.call('HMGET', prev_key, 'u:' .. m, 'h:' .. m, 'c:' .. m)
  if not f[1] and not f[2] and not f[3] then
    return 0
  end
  -- held below zero is a refund on a counter recreated after it expired or was evicted (see
  -- refund): no usage, not negative usage, which would carry more than limit + carry
  local held = tonumber(f[2]) or tonumber(f[1]) or 0
  if held < 0 then
    held = 0
  end
  local unused = limit + (tonumber(f[3]) or 0) - held
  if unused < 0 then
    unused = 0
  end
  if cap >= 0 and unused > cap then
    unused = cap
  end
  return unused
end
