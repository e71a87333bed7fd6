-- Atomic replay check. Returns {decision, server_time_ms, highest_seq}.
--
-- KEYS[1]  nonce key, whose value is the Unix ms at which the nonce expires
-- KEYS[2]  session hash: "top" is the highest sequence number seen, "exp"
--          the Unix ms at which the session expires                  [optional]
-- KEYS[3]  session bitmap: bit (s mod window) marks sequence s as seen [optional]
-- KEYS[4]  sorted set of the identity's sessions, scored by the Unix ms until
--          which each one's start counts against the limit           [optional]
-- ARGV[1]  message timestamp, Unix ms
-- ARGV[2]  maximum clock skew, ms
-- ARGV[3]  sequence number, or "" when the check names no session
-- ARGV[4]  sequence window size
-- ARGV[5]  session time to live, ms
-- ARGV[6]  "1" when the check may create the session
-- ARGV[7]  clock override in Unix ms, or "" to use the server's TIME
-- ARGV[8]  sessions the identity may start within a session TTL; 0: no limit
--
-- The expiry stored in each value decides whether a nonce or session is
-- still live; the Redis TTL on the key only frees the memory afterwards.
--
-- Sequence numbers and timestamps are below 2^53, where Lua's doubles are
-- exact. redis.call converts a Lua number argument with %.17g, which is exact
-- for such integers; Lua's own tostring() and ".." print 14 significant digits
-- and are never applied to numbers here. Remainders use math.fmod, which is
-- exact, where "%" (a - floor(a/b)*b) can round.

local now
-- Extra Redis TTL in ms. Redis expires keys on its own clock, which an
-- overridden clock does not follow, so under an override the keys are kept an
-- hour longer than their stored expiry and the stored expiry alone decides.
local ttl_slack = 0
if ARGV[7] ~= '' then
  now = tonumber(ARGV[7])
  ttl_slack = 3600000
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local ts = tonumber(ARGV[1])
local skew = tonumber(ARGV[2])
if ts < now - skew or ts > now + skew then
  return {'replay.timestamp_out_of_window', now, -1}
end

-- A value that is not a number makes the comparison raise, and the check
-- fails closed as a script error.
local recorded = redis.call('GET', KEYS[1])
if recorded and tonumber(recorded) > now then
  return {'replay.nonce_reused', now, -1}
end

local has_session = ARGV[3] ~= ''
local seq, window, top
local fresh_session = false
if has_session then
  seq = tonumber(ARGV[3])
  window = tonumber(ARGV[4])
  local stored = redis.call('HMGET', KEYS[2], 'top', 'exp')
  if stored[1] and stored[2] and tonumber(stored[2]) > now then
    top = tonumber(stored[1])
  elseif ARGV[6] == '1' then
    top = 0
    fresh_session = true
    local limit = tonumber(ARGV[8])
    if limit > 0 then
      -- Dropping starts older than a session TTL changes no decision.
      redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
      if redis.call('ZCARD', KEYS[4]) >= limit then
        return {'session.limit_exceeded', now, -1}
      end
    end
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
local nonce_expiry = ts + skew + 1
redis.call('SET', KEYS[1], nonce_expiry, 'PX', nonce_expiry - now + ttl_slack)

if not has_session then
  return {'ok', now, -1}
end

if fresh_session then
  -- An expired session's bitmap may outlive its hash by a moment, so a new
  -- session under the same token deletes it and starts with nothing seen.
  redis.call('DEL', KEYS[3])
end
if seq > top then
  if seq - top >= window then
    redis.call('DEL', KEYS[3])
  else
    for skipped = top + 1, seq - 1 do
      redis.call('SETBIT', KEYS[3], math.fmod(skipped, window), 0)
    end
  end
  top = seq
end
redis.call('SETBIT', KEYS[3], math.fmod(seq, window), 1)
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[2], 'top', top, 'exp', now + ttl)
redis.call('PEXPIRE', KEYS[2], ttl + ttl_slack)
redis.call('PEXPIRE', KEYS[3], ttl + ttl_slack)
if fresh_session and tonumber(ARGV[8]) > 0 then
  redis.call('ZADD', KEYS[4], now + ttl, KEYS[2])
  redis.call('PEXPIRE', KEYS[4], ttl + ttl_slack)
end
return {'ok', now, top}
