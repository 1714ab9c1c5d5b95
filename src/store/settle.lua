-- Settles an admission. KEYS: onceKey, reservationKey, window keys, counter keys. ARGV: clock,
-- onceTtlMs, release, window count, counter count, then per window: windowMs, limit, amount; per
-- counter: amount, ttlMs, limit, periodEndMs.
-- Returns duplicate, reserved, now, then per window and per counter ok, used, remaining, resetMs, retryMs.
local now = clock(ARGV[1])
local release = ARGV[3] == '1'
local nw = tonumber(ARGV[4])
local nc = tonumber(ARGV[5])
local rkey = KEYS[2]

local dup = not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2])
local res = reservation(rkey, now)
local reserved = res ~= nil
res = res or {}

local out = { dup and 1 or 0, reserved and 1 or 0, now }
-- Reserved amounts settled now: zeroed in the record (rewritten at the end, unless it goes).
local changed = false
for i = 1, nw do
  local k = KEYS[2 + i]
  local a = 5 + (i - 1) * 3
  local w, limit, amount = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local cur = bidx(now, w)
  local s, o, n, c = wload(k, cur)
  if not dup then
    local r = tonumber(res['w:' .. k])
    local at = -1
    if r then
      at = bidx(tonumber(res['t']), w)
    end
    if r and at >= cur - B then
      local known = nil
      if at == cur then
        known = c
      end
      s, o, n = wadd(k, at, amount - r, s, o, n, w, now, known)
      -- Later settles of the same admission add their whole amount.
      res['w:' .. k] = 0
      changed = true
    else
      s, o, n = wadd(k, cur, amount, s, o, n, w, now, c)
    end
  end
  wstate(out, k, s, o, n, s <= limit, s - limit, limit, 0, w, now)
end

for i = 1, nc do
  local k = KEYS[2 + nw + i]
  local a = 5 + nw * 3 + (i - 1) * 4
  local amount, ttl, limit, pend = tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local used
  if dup then
    used = tonumber(redis.call('GET', k)) or 0
  else
    used = redis.call('INCRBY', k, amount)
    redis.call('PEXPIRE', k, ttl)
  end
  local ok = used < limit
  local reset = math.max(0, pend - now)
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = used
  out[#out + 1] = math.max(0, limit - used)
  out[#out + 1] = reset
  out[#out + 1] = ok and 0 or reset
end

if not dup and reserved then
  local freed = res['f'] ~= nil
  if release and not freed then
    free_slots(res)
    res['f'] = 1
    changed = true
    freed = true
  end
  -- Slots free and nothing left to correct: forget the record.
  if freed and settled(res) then
    redis.call('DEL', rkey)
  elseif changed then
    redis.call('SET', rkey, cmsgpack.pack(res), 'KEEPTTL')
  end
end
return out
