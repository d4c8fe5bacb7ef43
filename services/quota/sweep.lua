-- Lapsed leases of one shard: requests whose settlement never came (the edge
-- holding them died). Each one's record, written at admission with what was
-- reserved, goes to the usage stream, so no admitted request goes unrecorded.
-- Atomic, so any number of quota replicas may sweep the same shard at once.
-- Its tokens and dollars stay charged at the reservation, as the record says.
--
-- KEYS[1] lease hash   KEYS[2] open leases (zset by expiry)   KEYS[3] usage stream
-- ARGV[1] at most this many leases per call
-- Returns the number of leases swept.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, lease in ipairs(lapsed) do
  local record = redis.call('HGET', KEYS[1], lease)
  redis.call('HDEL', KEYS[1], lease)
  redis.call('ZREM', KEYS[2], lease)
  if record and record ~= '' then
    redis.call('XADD', KEYS[3], '*', 'r', record)
  end
end
return #lapsed
