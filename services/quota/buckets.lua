-- Quota for one request: the key's and its tenant's request and token buckets,
-- concurrency leases, token budgets and dollar budgets, decided atomically in
-- one call; settling also buffers the request's usage record for the ledger.
--
-- Every key shares one hash tag, the shard's `{mg<N>}` (meshgate/shards.py):
-- a tenant, all of its keys and the shard's usage stream live in one slot, so
-- the script runs unchanged on Redis Cluster. Buckets refill continuously at
-- limit/60000 per millisecond up to `limit`; the clock is Redis's own (TIME),
-- so every quota replica agrees. A limit of 0 means unlimited and touches nothing.
--
-- KEYS[1] lease hash: lease id -> the record to write if the lease lapses
-- KEYS[2] open leases: zset of lease ids by expiry (swept by sweep.lua)
-- KEYS[3] the shard's usage stream (the ledger's buffer)
-- KEYS[4..8]  the key:    requests, tokens, leases, tokens spent, micro-dollars spent this period
-- KEYS[9..13] the tenant: the same (present but unused when its limits are all 0)
--
-- ARGV[1] op: "reserve" | "settle" | "record" | "peek"
-- ARGV[2..7]  the key's limits:    rpm, tpm, max_concurrency, budget_tokens,
--                                  budget_micro_usd, seconds the period counter lives (0: forever)
-- ARGV[8..13] the tenant's limits: the same
-- reserve: ARGV[14] token cost, ARGV[15] micro-dollar cost, ARGV[16] lease id ('' takes none;
--          one that is held already is admitted again without a charge: retries are safe),
--          ARGV[17] lease ttl ms, ARGV[18] the record to write if the lease lapses ('' none)
-- settle:  ARGV[14] tokens reserved, ARGV[15] micro-dollars reserved, ARGV[16] lease id,
--          ARGV[17] tokens used, ARGV[18] micro-dollars used, ARGV[19] the record ('' none)
-- record:  ARGV[19] the record of a request admitted without a reservation (fail_open)
--
-- Returns {verdict, subject, then for the key and then the tenant:
--          remaining_requests, remaining_tokens, reset_requests_ms, reset_tokens_ms,
--          micro-dollars spent this period; then wait_ms}
-- verdict: 0 admitted (settle: 0 settled now, 7 already settled or lapsed),
--          1 requests empty, 2 tokens short, 3 cost above tpm (can never fit),
--          4 concurrency full, 5 token budget spent, 6 dollar budget spent
-- subject: 1 the key refused, 2 its tenant (0 when admitted)

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local op = ARGV[1]

local function subject(first_key, first_arg)
  return {
    requests = KEYS[first_key], tokens = KEYS[first_key + 1], leases = KEYS[first_key + 2],
    spent = KEYS[first_key + 3], usd = KEYS[first_key + 4],
    rpm = tonumber(ARGV[first_arg]), tpm = tonumber(ARGV[first_arg + 1]),
    max_concurrency = tonumber(ARGV[first_arg + 2]), budget = tonumber(ARGV[first_arg + 3]),
    budget_usd = tonumber(ARGV[first_arg + 4]), usd_ttl = tonumber(ARGV[first_arg + 5]),
  }
end
local subjects = {subject(4, 2), subject(9, 8)}

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

local function counter(key, limit)
  if limit <= 0 then return 0 end
  return tonumber(redis.call('GET', key) or '0')
end

for _, s in ipairs(subjects) do
  s.requests_level = level_of(s.requests, s.rpm)
  s.tokens_level = level_of(s.tokens, s.tpm)
end

local function result(verdict, who, wait)
  local out = {verdict, who}
  for _, s in ipairs(subjects) do
    table.insert(out, math.floor(math.max(s.requests_level, 0)))
    table.insert(out, math.floor(math.max(s.tokens_level, 0)))
    table.insert(out, reset_ms(s.requests_level, s.rpm))
    table.insert(out, reset_ms(s.tokens_level, s.tpm))
    table.insert(out, counter(s.usd, s.budget_usd))
  end
  table.insert(out, wait)
  return out
end

local function add_usd(s, amount)
  if s.budget_usd <= 0 or amount == 0 then return end
  redis.call('INCRBY', s.usd, amount)
  if s.usd_ttl > 0 then redis.call('EXPIRE', s.usd, s.usd_ttl) end
end

if op == 'peek' then
  return result(0, 0, 0)
end

if op == 'record' then
  redis.call('XADD', KEYS[3], '*', 'r', ARGV[19])
  return result(0, 0, 0)
end

if op == 'settle' then
  -- The lease makes settling idempotent: only the call that removes it refunds
  -- and records, so a settlement delivered twice (a retried call) counts once,
  -- and one that comes after its lease lapsed (swept) changes nothing. A script
  -- is not rolled back when a command fails (a key of the wrong type), so the
  -- record and the lease go first: a poisoned bucket may lose its refund, never
  -- the record, and never count it twice.
  local lease = ARGV[16]
  if redis.call('HEXISTS', KEYS[1], lease) == 0 then
    return result(7, 0, 0)
  end
  if ARGV[19] ~= '' then
    redis.call('XADD', KEYS[3], '*', 'r', ARGV[19])
  end
  redis.call('HDEL', KEYS[1], lease)
  redis.call('ZREM', KEYS[2], lease)
  local reserved, used = tonumber(ARGV[14]), tonumber(ARGV[17])
  local usd_reserved, usd_used = tonumber(ARGV[15]), tonumber(ARGV[18])
  for _, s in ipairs(subjects) do
    if s.max_concurrency > 0 then redis.call('ZREM', s.leases, lease) end
    if s.tpm > 0 and reserved ~= used then
      -- Refund what was reserved but not used; a request that used more than it
      -- reserved leaves the bucket in debt, so the limit still holds.
      s.tokens_level = math.min(s.tpm, s.tokens_level + reserved - used)
      store(s.tokens, s.tokens_level, s.tpm)
    end
    if s.budget > 0 and reserved ~= used then
      redis.call('INCRBY', s.spent, used - reserved)
    end
    add_usd(s, usd_used - usd_reserved)
  end
  return result(0, 0, 0)
end

-- reserve: every check on both subjects first, then every charge, so a refusal charges nothing.
local cost, usd_cost = tonumber(ARGV[14]), tonumber(ARGV[15])
local lease, ttl = ARGV[16], tonumber(ARGV[17])
if lease ~= '' and redis.call('HEXISTS', KEYS[1], lease) == 1 then
  -- The same admission again (the caller retried after losing our answer):
  -- it holds its lease already, so it is admitted without a second charge.
  return result(0, 0, 0)
end
for i, s in ipairs(subjects) do
  if s.budget > 0 and counter(s.spent, s.budget) + cost > s.budget then
    return result(5, i, -1)
  end
  if s.budget_usd > 0 and counter(s.usd, s.budget_usd) + usd_cost > s.budget_usd then
    return result(6, i, -1)
  end
end
for i, s in ipairs(subjects) do
  if s.max_concurrency > 0 then
    -- Leases of crashed requests lapse by their TTL.
    redis.call('ZREMRANGEBYSCORE', s.leases, '-inf', now)
    if redis.call('ZCARD', s.leases) >= s.max_concurrency then
      local oldest = redis.call('ZRANGE', s.leases, 0, 0, 'WITHSCORES')
      return result(4, i, math.max(1, tonumber(oldest[2]) - now))
    end
  end
end
for i, s in ipairs(subjects) do
  if s.rpm > 0 and s.requests_level < 1 then
    return result(1, i, math.ceil((1 - s.requests_level) * 60000 / s.rpm))
  end
end
for i, s in ipairs(subjects) do
  if s.tpm > 0 and s.tokens_level < cost then
    if cost > s.tpm then
      return result(3, i, -1)
    end
    return result(2, i, math.ceil((cost - s.tokens_level) * 60000 / s.tpm))
  end
end
for _, s in ipairs(subjects) do
  if s.rpm > 0 then
    s.requests_level = s.requests_level - 1
    store(s.requests, s.requests_level, s.rpm)
  end
  if s.tpm > 0 then
    s.tokens_level = s.tokens_level - cost
    store(s.tokens, s.tokens_level, s.tpm)
  end
  if s.budget > 0 then
    redis.call('INCRBY', s.spent, cost)
  end
  add_usd(s, usd_cost)
  if s.max_concurrency > 0 and lease ~= '' then
    redis.call('ZADD', s.leases, now + ttl, lease)
    redis.call('PEXPIRE', s.leases, ttl + 1000)
  end
end
if lease ~= '' then
  -- Every lease is held until settled or lapsed: it is what lets a settlement
  -- apply exactly once, and what the sweeper records if none ever comes.
  redis.call('HSET', KEYS[1], lease, ARGV[18])
  redis.call('ZADD', KEYS[2], now + ttl, lease)
end
return result(0, 0, 0)
