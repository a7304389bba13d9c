-- adjust: an operator's credit (negative) or debit (positive), applied once per adjustment id
-- to the current-period counters of every affected scope (the adjusted scope and the scopes
-- above it that have a limit on the metric: a refund of a user is a refund of its team too).
--
-- A credit never takes a counter below zero: applied = max(requested, -min(used)) over the
-- counters, and that SAME amount moves every counter (used and held together), so the one
-- number recorded in SQL is what each counter got, and a restore replays exactly that.
--
-- KEYS[1]   P:{org}:j:<adjustment id>   marker hash: applied, at (ms), op
-- KEYS[2..] counter keys of the affected scopes' current periods
-- ARGV[1] now (ms)   ARGV[2] metric code   ARGV[3] requested amount (signed integer)
-- ARGV[4] operation (scope, metric, requested): a retry must repeat it
-- ARGV[5] marker TTL (ms)   ARGV[4 + i] expire-at (ms) of KEYS[i], i >= 2
-- Returns {status, applied amount, applied at (ms)} (amounts as strings):
--   'applied'   the counters moved by the applied amount (0 if nothing could be credited)
--   'duplicate' the id was applied before: that amount and time; nothing changes
--   'conflict'  the id was used for another operation: nothing changes ('0', '0')

local now = tonumber(ARGV[1])
local m = ARGV[2]
local seen = redis.call('HMGET', KEYS[1], 'applied', 'at', 'op')
if seen[1] then
  if seen[3] ~= ARGV[4] then
    return {'conflict', '0', '0'}
  end
  return {'duplicate', seen[1], seen[2]}
end

local applied = tonumber(ARGV[3])
if applied < 0 then
  for i = 2, #KEYS do
    local used = tonumber(redis.call('HGET', KEYS[i], 'u:' .. m)) or 0
    if used < 0 then
      used = 0
    end
    if applied < -used then
      applied = -used
    end
  end
end

if applied ~= 0 then
  for i = 2, #KEYS do
    local fresh = redis.call('EXISTS', KEYS[i]) == 0
    redis.call('HINCRBY', KEYS[i], 'u:' .. m, I(applied))
    -- held (used + reserved) moves with used
    redis.call('HINCRBY', KEYS[i], 'h:' .. m, I(applied))
    if fresh then
      expire_at(KEYS[i], ARGV[4 + i], now)
    end
  end
end

redis.call('HSET', KEYS[1], 'applied', I(applied), 'at', I(now), 'op', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'applied', I(applied), I(now)}
