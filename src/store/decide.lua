-- Decisions, in the order sent, each atomic on its own (decisions issued together share one call).
-- ARGV: clock, decision count, every decision's numbers as one string of little-endian doubles (read
-- by struct.unpack, ~1 µs a decision; splitting text with gmatch and tonumber on each field took ~8
-- µs, timed inside one EVAL), then per decision two: its key count and its requestId ('' for none).
-- A decision's numbers: atomic, dryRun, reservationTtlMs, op count, then per op kind (1 window, 2
-- slot, 3 budget), limit, p1, p2, p3 — window: windowMs, cost, flags (1: shadow, 2: not recorded in
-- the reservation); slot: leaseMs, expiredWindowMs (0: none), longHeldMs (-1: none); budget:
-- periodEndMs, 0, 0.
-- KEYS, per decision: each op's key (a slot op: then its admission-time key, then its expiredKey when
-- it has an expiry window), then the reservation key when the requestId is set.
-- Returns one reply per decision: admitted, denied (0-based, -1), now, expiredLeases, then per op ok,
-- used, remaining, resetMs, retryMs, then per slot op heldMs, longHeld (-1 when not asked), packed as
-- one string of little-endian doubles (all exact integers: decoding dozens of integer replies was a
-- large part of the client's cost); or an error reply for a decision that failed, so one bad decision
-- does not fail the others.
local now = clock(ARGV[1])
-- For exclusive score bounds ('(' .. nowf); %.17g as redis.call converts numbers.
local nowf = string.format('%.17g', now)

local function count_expired(k, w, c)
  local i = bidx(now, w)
  local s, o, n, cur = wload(k, i)
  wadd(k, i, c, s, o, n, w, now, cur)
end

local KIND = { 'w', 's', 'b' }
-- Doubles are packed and unpacked in chunks: unpack and struct.pack take a bounded number of values.
local CHUNK = 200
local formats = {}
local function dformat(m)
  local fmt = formats[m]
  if not fmt then
    fmt = '<' .. string.rep('d', m)
    formats[m] = fmt
  end
  return fmt
end

local function doubles(packed)
  local n = #packed / 8
  local f = {}
  for a = 0, n - 1, CHUNK do
    local m = math.min(CHUNK, n - a)
    local v = { struct.unpack(dformat(m), packed, a * 8 + 1) }
    for k = 1, m do
      f[a + k] = v[k]
    end
  end
  return f
end

-- f: the call's numbers; at: where this decision's start (0-based).
local function decide(rid, f, at, ki)
  local atomic = f[at + 1] == 1
  local dry = f[at + 2] == 1
  local rttl = f[at + 3]
  local nops = f[at + 4]

  local kind, lim, p1, p2, shadow, key, xkey, hkey, lh, skip = {}, {}, {}, {}, {}, {}, {}, {}, {}, {}
  local norec = {}
  -- pre: windows, units counted before the decision; budgets, the period's usage; slots, live slots
  -- (plus the one an admission adds).
  local fits, pre, S, O, N, C = {}, {}, {}, {}, {}, {}
  -- Requests whose leases expired in ops that count expiries, once each (not once per slot).
  local gone, expired = {}, 0
  for i = 1, nops do
    local a = at + 4 + (i - 1) * 5
    local kd = KIND[f[a + 1]]
    kind[i] = kd
    lim[i] = f[a + 2]
    p1[i] = f[a + 3]
    p2[i] = f[a + 4]
    if kd == 'w' then
      local flags = f[a + 5]
      shadow[i] = flags % 2 == 1
      norec[i] = flags >= 2
    end
    key[i] = KEYS[ki]
    ki = ki + 1
    if kd == 'w' then
      local s, o, n, c = wload(key[i], bidx(now, p1[i]))
      S[i], O[i], N[i], C[i] = s, o, n, c
      pre[i] = s
      fits[i] = s + p2[i] <= lim[i]
    elseif kd == 's' then
      lh[i] = f[a + 5]
      hkey[i] = KEYS[ki]
      ki = ki + 1
      if p2[i] > 0 then
        xkey[i] = KEYS[ki]
        ki = ki + 1
      end
      local active
      if dry then
        active = redis.call('ZCOUNT', key[i], '(' .. nowf, '+inf')
        -- Expired but not freed (a dry run frees nothing): not held, left out of the held figures.
        if active < redis.call('ZCARD', key[i]) then
          skip[i] = redis.call('ZRANGEBYSCORE', key[i], '-inf', now)
        end
      else
        local freed = redis.call('ZRANGEBYSCORE', key[i], '-inf', int(now))
        if #freed > 0 then
          zrem_all(key[i], freed)
          zrem_all(hkey[i], freed)
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
      pre[i] = active
      -- Whether the request already holds a slot matters only when the set is full.
      fits[i] = active < lim[i]
      if not fits[i] then
        local held = tonumber(redis.call('ZSCORE', key[i], rid))
        fits[i] = held ~= nil and held > now
      end
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
      res = { r = rid, t = now, x = now + rttl }
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
          if res and not norec[i] then
            res['w:' .. key[i]] = p2[i]
          end
        elseif kind[i] == 's' then
          -- ZADD answers 1 for a new slot, 0 for a renewed lease.
          pre[i] = pre[i] + redis.call('ZADD', key[i], int(now + p1[i]), rid)
          -- A renewed lease keeps its first admission time.
          redis.call('ZADD', hkey[i], 'NX', int(now), rid)
          -- Kept at least one lease past the last expiry so a later check still counts the expiry.
          -- Extended to three leases once under two, so the (costly) PEXPIREs run once a lease, not
          -- per admission. The two sets are written together; the admission-time set is checked as
          -- it may be the newer one.
          if redis.call('PTTL', hkey[i]) < 2 * p1[i] then
            redis.call('PEXPIRE', key[i], 3 * p1[i])
            redis.call('PEXPIRE', hkey[i], 3 * p1[i])
          end
          if res then
            res['s:' .. key[i]] = 1
          end
        end
      end
    end
    if res then
      redis.call('SET', KEYS[ki], cmsgpack.pack(res), 'PX', int(rttl))
    end
  end

  local out = { admitted and 1 or 0, denied, now, expired }
  for i = 1, nops do
    local ok = fits[i]
    if kind[i] == 'w' then
      wstate(out, key[i], S[i], O[i], N[i], ok, pre[i] + p2[i] - lim[i], lim[i], p2[i], p1[i], now)
    elseif kind[i] == 's' then
      -- pre counts the live slots after the decision: expired ones were freed (or, in a dry run,
      -- not counted) and an admission added 1 unless it renewed a lease.
      local used = pre[i]
      local retry = 0
      if not ok then
        if lim[i] < 1 then
          retry = -1
        else
          local first = redis.call('ZRANGEBYSCORE', key[i], '(' .. nowf, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
          if first[2] then
            retry = tonumber(first[2]) - now
          end
        end
      end
      -- The latest lease; when it is not live, no slot is.
      local last = redis.call('ZRANGE', key[i], '-1', '-1', 'WITHSCORES')
      local reset = 0
      if last[2] then
        reset = math.max(0, tonumber(last[2]) - now)
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

  -- Held figures from the admission-time set: the oldest held slot (one ZRANGE), and how many were
  -- admitted at least lh ago (one ZCOUNT); slots in skip (expired, dry run only) are left out.
  for i = 1, nops do
    if kind[i] == 's' then
      local sk = skip[i]
      local skipped = {}
      if sk then
        for _, r in ipairs(sk) do
          skipped[r] = true
        end
      end
      local oldest = now
      local top = redis.call('ZRANGE', hkey[i], '0', sk and int(#sk) or '0', 'WITHSCORES')
      for k = 1, #top, 2 do
        if not skipped[top[k]] then
          oldest = tonumber(top[k + 1])
          break
        end
      end
      local long = -1
      local cut = now - lh[i]
      -- None held that long when the oldest held slot is younger.
      if lh[i] >= 0 and oldest > cut then
        long = 0
      elseif lh[i] >= 0 then
        long = redis.call('ZCOUNT', hkey[i], '-inf', cut)
        if sk then
          for _, r in ipairs(sk) do
            local since = tonumber(redis.call('ZSCORE', hkey[i], r))
            if since and since <= cut then
              long = long - 1
            end
          end
        end
      end
      out[#out + 1] = math.max(0, now - oldest)
      out[#out + 1] = long
    end
  end
  return out
end

local function pack(out)
  local parts = {}
  for a = 1, #out, CHUNK do
    local b = math.min(a + CHUNK - 1, #out)
    parts[#parts + 1] = struct.pack(dformat(b - a + 1), unpack(out, a, b))
  end
  return table.concat(parts)
end

local replies = {}
local f = doubles(ARGV[3])
local at, ki = 0, 1
for d = 1, tonumber(ARGV[2]) do
  local a = 2 + 2 * d
  local ok, out = pcall(decide, ARGV[a + 1], f, at, ki)
  if ok then
    replies[d] = pack(out)
  else
    replies[d] = redis.error_reply(type(out) == 'table' and out.err or tostring(out))
  end
  ki = ki + tonumber(ARGV[a])
  at = at + 4 + 5 * f[at + 4]
end
return replies
