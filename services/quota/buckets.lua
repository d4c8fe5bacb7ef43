-- Quota for one API key: request and token buckets, a concurrency lease set
-- and a lifetime token budget, decided atomically in one call.
--
-- Every key shares the hash tag {key_id}, so the script runs unchanged on
-- Redis Cluster. Buckets refill continuously at limit/60000 per millisecond up
-- to `limit`; the clock is Redis's own (TIME), so every quota replica agrees.
-- A limit of 0 means unlimited and touches nothing.
--
-- KEYS[1] request bucket   KEYS[2] token bucket
-- KEYS[3] lease zset       KEYS[4] budget counter (tokens spent)
--
-- ARGV[1] op: "reserve" | "settle" | "peek"
-- ARGV[2] rpm  ARGV[3] tpm  ARGV[4] max_concurrency  ARGV[5] budget_tokens
-- reserve: ARGV[6] token cost, ARGV[7] lease id, ARGV[8] lease ttl ms
-- settle:  ARGV[6] tokens reserved, ARGV[7] lease id, ARGV[8] tokens used
--
-- Returns {verdict, remaining_requests, remaining_tokens, reset_requests_ms,
--          reset_tokens_ms, wait_ms}
-- verdict: 0 admitted, 1 requests empty, 2 tokens short, 3 cost above tpm
--          (can never fit), 4 concurrency full, 5 budget spent

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local op = ARGV[1]
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_concurrency, budget = tonumber(ARGV[4]), tonumber(ARGV[5])

local function level_of(key, limit)
  if limit <= 0 then return 0 end
  local v = redis.call('HMGET', key, 'level', 'ts')
  local level, ts = tonumber(v[1]), tonumber(v[2])
  if level == nil then return limit end
  return math.min(limit, level + math.max(0, now - ts) * limit / 60000)
end

local function reset_ms(level, limit)
  if limit <= 0 or level >= limit then return 0 end
  return math.ceil((limit - level) * 60000 / limit)
end

local function store(key, level, limit)
  redis.call('HSET', key, 'level', tostring(level), 'ts', now)
  redis.call('PEXPIRE', key, reset_ms(level, limit) + 1000)
end

local requests = level_of(KEYS[1], rpm)
local tokens = level_of(KEYS[2], tpm)

local function result(verdict, wait)
  return {verdict, math.floor(math.max(requests, 0)), math.floor(math.max(tokens, 0)),
          reset_ms(requests, rpm), reset_ms(tokens, tpm), wait}
end

if op == 'peek' then
  return result(0, 0)
end

if op == 'settle' then
  -- The lease makes settling idempotent: only the call that removes it refunds,
  -- so a settlement that is delivered twice (a retried call) counts once.
  if redis.call('ZREM', KEYS[3], ARGV[7]) == 0 then
    return result(0, 0)
  end
  local reserved, used = tonumber(ARGV[6]), tonumber(ARGV[8])
  if tpm > 0 and reserved ~= used then
    -- Refund what was reserved but not used; a request that used more than it
    -- reserved leaves the bucket in debt, so the limit still holds.
    tokens = math.min(tpm, tokens + reserved - used)
    store(KEYS[2], tokens, tpm)
  end
  if budget > 0 and reserved ~= used then
    redis.call('INCRBY', KEYS[4], used - reserved)
  end
  return result(0, 0)
end

-- reserve
local cost = tonumber(ARGV[6])
if budget > 0 then
  local spent = tonumber(redis.call('GET', KEYS[4]) or '0')
  if spent + cost > budget then
    return result(5, -1)
  end
end
-- Leases of crashed requests lapse by their TTL.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if max_concurrency > 0 then
  if redis.call('ZCARD', KEYS[3]) >= max_concurrency then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return result(4, math.max(1, tonumber(oldest[2]) - now))
  end
end
if rpm > 0 and requests < 1 then
  return result(1, math.ceil((1 - requests) * 60000 / rpm))
end
if tpm > 0 and tokens < cost then
  if cost > tpm then
    return result(3, -1)
  end
  return result(2, math.ceil((cost - tokens) * 60000 / tpm))
end
if rpm > 0 then
  requests = requests - 1
  store(KEYS[1], requests, rpm)
end
if tpm > 0 then
  tokens = tokens - cost
  store(KEYS[2], tokens, tpm)
end
if budget > 0 then
  redis.call('INCRBY', KEYS[4], cost)
end
if ARGV[7] ~= '' then
  -- Every lease is held until settled: it counts against max_concurrency, and
  -- it is what lets a settlement apply exactly once.
  local ttl = tonumber(ARGV[8])
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[7])
  redis.call('PEXPIRE', KEYS[3], ttl + 1000)
end
return result(0, 0)
