"""The Lua scripts on users' keys of the scorer's Redis adapter (``redis_store``): a
batch's write, its read, a learning round's read. Layout in ``redis_layout``; the
scripts that read the shared sorted-set indexes are in ``redis_index_scripts``."""

# Applies a list of commands atomically (scripts run alone, like MULTI/EXEC).
# ARGV[1]: the commands as one MessagePack array of arrays of words,
# [["HSET", "k", "f", "v"], ["EXPIRE", "k", 60], ...]. One argument, packed by
# msgpack's C code, instead of one per word: redis-py spends ~0.5 µs of Python
# on each word it sends, which was a third of a batch's save. On a cluster: one
# user's commands, every key declared and in one slot, sent with EVAL (redis-py
# refuses EVALSHA in a cluster pipeline). On one Redis: the whole batch, users
# and shared indexes, in one EVALSHA.
#
# Two commands of its own work on a user's string (layout: ``join_user``):
# PUTUSER s u ttl features record policy snapshot day n uid: replaces the features
# (and the record and policy when given), appends the snapshot when given, and
# keeps the snapshots already there; a user still in the old hash (``u``: f, p,
# r, sd) moves into the string on this write. A user with no state (neither the
# string nor the old hash's) whose erase guard (``P:{uid}:erased``) is up was
# erased after the batch read it: nothing is written, neither the string nor
# the n commands that follow (the user's own), and the batch's index entries
# leave the user out (on one Redis; on a cluster the indexes are written apart,
# see ``redis_writes``). TRIMSNAP s snap n: drops the n
# oldest snapshots, the old list's first.
# Whether a user with no stored state has its erase guard up, ``P:{uid}:erased``
# (the API's erase sets it for 14 days); ``ks`` is the user's string key
# ``P:{uid}:s``, ``h`` the old-layout hash's f, p, r, sd (state: any of f, r, sd).
# Users with state never pay for the look: state wins over a guard.
ERASED = """
local function erased(ks, h)
  return not (h[1] or h[3] or h[4])
    and redis.call("EXISTS", string.sub(ks, 1, -2) .. "erased") == 1
end
"""

APPLY = (
    ERASED
    + """
local function skip(v, p)
  return p + 2 + struct.unpack("<H", v, p)
end
local gone = {}
local function put_user(c)
  local ks, ku, ttl = c[2], c[3], c[4]
  local feat, rec, pol, snap = c[5], c[6], c[7], c[8]
  local old = redis.call("GET", ks)
  local snaps, day = "", 0
  if old then
    local p = skip(old, 2)
    if rec == "" then
      rec = string.sub(old, 4, p - 1)
      pol = string.sub(old, p + 4, skip(old, p + 2) - 1)
    end
    day = struct.unpack("<H", old, p)
    snaps = string.sub(old, skip(old, skip(old, p + 2)))
  else
    local h = redis.call("HMGET", ku, "f", "p", "r", "sd")
    if erased(ks, h) then
      gone[c[11]] = true
      return false
    end
    if h[3] or h[4] then
      if rec == "" then
        rec, pol = h[3] or "", h[2] or ""
      end
      day = tonumber(h[4] or 0) or 0
      redis.call("HDEL", ku, "f", "p", "r", "sd")
    end
  end
  if snap ~= "" then
    snaps = snaps .. struct.pack("<H", #snap) .. snap
    day = tonumber(c[9])
  end
  redis.call("SET", ks, "\\193" .. struct.pack("<H", #rec) .. rec .. struct.pack("<HH", day, #pol)
    .. pol .. struct.pack("<H", #feat) .. feat .. snaps, "EX", ttl)
  if redis.call("EXISTS", ku) == 1 then
    redis.call("EXPIRE", ku, ttl)
  end
  return true
end
local function trim_snapshots(c)
  local ks, kl, n = c[2], c[3], tonumber(c[4])
  local listed = redis.call("LLEN", kl)
  if listed > 0 then
    local k = math.min(n, listed)
    redis.call("LTRIM", kl, k, -1)
    n = n - k
  end
  local old = n > 0 and redis.call("GET", ks)
  if old then
    local first = skip(old, skip(old, skip(old, 2) + 2))
    local p = first
    for _ = 1, n do
      if p > #old then break end
      p = skip(old, p)
    end
    redis.call("SET", ks, string.sub(old, 1, first - 1) .. string.sub(old, p), "KEEPTTL")
  end
end
local shards = {}
local function shard(base, n, member)
  local s = shards[member]
  if not s then
    s = tonumber(string.sub(redis.sha1hex(member), 1, 6), 16)
    shards[member] = s
  end
  return base .. ":" .. (s % n)
end
-- ZADDS base n flag score member ...: ZADD into base's shard of each member, and
-- out of the old unsharded base while it exists (not with LT: an earlier time
-- there still counts). ZREMS base n member ...: ZREM from both.
local function sharded(c)
  local base, n = c[2], tonumber(c[3])
  local old = c[4] ~= "LT" and redis.call("EXISTS", base) == 1
  if c[1] == "ZREMS" then
    for j = 4, #c do
      redis.call("ZREM", shard(base, n, c[j]), c[j])
      if old then redis.call("ZREM", base, c[j]) end
    end
    return
  end
  local flag = c[4]
  for j = 5, #c, 2 do
    local key, m = shard(base, n, c[j + 1]), c[j + 1]
    if gone[m] then
      -- erased between the batch's read and this write: not indexed again
    elseif flag == "" then
      redis.call("ZADD", key, c[j], m)
    else
      redis.call("ZADD", key, flag, c[j], m)
    end
    if old then redis.call("ZREM", base, m) end
  end
end
local skip_to = 0
for i, c in ipairs(cmsgpack.unpack(ARGV[1])) do
  local command = c[1]
  if i <= skip_to then
    -- the rest of an erased user's own commands (its alert history): not written
  elseif command == "PUTUSER" then
    if not put_user(c) then
      skip_to = i + c[10]
    end
  elseif command == "TRIMSNAP" then
    trim_snapshots(c)
  elseif command == "ZADDS" or command == "ZREMS" then
    sharded(c)
  else
    redis.call(unpack(c))
  end
end
return 1
"""
)

# The keys of a batch's users: on a cluster, KEYS (one user per call, declared
# for routing); on one Redis, ARGV[1] the key prefix and ARGV[2] the user ids as
# one MessagePack array, the kinds' keys built here (``user_key``'s form): one
# argument instead of two or three per user, which redis-py spent ~3 µs of
# Python on per user (a tenth of the scorer's batch) and Redis more to parse.
USER_KEYS = """
local function user_keys(kinds)
  if #KEYS > 0 then
    return KEYS
  end
  local keys, prefix = {}, ARGV[1]
  for _, uid in ipairs(cmsgpack.unpack(ARGV[2])) do
    local tag = prefix .. ":{" .. uid .. "}:"
    for _, kind in ipairs(kinds) do
      keys[#keys + 1] = tag .. kind
    end
  end
  return keys
end
"""

# The batch's users' rows: keys alternate a user's string and its hash (on a
# cluster, one user a call: string, hash, erase guard). A row is {string, wb},
# for a user still in the old layout the hash's {f, p, r, sd, wb}, and {"erased"}
# for a user with neither whose erase guard is up (only users with no state pay
# for that look).
LOAD = (
    USER_KEYS
    + ERASED
    + """
local keys = user_keys({"s", "u"})
local step = #KEYS == 3 and 3 or 2
local out = {}
for i = 1, #keys, step do
  local s = redis.call("GET", keys[i])
  if s then
    out[#out + 1] = {s, redis.call("HGET", keys[i + 1], "wb")}
  else
    local h = redis.call("HMGET", keys[i + 1], "f", "p", "r", "sd", "wb")
    if erased(keys[i], h) then
      h = {"erased"}
    end
    out[#out + 1] = h
  end
end
return out
"""
)

# Each user's string, old-layout features and old snapshot list: keys are
# triples string, hash, list.
LOAD_SNAPSHOTS = (
    USER_KEYS
    + """
local keys = user_keys({"s", "u", "snap"})
local out = {}
for i = 1, #keys, 3 do
  out[#out + 1] = redis.call("GET", keys[i])
  out[#out + 1] = redis.call("HGET", keys[i + 1], "f")
  out[#out + 1] = redis.call("LRANGE", keys[i + 2], 0, -1)
end
return out
"""
)
