-- One decision. KEYS: each op's key (a slot op with an expiry window: then its expiredKey), then the
-- reservation key when ARGV[4] is set. ARGV: clock, atomic, dryRun, requestId, reservationTtlMs, op
-- count, then per op: kind (w|s|b), limit, p1, p2, shadow — window: windowMs, cost; slot: leaseMs,
-- expiredWindowMs (0: none); budget: periodEndMs, 0.
-- Returns admitted, denied (0-based, -1), now, expiredLeases, then per op ok, used, remaining, resetMs, retryMs.
local now = clock(ARGV[1])
local atomic = ARGV[2] == '1'
local dry = ARGV[3] == '1'
local rid = ARGV[4]
local rttl = tonumber(ARGV[5])
local nops = tonumber(ARGV[6])

local kind, lim, p1, p2, shadow, key, xkey = {}, {}, {}, {}, {}, {}, {}
local fits, pre, S, O, N, C = {}, {}, {}, {}, {}, {}
-- Requests whose leases expired in ops that count expiries, once each (not once per slot).
local gone, expired = {}, 0
local ki = 1
local nowf = fmt(now)

local function count_expired(k, w, c)
  local i = bidx(now, w)
  local s, o, n, cur = wload(k, i)
  wadd(k, i, c, s, o, n, w, now, cur)
end

for i = 1, nops do
  local a = 6 + (i - 1) * 5
  local kd = ARGV[a + 1]
  kind[i] = kd
  lim[i] = tonumber(ARGV[a + 2])
  p1[i] = tonumber(ARGV[a + 3])
  p2[i] = tonumber(ARGV[a + 4])
  shadow[i] = ARGV[a + 5] == '1'
  key[i] = KEYS[ki]
  ki = ki + 1
  if kd == 'w' then
    local s, o, n, c = wload(key[i], bidx(now, p1[i]))
    S[i], O[i], N[i], C[i] = s, o, n, c
    pre[i] = s
    fits[i] = s + p2[i] <= lim[i]
  elseif kd == 's' then
    if p2[i] > 0 then
      xkey[i] = KEYS[ki]
      ki = ki + 1
    end
    local active
    if dry then
      active = redis.call('ZCOUNT', key[i], '(' .. nowf, '+inf')
    else
      local freed = redis.call('ZRANGEBYSCORE', key[i], '-inf', nowf)
      if #freed > 0 then
        zrem_all(key[i], freed)
        if xkey[i] then
          count_expired(xkey[i], p2[i], #freed)
          for _, r in ipairs(freed) do
            if not gone[r] then
              gone[r] = true
              expired = expired + 1
            end
          end
        end
      end
      active = redis.call('ZCARD', key[i])
    end
    local held = tonumber(redis.call('ZSCORE', key[i], rid))
    fits[i] = (held ~= nil and held > now) or active < lim[i]
  else
    pre[i] = tonumber(redis.call('GET', key[i])) or 0
    fits[i] = pre[i] < lim[i]
  end
end

local admitted = true
local denied = -1
for i = 1, nops do
  if not fits[i] and not shadow[i] then
    admitted = false
    if atomic then
      denied = i - 1
      break
    end
  end
end

if not dry then
  local res = nil
  if rid ~= '' and (admitted or not atomic) then
    res = { 'r', rid, 't', nowf, 'x', fmt(now + rttl) }
  end
  for i = 1, nops do
    local apply
    if atomic then
      apply = admitted
    else
      apply = fits[i] or shadow[i]
    end
    if apply then
      if kind[i] == 'w' then
        if p2[i] > 0 then
          S[i], O[i], N[i] = wadd(key[i], bidx(now, p1[i]), p2[i], S[i], O[i], N[i], p1[i], now, C[i])
        end
        if res then
          res[#res + 1] = 'w:' .. key[i]
          res[#res + 1] = p2[i]
        end
      elseif kind[i] == 's' then
        redis.call('ZADD', key[i], fmt(now + p1[i]), rid)
        -- Kept one lease past the last expiry so a later check still counts the expiry.
        if redis.call('PTTL', key[i]) < 2 * p1[i] then
          redis.call('PEXPIRE', key[i], 2 * p1[i])
        end
        if res then
          res[#res + 1] = 's:' .. key[i]
          res[#res + 1] = 1
        end
      end
    end
  end
  if res then
    local rkey = KEYS[ki]
    redis.call('DEL', rkey)
    redis.call('HSET', rkey, unpack(res))
    redis.call('PEXPIRE', rkey, rttl)
  end
end

local out = { admitted and 1 or 0, denied, now, expired }
for i = 1, nops do
  local ok = fits[i]
  if kind[i] == 'w' then
    wstate(out, key[i], S[i], O[i], N[i], ok, pre[i] + p2[i] - lim[i], lim[i], p2[i], p1[i], now)
  elseif kind[i] == 's' then
    local first = redis.call('ZRANGEBYSCORE', key[i], '(' .. nowf, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    local last = redis.call('ZREVRANGEBYSCORE', key[i], '+inf', '(' .. nowf, 'WITHSCORES', 'LIMIT', 0, 1)
    local used = redis.call('ZCOUNT', key[i], '(' .. nowf, '+inf')
    local retry = 0
    if not ok then
      if lim[i] < 1 then
        retry = -1
      elseif first[2] then
        retry = tonumber(first[2]) - now
      end
    end
    local reset = 0
    if last[2] then
      reset = tonumber(last[2]) - now
    end
    out[#out + 1] = ok and 1 or 0
    out[#out + 1] = used
    out[#out + 1] = math.max(0, lim[i] - used)
    out[#out + 1] = reset
    out[#out + 1] = retry
  else
    local reset = math.max(0, p1[i] - now)
    local retry = 0
    if not ok then
      retry = reset
    end
    out[#out + 1] = ok and 1 or 0
    out[#out + 1] = pre[i]
    out[#out + 1] = math.max(0, lim[i] - pre[i])
    out[#out + 1] = reset
    out[#out + 1] = retry
  end
end
return out
