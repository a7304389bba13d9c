-- check: all-or-nothing check-and-reserve over every budget and rate limit of one subject.
-- Also serves status reads (dry run: nothing reserved, carry not stored).
--
-- Counter hash fields per metric m: u:<m> used, h:<m> held (used + reserved), c:<m> carry.
-- Keeping "held" as one field lets an admitted check cost one HINCRBY per budget: Redis CPU is
-- the ceiling of the whole system, and the admit path is nearly every call.
--
-- KEYS[1]  P:{org}:rx            zset of live reservations by expiry
-- KEYS[2]  P:{org}:r:<id>        reservation key (written when allowed and not a dry run)
-- KEYS[3..] counter keys, previous-period counter keys, rate keys (referenced by index below)
-- ARGV[1]  now (ms)              ARGV[2] reservation expiry (ms, absolute)
-- ARGV[3]  reservation key TTL (ms; expiry + settle-marker retention)
-- ARGV[4]  1 dry run, 0 check, 2 check under a caller's reservation id (refused when that
--          id is in use); a check adds 4 to run the sampled expiry sweep (the caller picks
--          about one check in eight: tests force either path)
--          ARGV[5] reservation key prefix P:{org}:r:
-- ARGV[6]  plan head and body (without the state letter), stored as 'R' .. ARGV[6]
-- ARGV[7]  nc: number of budget entries    ARGV[8] ng: number of rate entries
-- ARGV[9]  clock tolerance (ms; -1 trusts ARGV[1]): see script_now in lib.lua. Expiry and
--          GCRA use Redis's time; ARGV[2] is moved by the (small) difference of the clocks.
-- then nc budget entries of 8 values:
--   key index, metric code, estimate, limit, hard (1/0), expire-at (ms), cap (-1 reset,
--   -2 accumulate without cap, >= 0 cap), previous-period key index (0 = none)
-- then ng rate entries of 4 values: key index, estimate, interval (us per unit), tolerance (us)
--
-- Returns {allowed (1/0), blocking entry (1-based over budgets then rates, 0 = none),
--          retry after (us, rates only), then per budget: used, reserved, carry,
--          then per rate: used-up time ahead of now (us, after the reservation if allowed)}
-- An admitted check reads only "held": its used is -1 and its reserved is used + reserved
-- (this reservation included). Refusals and status reads report both.
-- {-2, Redis time (ms)} when the caller's clock is off by more than ARGV[9]: nothing changed.
-- {-5} when ARGV[4] is 2 or 6 and the reservation id is in use: nothing changed.

local now, redis_ms = script_now(tonumber(ARGV[1]), tonumber(ARGV[9]))
if not now then
  return {-2, redis_ms}
end
local expires = 0
if ARGV[2] ~= '0' then
  expires = tonumber(ARGV[2]) - tonumber(ARGV[1]) + now
end
local mode = tonumber(ARGV[4])
local dry = mode == 1
local nc = tonumber(ARGV[7])
local ng = tonumber(ARGV[8])
local rkey = KEYS[2]
-- a caller's id that is already a reservation (live, expired or settled) is refused: reserving
-- again under it would overwrite the first reservation, whose estimate would never come back
if mode % 4 == 2 and redis.call('EXISTS', rkey) == 1 then
  return {-5}
end
local ro = 9 + 8 * nc  -- where the rate entries start

-- The expiry sweep costs about a fifth of this script, so it runs on about one check in eight
-- (picked by the caller, ARGV[4] >= 4), on every status read, before any
-- refusal by a budget and before a carry is computed: an expired reservation can then never
-- cause a refusal or shrink a carry (no under-grant), and the set of live reservations stays
-- bounded.
local swept = dry
if dry then
  sweep(KEYS[1], ARGV[5], now, true)
elseif mode >= 4 then
  sweep(KEYS[1], ARGV[5], now, false)
end

-- Rate limits (GCRA): read, and fill their reply values from position n + 1. Returns the
-- first rate that does not fit (0 = none), its retry time and the new arrival times.
local function read_rates(out, n)
  local tats = {}
  local first, retry = 0, 0
  local now_us = now * 1000
  local o = ro
  for j = 1, ng do
    local est = tonumber(ARGV[o + 2])
    local tat = tonumber(redis.call('GET', KEYS[tonumber(ARGV[o + 1])])) or now_us
    if tat < now_us then
      tat = now_us
    end
    local new_tat = tat + est * tonumber(ARGV[o + 3])
    local ahead = new_tat - now_us
    local tolerance = tonumber(ARGV[o + 4])
    n = n + 1
    if est > 0 and ahead > tolerance then
      if first == 0 then
        first = j
        retry = ahead - tolerance
      end
      out[n] = tat - now_us
    else
      tats[j] = new_tat
      out[n] = dry and (tat - now_us) or ahead
    end
    o = o + 4
  end
  return first, retry, tats
end

-- Everything fits and budgets are reserved: charge the rate limits, store the reservation.
local function finish(tats)
  local now_us = now * 1000
  local o = ro
  for j = 1, ng do
    if ARGV[o + 2] ~= '0' then
      local ttl = math.floor((tats[j] - now_us) / 1000) + 1000
      redis.call('SET', KEYS[tonumber(ARGV[o + 1])], I(tats[j]), 'PX', I(ttl))
    end
    o = o + 4
  end
  if expires ~= 0 then
    redis.call('SET', rkey, 'R' .. ARGV[6], 'PX', ARGV[3])
    redis.call('ZADD', KEYS[1], I(expires), string.sub(rkey, #ARGV[5] + 1))
  end
end

-- Fast path: reserve on each budget with one HINCRBY of "held" and compare. A budget that does
-- not fit, a carry not computed yet for this period, or a rate limit that does not fit undoes
-- what was reserved and hands over to the full path below, which sweeps expired reservations
-- first and reports used and reserved separately.
if not dry then
  local out = {1, 0, 0}
  local o = 9
  local done = 0
  local ok = true
  for j = 1, nc do
    local key = KEYS[ARGV[o + 1] + 0]
    local m = ARGV[o + 2]
    local est = ARGV[o + 3]
    local c = 0
    if ARGV[o + 7] ~= '-1' then
      c = redis.call('HGET', key, 'c:' .. m)
      if not c then
        ok = false
        break
      end
      c = c + 0
    end
    local h
    if est == '0' then
      h = (redis.call('HGET', key, 'h:' .. m) or 0) + 0
    else
      h = redis.call('HINCRBY', key, 'h:' .. m, est)
      done = j
      if h == est + 0 then
        expire_at(key, ARGV[o + 6], now)
      end
    end
    -- A zero estimate must not slip through an exhausted budget; a zero budget blocks all.
    if ARGV[o + 5] == '1' then
      local cap = ARGV[o + 4] + c
      if h > cap or (est == '0' and h >= cap) then
        ok = false
        break
      end
    end
    out[3 * j + 1] = -1
    out[3 * j + 2] = h
    out[3 * j + 3] = c
    o = o + 8
  end
  if ok then
    local first, _, tats = read_rates(out, 3 + 3 * nc)
    if first == 0 then
      finish(tats)
      return out
    end
  end
  o = 9
  for j = 1, done do
    local est = ARGV[o + 3]
    if est ~= '0' then
      redis.call('HINCRBY', KEYS[ARGV[o + 1] + 0], 'h:' .. ARGV[o + 2], '-' .. est)
    end
    o = o + 8
  end
end

-- Full path: read used and held of every budget; if that would refuse (or compute a carry)
-- without a full sweep first, sweep and read again. Plain locals and numbers from strings by
-- arithmetic ("12" + 0): this loop used to be most of the script's CPU.
local out, n, blocker, fresh, carries, o
for _ = 1, 2 do
  out = {1, 0, 0}
  n = 3
  blocker = 0
  fresh = nil
  carries = nil
  local stale = false  -- a carry was computed without a sweep first
  o = 9
  for j = 1, nc do
    local key = KEYS[ARGV[o + 1] + 0]
    local m = ARGV[o + 2]
    local cap = ARGV[o + 7]
    local f
    if cap == '-1' then
      f = redis.call('HMGET', key, 'u:' .. m, 'h:' .. m)
    else
      f = redis.call('HMGET', key, 'u:' .. m, 'h:' .. m, 'c:' .. m)
    end
    local u = (f[1] or 0) + 0
    local h = (f[2] or 0) + 0
    local c = 0
    local limit = ARGV[o + 4] + 0
    if cap ~= '-1' then
      c = tonumber(f[3])
      if c == nil then
        local prev = tonumber(ARGV[o + 8])
        cap = tonumber(cap)
        c = carry_from(prev > 0 and KEYS[prev] or nil, m, limit, cap == -2 and -1 or cap)
        carries = carries or {}
        carries[j] = c
        stale = not swept
      end
    end
    if not f[1] and not f[2] then
      fresh = fresh or {}
      fresh[j] = true
    end
    if blocker == 0 and ARGV[o + 5] == '1' then
      local est = ARGV[o + 3] + 0
      if h + est > limit + c or (est == 0 and h >= limit + c) then
        blocker = j
      end
    end
    out[n + 1] = u
    out[n + 2] = h - u
    out[n + 3] = c
    n = n + 3
    o = o + 8
  end
  if swept or not (blocker > 0 or stale) then
    break
  end
  swept = true
  if sweep(KEYS[1], ARGV[5], now, true) == 0 then
    break
  end
end

local retry = 0
local tats
if ng > 0 then
  local first, wait
  first, wait, tats = read_rates(out, n)
  if blocker == 0 and first > 0 then
    blocker = nc + first
    retry = wait
  end
end

if blocker > 0 then
  out[1] = 0
  out[2] = blocker
  out[3] = retry
  return out
end
if dry then
  return out
end

-- Every limit fits: reserve on all of them.
o = 9
for j = 1, nc do
  local est = ARGV[o + 3]
  if est ~= '0' then
    local h = redis.call('HINCRBY', KEYS[ARGV[o + 1] + 0], 'h:' .. ARGV[o + 2], est)
    out[2 + 3 * j] = h - out[1 + 3 * j]
  end
  o = o + 8
end
if carries or fresh then
  o = 9
  for j = 1, nc do
    local key = KEYS[tonumber(ARGV[o + 1])]
    if carries and carries[j] ~= nil then
      redis.call('HSET', key, 'c:' .. ARGV[o + 2], I(carries[j]))
    end
    if fresh and fresh[j] and (ARGV[o + 3] ~= '0' or (carries and carries[j] ~= nil)) then
      expire_at(key, ARGV[o + 6], now)
    end
    o = o + 8
  end
end
finish(tats)
return out
