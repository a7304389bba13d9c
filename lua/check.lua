-- check: all-or-nothing check-and-reserve over every budget and rate limit of one subject.
-- Also serves status reads (dry run: nothing reserved, carry not stored).
--
-- KEYS[1]  P:{org}:rx            zset of live reservations by expiry
-- KEYS[2]  P:{org}:r:<id>        reservation key (written when allowed and not a dry run)
-- KEYS[3..] counter keys, previous-period counter keys, rate keys (referenced by index below)
-- ARGV[1]  now (ms)              ARGV[2] reservation expiry (ms, absolute)
-- ARGV[3]  reservation key TTL (ms; expiry + settle-marker retention)
-- ARGV[4]  dry run (1/0)         ARGV[5] reservation key prefix P:{org}:r:
-- ARGV[6]  plan head and body (without the state letter), stored as 'R' .. ARGV[6]
-- ARGV[7]  nc: number of budget entries    ARGV[8] ng: number of rate entries
-- then nc budget entries of 8 values:
--   key index, metric code, estimate, limit, hard (1/0), expire-at (ms), cap (-1 reset,
--   -2 accumulate without cap, >= 0 cap), previous-period key index (0 = none)
-- then ng rate entries of 4 values: key index, estimate, interval (us per unit), tolerance (us)
--
-- Returns {allowed (1/0), blocking entry (1-based over budgets then rates, 0 = none),
--          retry after (us, rates only), then per budget: used, reserved, carry,
--          then per rate: used-up time ahead of now (us, after the reservation if allowed)}

local now = tonumber(ARGV[1])
local dry = ARGV[4] == '1'
local nc = tonumber(ARGV[7])
local ng = tonumber(ARGV[8])
local rkey = KEYS[2]

-- The expiry sweep costs about a fifth of this script, so it runs on about one check in eight
-- (picked from the random reservation id and the clock), on every status read, before any
-- refusal by a budget and before a carry is computed: an expired reservation can then never
-- cause a refusal or shrink a carry (no under-grant), and the set of live reservations stays
-- bounded.
local swept = dry
if dry then
  sweep(KEYS[1], ARGV[5], now, true)
elseif (string.byte(rkey, -1) + now) % 8 == 0 then
  sweep(KEYS[1], ARGV[5], now, false)
end

-- Read every budget; if that would refuse (or compute a carry) without a full sweep first,
-- sweep and read again. This loop is most of the script's CPU: plain locals (no closure),
-- and numbers from strings by arithmetic ("12" + 0) rather than calls to tonumber().
local out, n, blocker, fresh, carries, o
for _ = 1, 2 do
  out = {1, 0, 0}
  n = 3
  blocker = 0
  fresh = nil
  carries = nil
  local stale = false  -- a carry was computed without a sweep first
  o = 8
  for j = 1, nc do
    local key = KEYS[ARGV[o + 1] + 0]
    local m = ARGV[o + 2]
    local cap = ARGV[o + 7]
    local f
    if cap == '-1' then
      f = redis.call('HMGET', key, 'u:' .. m, 'r:' .. m)
    else
      f = redis.call('HMGET', key, 'u:' .. m, 'r:' .. m, 'c:' .. m)
    end
    local u = (f[1] or 0) + 0
    local r = (f[2] or 0) + 0
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
    -- Blocks when the estimate does not fit, or when nothing is left (a zero estimate must not
    -- slip through an exhausted budget; a zero budget blocks everything).
    if blocker == 0 and ARGV[o + 5] == '1' then
      local est = ARGV[o + 3] + 0
      if u + r + est > limit + c or (est == 0 and u + r >= limit + c) then
        blocker = j
      end
    end
    out[n + 1] = u
    out[n + 2] = r
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
  tats = {}
  local now_us = now * 1000
  for j = 1, ng do
    local key = KEYS[tonumber(ARGV[o + 1])]
    local est = tonumber(ARGV[o + 2])
    local tat = tonumber(redis.call('GET', key)) or now_us
    if tat < now_us then
      tat = now_us
    end
    local new_tat = tat + est * tonumber(ARGV[o + 3])
    local ahead = new_tat - now_us
    local tolerance = tonumber(ARGV[o + 4])
    n = n + 1
    if est > 0 and ahead > tolerance then
      if blocker == 0 then
        blocker = nc + j
        retry = ahead - tolerance
      end
      out[n] = tat - now_us
    else
      tats[j] = new_tat
      out[n] = dry and (tat - now_us) or ahead
    end
    o = o + 4
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
o = 8
for j = 1, nc do
  local est = ARGV[o + 3]
  if est ~= '0' then
    out[2 + 3 * j] = redis.call('HINCRBY', KEYS[ARGV[o + 1] + 0], 'r:' .. ARGV[o + 2], est)
  end
  o = o + 8
end
if carries or fresh then
  o = 8
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
if ng > 0 then
  local now_us = now * 1000
  for j = 1, ng do
    if ARGV[o + 2] ~= '0' then
      local ttl = math.floor((tats[j] - now_us) / 1000) + 1000
      redis.call('SET', KEYS[tonumber(ARGV[o + 1])], I(tats[j]), 'PX', I(ttl))
    end
    o = o + 4
  end
end
if ARGV[2] ~= '0' then
  redis.call('SET', rkey, 'R' .. ARGV[6], 'PX', ARGV[3])
  redis.call('ZADD', KEYS[1], ARGV[2], string.sub(rkey, #ARGV[5] + 1))
end
return out
