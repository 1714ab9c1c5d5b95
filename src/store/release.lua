-- Frees a reservation's slots and forgets it. KEYS: reservationKey. ARGV: clock.
-- Returns 1 when one was held.
local res = reservation(KEYS[1], clock(ARGV[1]))
if not res then
  return 0
end
free(KEYS[1], res)
return 1
