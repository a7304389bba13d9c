-- overrides.lua: publish a version of the runtime overrides, never going back.
--
-- KEYS[1]  P:{!overrides}:ver   the version in force (string integer)
-- KEYS[2]  P:{!overrides}:doc   that version's override set (JSON)
-- ARGV[1]  version to publish (integer > 0)
-- ARGV[2]  its override set (JSON)
--
-- Returns {published, version in force afterwards}: published is 1 when ARGV[1] was newer
-- than what Redis had (or Redis had none), 0 when a newer or equal version was already
-- there (two publishers racing: the older one changes nothing). No TTL: the overrides are
-- policy, not counters; SQL holds every version and restores them after a data loss.
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local wanted = tonumber(ARGV[1])
if wanted <= current then
  return {0, current}
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
return {1, wanted}
