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
local now_us = now * 1000

sweep(KEYS[1], ARGV[5], now)

local out = {1, 0, 0}
local blocker = 0
local retry = 0
local fresh = {}
local carries = {}
local base = 8
for j = 1, nc do
  local o = base + (j - 1) * 8
  local key = KEYS[tonumber(ARGV[o + 1])]
  local m = ARGV[o + 2]
  local est = tonumber(ARGV[o + 3])
  local limit = tonumber(ARGV[o + 4])
  local f = redis.call('HMGET', key, 'u:' .. m, 'r:' .. m, 'c:' .. m)
  local u = tonumber(f[1]) or 0
  local r = tonumber(f[2]) or 0
  local c = tonumber(f[3])
  fresh[j] = not f[1] and not f[2] and not f[3]
  if c == nil then
    local cap = tonumber(ARGV[o + 7])
    if cap == -1 then
      c = 0
    else
      local prev = tonumber(ARGV[o + 8])
      c = carry_from(prev > 0 and KEYS[prev] or nil, m, limit, cap == -2 and -1 or cap)
      carries[j] = c
    end
  end
  -- Blocks when the estimate does not fit, or when nothing is left (a zero estimate must not
  -- slip through an exhausted budget; a zero budget blocks everything).
  if blocker == 0 and ARGV[o + 5] == '1' and (u + r + est > limit + c or (est == 0 and u + r >= limit + c)) then
    blocker = j
  end
  out[#out + 1] = u
  out[#out + 1] = r
  out[#out + 1] = c
end

local tats = {}
base = 8 + nc * 8
for j = 1, ng do
  local o = base + (j - 1) * 4
  local key = KEYS[tonumber(ARGV[o + 1])]
  local est = tonumber(ARGV[o + 2])
  local tat = tonumber(redis.call('GET', key)) or now_us
  if tat < now_us then
    tat = now_us
  end
  local new_tat = tat + est * tonumber(ARGV[o + 3])
  local ahead = new_tat - now_us
  local tolerance = tonumber(ARGV[o + 4])
  if est > 0 and ahead > tolerance then
    if blocker == 0 then
      blocker = nc + j
      retry = ahead - tolerance
    end
    out[#out + 1] = tat - now_us
  else
    tats[j] = new_tat
    out[#out + 1] = dry and (tat - now_us) or ahead
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
base = 8
for j = 1, nc do
  local o = base + (j - 1) * 8
  local key = KEYS[tonumber(ARGV[o + 1])]
  local m = ARGV[o + 2]
  if ARGV[o + 3] ~= '0' then
    redis.call('HINCRBY', key, 'r:' .. m, ARGV[o + 3])
    out[3 + (j - 1) * 3 + 2] = out[3 + (j - 1) * 3 + 2] + tonumber(ARGV[o + 3])
  end
  if carries[j] ~= nil then
    redis.call('HSET', key, 'c:' .. m, I(carries[j]))
  end
  if fresh[j] then
    expire_at(key, ARGV[o + 6], now)
  end
end
base = 8 + nc * 8
for j = 1, ng do
  local o = base + (j - 1) * 4
  if ARGV[o + 2] ~= '0' then
    local ttl = math.floor((tats[j] - now_us) / 1000) + 1000
    redis.call('SET', KEYS[tonumber(ARGV[o + 1])], I(tats[j]), 'PX', I(ttl))
  end
end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[2], 'R' .. ARGV[6], 'PX', ARGV[3])
  redis.call('ZADD', KEYS[1], ARGV[2], string.sub(KEYS[2], #ARGV[5] + 1))
end
return out
