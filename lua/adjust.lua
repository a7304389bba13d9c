-- adjust: an operator's credit (negative) or debit (positive) of one scope's usage.
-- Usage never goes below zero.
--
-- KEYS[1], KEYS[2], ... counter keys of the scope's current periods
-- ARGV[1] now (ms)   ARGV[2] metric code   ARGV[3] amount (signed integer)
-- ARGV[3 + i] expire-at (ms) of KEYS[i]
-- Returns the new used amount of each key.

local now = tonumber(ARGV[1])
local m = ARGV[2]
local out = {}
for i = 1, #KEYS do
  local fresh = redis.call('EXISTS', KEYS[i]) == 0
  local v = redis.call('HINCRBY', KEYS[i], 'u:' .. m, ARGV[3])
  local moved = tonumber(ARGV[3])
  if v < 0 then
    redis.call('HSET', KEYS[i], 'u:' .. m, '0')
    moved = moved - v
    v = 0
  end
  -- held (used + reserved) moves with used
  if moved ~= 0 then
    redis.call('HINCRBY', KEYS[i], 'h:' .. m, I(moved))
  end
  if fresh then
    expire_at(KEYS[i], ARGV[3 + i], now)
  end
  out[i] = v
end
return out
