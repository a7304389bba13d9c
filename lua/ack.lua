-- ack: a pending flush record reached SQL; drop it and advance the org's epoch.
--
-- KEYS[1] P:{org}:epoch    KEYS[2] P:{org}:pf
-- ARGV[1] flush id of the record    ARGV[2] the org's flush sequence in SQL after it
-- Returns 1 when the record was dropped, 0 when it was not there (already acknowledged).

local pending = redis.call('GET', KEYS[2])
if pending and string.sub(pending, 1, #ARGV[1] + 1) == ARGV[1] .. '\n' then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
