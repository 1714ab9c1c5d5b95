-- Shared by every script (prepended at load). Mirrors src/store/window.ts and memory.ts.
-- A window is a hash: s = units counted, o = oldest bucket that may be present, n = newest bucket,
-- and one field per non-empty bucket index. Numbers go to redis.call exactly: integers as int()'s text,
-- anything else as Lua numbers (Redis writes them with %.17g), never through Lua's tostring or ..
-- (%.14g), which would round bucket indices and timestamps.
local B = 100

-- A number as redis.call's argument. Redis 7.0 writes a Lua number with snprintf('%.17g'), glibc's
-- slow path for doubles (number formatting was ~12% of Redis's time at (c)'s peak, by perf); an integer
-- (bucket indices, counts, ms timestamps: all below 2^53) goes as '%d' text, the same digits by the
-- integer path (an inference decision: 44.6 -> 42.4 µs of Redis, 3 alternated pairs). Anything else is
-- left to Redis, as before.
local fmt = string.format
local function int(x)
  if x % 1 == 0 then
    return fmt('%d', x)
  end
  return x
end

-- Redis TIME (one clock for every instance) unless a test clock is given.
local function clock(override)
  local o = tonumber(override)
  if o and o > 0 then
    return o
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function bidx(now, w)
  return math.floor(now * B / w)
end

local function until_leave(j, w, now)
  local ms = math.ceil((j + B + 1) * w / B - now)
  if ms < 0 then
    return 0
  end
  return ms
end

-- Drops buckets that left the counted range at bucket i. Returns total, oldest, newest (nil when
-- empty) and the count of bucket i.
local function wload(key, i)
  local h = redis.call('HMGET', key, 's', 'o', 'n', int(i))
  local s = tonumber(h[1])
  if not s then
    return 0, nil, nil, 0
  end
  local o, n = tonumber(h[2]), tonumber(h[3])
  local lo = i - B
  if n < lo then
    redis.call('DEL', key)
    return 0, nil, nil, 0
  end
  if o < lo then
    local f = {}
    for j = o, lo - 1 do
      f[#f + 1] = j
    end
    local v = redis.call('HMGET', key, unpack(f))
    local drop = {}
    for k = 1, #f do
      local c = tonumber(v[k])
      if c then
        s = s - c
        drop[#drop + 1] = f[k]
      end
    end
    if #drop > 0 then
      redis.call('HDEL', key, unpack(drop))
    end
    o = lo
    redis.call('HSET', key, 's', int(s), 'o', int(o))
  end
  return s, o, n, tonumber(h[4]) or 0
end

-- Adds amount to bucket j, whose count is c when known (a bucket never goes below 0), in one write.
-- Returns total, oldest, newest.
local function wadd(key, j, amount, s, o, n, w, now, c)
  if amount == 0 then
    return s, o, n
  end
  local js = int(j)
  if not n then
    if amount < 0 then
      return s, o, n
    end
    local a = int(amount)
    redis.call('HSET', key, js, a, 's', a, 'o', js, 'n', js)
    redis.call('PEXPIRE', key, until_leave(j, w, now) + 1)
    return amount, j, j
  end
  if c == nil then
    c = tonumber(redis.call('HGET', key, js)) or 0
  end
  local v = math.max(0, c + amount)
  if v == c then
    return s, o, n
  end
  s = s + v - c
  if j > n then
    n = j
    redis.call('HSET', key, js, int(v), 's', int(s), 'n', js)
    redis.call('PEXPIRE', key, until_leave(n, w, now) + 1)
  elseif j < o then
    o = j
    redis.call('HSET', key, js, int(v), 's', int(s), 'o', js)
  else
    redis.call('HSET', key, js, int(v), 's', int(s))
  end
  return s, o, n
end

-- ok, used, remaining, resetMs, retryMs appended to out. need: units that must leave before admitting.
local function wstate(out, key, s, o, n, ok, need, limit, cost, w, now)
  local reset = 0
  if s > 0 and n then
    reset = until_leave(n, w, now)
  end
  local retry = 0
  if not ok then
    if cost > limit then
      retry = -1
    elseif n then
      local f = {}
      for j = o, n do
        f[#f + 1] = j
      end
      local v = redis.call('HMGET', key, unpack(f))
      local freed = 0
      for k = 1, #f do
        freed = freed + (tonumber(v[k]) or 0)
        if freed >= need then
          retry = until_leave(o + k - 1, w, now)
          break
        end
      end
    end
  end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = s
  out[#out + 1] = math.max(0, limit - s)
  out[#out + 1] = reset
  out[#out + 1] = retry
end

-- A slot set (ZSET request id -> lease expiry) has a companion ZSET of admission times under this
-- suffix (mirrored by HELD_SUFFIX in redis.ts), for the age of long-held slots.
local HELD = ':held'

-- ZREM of a list of any length (unpack has a stack limit).
local function zrem_all(key, members)
  for a = 1, #members, 1000 do
    redis.call('ZREM', key, unpack(members, a, math.min(a + 999, #members)))
  end
end

-- A reservation is one string, a MessagePack map (one SET PX writes it): r = request id, t = admission
-- time, x = expiry, w:<window key> = amount reserved, s:<slot set> = 1, f = slots freed.
-- As a table, or nil when absent or past its expiry (x) on this clock.
local function reservation(key, now)
  local packed = redis.pcall('GET', key)
  if not packed then
    return nil
  end
  local res
  if type(packed) == 'table' then
    -- WRONGTYPE: a hash written before this format (a reservation in flight across the upgrade).
    local flat = redis.call('HGETALL', key)
    res = {}
    for k = 1, #flat, 2 do
      res[flat[k]] = flat[k + 1]
    end
  else
    res = cmsgpack.unpack(packed)
  end
  if tonumber(res['x']) <= now then
    redis.call('DEL', key)
    return nil
  end
  return res
end

-- true when the reservation holds no reserved amount a settle still has to correct.
local function settled(res)
  for f, v in pairs(res) do
    if string.sub(f, 1, 2) == 'w:' and tonumber(v) ~= 0 then
      return false
    end
  end
  return true
end

local function free_slots(res)
  for f, _ in pairs(res) do
    if string.sub(f, 1, 2) == 's:' then
      local k = string.sub(f, 3)
      redis.call('ZREM', k, res['r'])
      redis.call('ZREM', k .. HELD, res['r'])
    end
  end
end

-- Frees the reservation's slots. The record stays (marked f) while it holds amounts a later settle
-- must correct (a Debit after a Release, the second half of a split stream-done); else it goes.
local function free(key, res)
  free_slots(res)
  if settled(res) then
    redis.call('DEL', key)
  else
    res['f'] = 1
    redis.call('SET', key, cmsgpack.pack(res), 'KEEPTTL')
  end
end
