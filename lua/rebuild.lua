-- rebuild: put durable usage back into an org's counters after Redis lost data (restart
-- without persistence, FLUSHALL, failover to a stale replica), then mark the org complete.
-- A counter becomes max(current, total) where total = recorded in SQL + unflushed ledger
-- deltas + adjustments applied to it, clamped at zero once, at the end (a credit recorded
-- before the usage it refunds was flushed must not be lost to an early clamp): exact after a
-- loss, never lower than what Redis already counts, and conservative on a stale replica.
--
-- KEYS[1] P:{org}:epoch    KEYS[2..] counter and ledger keys (referenced by index)
-- ARGV[1] the org's flush sequence in SQL (becomes the epoch)   ARGV[2] now (ms)
-- ARGV[3] number of entries, then per entry 8 values and a list:
--   counter key index, metric code, recorded amount, adjustments (signed sum), thresholds
--   fired (count), expire-at (ms), drop carry (1/0: recompute rollover from the restored
--   previous period), number of ledger keys, then that many ledger key indexes
-- Returns the number of counters raised.

local now = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local pos = 4
local raised = 0
for _ = 1, n do
  local key = KEYS[tonumber(ARGV[pos])]
  local m = ARGV[pos + 1]
  local total = tonumber(ARGV[pos + 2]) + tonumber(ARGV[pos + 3])
  local fired = tonumber(ARGV[pos + 4])
  local exp = ARGV[pos + 5]
  local drop = ARGV[pos + 6] == '1'
  local nl = tonumber(ARGV[pos + 7])
  pos = pos + 8
  for j = 1, nl do
    total = total + (tonumber(redis.call('HGET', KEYS[tonumber(ARGV[pos + j - 1])], m)) or 0)
  end
  pos = pos + nl
  if total < 0 then
    total = 0
  end
  local fresh = redis.call('EXISTS', key) == 0
  local cur = tonumber(redis.call('HGET', key, 'u:' .. m)) or 0
  if total > cur then
    redis.call('HSET', key, 'u:' .. m, I(total))
    redis.call('HINCRBY', key, 'h:' .. m, I(total - cur))
    raised = raised + 1
  end
  if fired > 0 and fired > (tonumber(redis.call('HGET', key, 'a:' .. m)) or 0) then
    redis.call('HSET', key, 'a:' .. m, I(fired))
  end
  if drop then
    redis.call('HDEL', key, 'c:' .. m)
  end
  if fresh and redis.call('EXISTS', key) == 1 then
    expire_at(key, exp, now)
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return raised
