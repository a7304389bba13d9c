-- rebuild: put durable usage back into an org's counters after Redis lost data (restart
-- without persistence, FLUSHALL, failover to a stale replica), then mark the org complete.
-- A counter becomes max(current, total) where total = recorded in SQL + unflushed ledger
-- deltas + adjustments applied to it, clamped at zero once, at the end (a credit recorded
-- before the usage it refunds was flushed must not be lost to an early clamp): exact after a
-- loss, never lower than what Redis already counts, and conservative on a stale replica.
--
-- Thresholds that the restored total reaches and that have not fired yet fire now (into the
-- org's event stream, as settle.lua does): usage admitted between the loss and the rebuild
-- counted from zero, so its commits could not see the crossing. Receivers dedupe on the
-- event id, so a crossing that did fire before the loss is not delivered twice.
--
-- KEYS[1] P:{org}:epoch    KEYS[2..] counter, ledger and event-stream keys (by index)
-- ARGV[1] the org's flush sequence in SQL (becomes the epoch)   ARGV[2] now (ms)
-- ARGV[3] number of entries   ARGV[4] index of the org's event stream key
-- then per entry 10 values and a list:
--   counter key index, metric code, recorded amount, adjustments (signed sum), thresholds
--   fired (count), expire-at (ms), drop carry (1/0: recompute rollover from the restored
--   previous period), limit (0: no alerts from here), thresholds csv, number of ledger keys,
--   then that many ledger key indexes
-- Returns the number of counters raised.

local now = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local events = KEYS[tonumber(ARGV[4])]
local pos = 5
local raised = 0
for _ = 1, n do
  local key = KEYS[tonumber(ARGV[pos])]
  local m = ARGV[pos + 1]
  local total = tonumber(ARGV[pos + 2]) + tonumber(ARGV[pos + 3])
  local fired = tonumber(ARGV[pos + 4])
  local exp = ARGV[pos + 5]
  local drop = ARGV[pos + 6] == '1'
  local limit = tonumber(ARGV[pos + 7])
  local ths = ARGV[pos + 8]
  local nl = tonumber(ARGV[pos + 9])
  pos = pos + 10
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
  local already = tonumber(redis.call('HGET', key, 'a:' .. m)) or 0
  if fired > already then
    redis.call('HSET', key, 'a:' .. m, I(fired))
    already = fired
  end
  if limit > 0 and ths ~= '' then
    local u = tonumber(redis.call('HGET', key, 'u:' .. m)) or 0
    local reached = 0
    local k = 0
    for th in string.gmatch(ths, '%d+') do
      k = k + 1
      if u * 100 >= tonumber(th) * limit then
        reached = k
      end
    end
    if reached > already then
      redis.call('HSET', key, 'a:' .. m, I(reached))
      k = 0
      for th in string.gmatch(ths, '%d+') do
        k = k + 1
        if k > already and k <= reached then
          redis.call('XADD', events, 'MAXLEN', '~', '100000', '*',
            'k', key, 'm', m, 'th', th, 'u', I(u), 'l', I(limit), 't', I(now))
        end
      end
    end
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
