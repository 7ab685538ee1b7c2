"""Lua scripts of the Redis store: each runs atomically on the server, so appends, check-in
dedupe and presence expiry stay correct with any number of nodes writing at once.

A class's ledger keys share the hash tag `{session_id}` (one slot in Redis Cluster):
  log  list of event bodies; seq = position + 1 (RPUSH's reply)
  ids  hash event id -> seq (idempotent appends)
  chk  hash dedupe key -> event id (check-ins)
Presence values are "<expiry ms, Redis clock>|<json>", so every node agrees on expiry.
"""

APPEND = """
local seq = redis.call('HGET', KEYS[2], ARGV[1])
if seq then
  seq = tonumber(seq)
  return {seq, redis.call('LINDEX', KEYS[1], seq - 1), 0}
end
seq = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], seq)
return {seq, ARGV[2], 1}
"""

CHECKIN = """
local owner = redis.call('HGET', KEYS[3], ARGV[3])
if owner then
  local seq = tonumber(redis.call('HGET', KEYS[2], owner))
  local created = 0
  if owner == ARGV[1] then created = 1 end
  return {seq, redis.call('LINDEX', KEYS[1], seq - 1), created}
end
local seq = redis.call('HGET', KEYS[2], ARGV[1])
local body = ARGV[2]
local created = 0
if seq then
  seq = tonumber(seq)
  body = redis.call('LINDEX', KEYS[1], seq - 1)
else
  seq = redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], seq)
  created = 1
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
return {seq, body, created}
"""

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

GET_PRESENCE = (
    _NOW_MS
    + """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return false end
local sep = string.find(value, '|', 1, true)
if sep and tonumber(string.sub(value, 1, sep - 1)) > now then
  return string.sub(value, sep + 1)
end
return false
"""
)

# ARGV[2]: JSON object of scalar values the live state must hold, or "" for "clear anyway".
CLEAR_PRESENCE = (
    _NOW_MS
    + """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 1 end
local sep = string.find(value, '|', 1, true)
if ARGV[2] ~= '' and sep and tonumber(string.sub(value, 1, sep - 1)) > now then
  local state = cjson.decode(string.sub(value, sep + 1))
  for k, v in pairs(cjson.decode(ARGV[2])) do
    if state[k] ~= v then return 0 end
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""
)

SET_PRESENCE = (
    _NOW_MS
    + """
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now + ttl) .. '|' .. ARGV[2])
-- the whole hash goes an hour after its last refresh (a class long over)
redis.call('PEXPIRE', KEYS[1], math.max(ttl, 3600000))
return 1
"""
)

PRESENCE = (
    _NOW_MS
    + """
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local value = all[i + 1]
  local sep = string.find(value, '|', 1, true)
  if sep and tonumber(string.sub(value, 1, sep - 1)) > now then
    out[#out + 1] = all[i]
    out[#out + 1] = string.sub(value, sep + 1)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"""
)

NAMES = ("APPEND", "CHECKIN", "SET_PRESENCE", "GET_PRESENCE", "CLEAR_PRESENCE", "PRESENCE")
