-- Token buckets for one API key, reserved and settled atomically.
--
-- Every key shares the hash tag {key_id}, so the script runs unchanged on
-- Redis Cluster. Buckets refill continuously at limit/60000 per millisecond
-- up to `limit`; the clock is Redis's own (TIME), so every replica of the
-- quota service agrees on it.
--
-- KEYS[1] request bucket, KEYS[2] token bucket
-- ARGV[1] op ("reserve" | "settle"), ARGV[2] rpm, ARGV[3] tpm,
-- reserve: ARGV[4] token cost
-- settle:  ARGV[4] tokens reserved, ARGV[5] tokens used
--
-- Returns {admitted, remaining_requests, remaining_tokens,
--          wait_requests_ms, wait_tokens_ms, reset_requests_ms, reset_tokens_ms}
-- where wait_tokens_ms is -1 when the cost can never fit in the bucket.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local op = ARGV[1]
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])

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

if op == 'settle' then
  if tpm > 0 then
    -- Refund what was reserved but not used; a request that used more than it
    -- reserved leaves the bucket in debt, so the limit still holds.
    tokens = math.min(tpm, tokens + tonumber(ARGV[4]) - tonumber(ARGV[5]))
    store(KEYS[2], tokens, tpm)
  end
  return {1, math.floor(requests), math.floor(tokens), 0, 0, reset_ms(requests, rpm), reset_ms(tokens, tpm)}
end

local cost = tonumber(ARGV[4])
local wait_requests, wait_tokens = 0, 0
if rpm > 0 and requests < 1 then
  wait_requests = math.ceil((1 - requests) * 60000 / rpm)
end
if tpm > 0 and tokens < cost then
  if cost > tpm then
    wait_tokens = -1
  else
    wait_tokens = math.ceil((cost - tokens) * 60000 / tpm)
  end
end
if wait_requests ~= 0 or wait_tokens ~= 0 then
  return {0, math.floor(requests), math.floor(math.max(tokens, 0)), wait_requests, wait_tokens,
          reset_ms(requests, rpm), reset_ms(tokens, tpm)}
end
if rpm > 0 then
  requests = requests - 1
  store(KEYS[1], requests, rpm)
end
if tpm > 0 then
  tokens = tokens - cost
  store(KEYS[2], tokens, tpm)
end
return {1, math.floor(requests), math.floor(math.max(tokens, 0)), 0, 0,
        reset_ms(requests, rpm), reset_ms(tokens, tpm)}
