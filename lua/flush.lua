-- flush: move one org's unflushed ledger deltas into a pending flush record.
-- The reconciler writes the record to SQL in one transaction, then acknowledges it (ack.lua);
-- until then the record stays in Redis, so a crash loses nothing. One record per org at a time.
--
-- KEYS[1] P:{org}:dirty    KEYS[2] P:{org}:epoch    KEYS[3] P:{org}:pf (pending flush)
-- ARGV[1] expected epoch (the org's flush sequence in SQL)
-- ARGV[2] flush id for a new record    ARGV[3] most ledger keys to move
--
-- Returns {'epoch', <epoch or ''>} when Redis's epoch differs (caller restores or acks),
--         {'pending', <record>} when an unacknowledged record exists (caller applies it),
--         {'moved', <record>} after moving deltas, or {'empty'}.
-- Record format: '<flush id>\n' then per ledger key: '<key>\t<field>=<value>\t...\n'.

local epoch = redis.call('GET', KEYS[2])
if epoch ~= ARGV[1] then
  return {'epoch', epoch or ''}
end
local pending = redis.call('GET', KEYS[3])
if pending then
  return {'pending', pending}
end
local members = redis.call('SPOP', KEYS[1], tonumber(ARGV[3]))
if #members == 0 then
  return {'empty'}
end
local parts = {ARGV[2], '\n'}
for i = 1, #members do
  local key = members[i]
  local h = redis.call('HGETALL', key)
  if #h > 0 then
    parts[#parts + 1] = key
    for j = 1, #h, 2 do
      parts[#parts + 1] = '\t' .. h[j] .. '=' .. h[j + 1]
    end
    parts[#parts + 1] = '\n'
    redis.call('DEL', key)
  end
end
local record = table.concat(parts)
redis.call('SET', KEYS[3], record)
return {'moved', record}
