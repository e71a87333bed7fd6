-- Atomic replay check. Returns {decision, server_time_ms, highest_seq}.
--
-- KEYS[1]  nonce key
-- KEYS[2]  session hash (field "top": highest sequence number seen)   [optional]
-- KEYS[3]  session bitmap: bit (s mod window) marks sequence s as seen [optional]
-- ARGV[1]  message timestamp, Unix ms
-- ARGV[2]  maximum clock skew, ms
-- ARGV[3]  sequence number, or "" when the check names no session
-- ARGV[4]  sequence window size
-- ARGV[5]  session time to live, ms
-- ARGV[6]  "1" when the check may create the session
-- ARGV[7]  clock override in Unix ms, or "" to use the server's TIME
--
-- Sequence numbers and timestamps are below 2^53, where Lua's doubles are
-- exact. Numbers are written back from ARGV strings, never from Lua numbers,
-- because Lua formats large numbers with 14 significant digits. Remainders use
-- math.fmod, which is exact, where "%" (a - floor(a/b)*b) can round.

local now
if ARGV[7] ~= '' then
  now = tonumber(ARGV[7])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local ts = tonumber(ARGV[1])
local skew = tonumber(ARGV[2])
if ts < now - skew or ts > now + skew then
  return {'replay.timestamp_out_of_window', now, -1}
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'replay.nonce_reused', now, -1}
end

local has_session = ARGV[3] ~= ''
local seq, window, top
if has_session then
  seq = tonumber(ARGV[3])
  window = tonumber(ARGV[4])
  local stored = redis.call('HGET', KEYS[2], 'top')
  if stored then
    top = tonumber(stored)
  elseif ARGV[6] == '1' then
    top = 0
  else
    return {'session.unknown', now, -1}
  end
  if seq <= top then
    if seq <= top - window then
      return {'replay.sequence_too_old', now, top}
    end
    if redis.call('GETBIT', KEYS[3], math.fmod(seq, window)) == 1 then
      return {'replay.sequence_reused', now, top}
    end
  end
end

-- Every check passed: record. The nonce lives until ts + skew, the last
-- moment at which its timestamp could pass the window.
redis.call('SET', KEYS[1], '1', 'PX', ts + skew - now + 1)

if not has_session then
  return {'ok', now, -1}
end

if seq > top then
  if seq - top >= window then
    redis.call('DEL', KEYS[3])
  else
    for skipped = top + 1, seq - 1 do
      redis.call('SETBIT', KEYS[3], math.fmod(skipped, window), 0)
    end
  end
  redis.call('HSET', KEYS[2], 'top', ARGV[3])
  top = seq
end
redis.call('SETBIT', KEYS[3], math.fmod(seq, window), 1)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return {'ok', now, top}
