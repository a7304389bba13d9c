-- lease: one holder at a time for a piece of background work (an org's reconciliation, the
-- alert deliverer), so that many sidecars on one Redis do it once, not once each.
--
-- KEYS[1] the lease key (P:{org}:lease, so it hashes to the org's slot on Redis Cluster)
-- ARGV[1] operation: 'take'    hold it if free (SET NX PX) or extend it if already ours
--                    'renew'   extend it only if ours (a lease that expired or went to
--                              someone else stays lost: the caller learns it)
--                    'release' delete it only if ours (clean shutdown)
-- ARGV[2] holder id (unique per process)    ARGV[3] lease length in ms (take, renew)
-- Returns {1, holder, ms left} when ARGV[2] holds it after the call (release: {1, '', 0}
-- when it was ours and is gone), else {0, current holder or '', its ms left or 0}.

local op, me = ARGV[1], ARGV[2]
local holder = redis.call('GET', KEYS[1])
if op == 'release' then
  if holder == me then
    redis.call('DEL', KEYS[1])
    return {1, '', 0}
  end
  return {0, holder or '', holder and redis.call('PTTL', KEYS[1]) or 0}
end
local ms = tonumber(ARGV[3])
if op ~= 'take' and op ~= 'renew' then
  return redis.error_reply('lease: unknown operation ' .. tostring(op))
end
if not ms or ms < 1 then
  return redis.error_reply('lease: length must be a positive number of ms')
end
if holder == me or (not holder and op == 'take') then
  redis.call('SET', KEYS[1], me, 'PX', I(ms))
  return {1, me, ms}
end
return {0, holder or '', holder and redis.call('PTTL', KEYS[1]) or 0}
