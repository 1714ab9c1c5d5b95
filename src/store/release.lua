-- Frees a reservation's slots, keeping its record for a later settle. KEYS: reservationKey. ARGV: clock.
-- Returns 1 when slots were held (not freed before).
local res = reservation(KEYS[1], clock(ARGV[1]))
if not res or res['f'] then
  return 0
end
free(KEYS[1], res)
return 1
