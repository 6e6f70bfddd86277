"""The Lua scripts of the scorer's Redis adapter (``redis_store``); layout in ``redis_layout``."""

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
# PUTUSER s u ttl features record policy snapshot day n: replaces the features
# (and the record and policy when given), appends the snapshot when given, and
# keeps the snapshots already there; a user still in the old hash (``u``: f, p,
# r, sd) moves into the string on this write. A user with no string whose erase
# guard (``P:{uid}:erased``) is up was erased after the batch read it: nothing
# is written, neither the string nor the n commands that follow (the user's
# own), and the batch's index entries leave the user out (on one Redis; on a
# cluster the indexes are written apart, see ``redis_writes``). TRIMSNAP s snap n: drops the n
# oldest snapshots, the old list's first.
APPLY = """
local function erased_of(ks)
  return string.sub(ks, 1, -2) .. "erased"
end
local function skip(v, p)
  return p + 2 + struct.unpack("<H", v, p)
end
local gone = {}
local function put_user(c)
  local ks, ku, ttl = c[2], c[3], c[4]
  local feat, rec, pol, snap = c[5], c[6], c[7], c[8]
  local old = redis.call("GET", ks)
  local snaps, day = "", 0
  if not old and redis.call("EXISTS", erased_of(ks)) == 1 then
    gone[string.match(ks, ":{(.*)}:s$")] = true
    return false
  end
  if old then
    local p = skip(old, 2)
    if rec == "" then
      rec = string.sub(old, 4, p - 1)
      pol = string.sub(old, p + 4, skip(old, p + 2) - 1)
    end
    day = struct.unpack("<H", old, p)
    snaps = string.sub(old, skip(old, skip(old, p + 2)))
  else
    local h = redis.call("HMGET", ku, "r", "p", "sd")
    if h[1] or h[3] then
      if rec == "" then
        rec, pol = h[1] or "", h[2] or ""
      end
      day = tonumber(h[3] or 0) or 0
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
    if not h[1] and redis.call("EXISTS", string.sub(keys[i], 1, -2) .. "erased") == 1 then
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

# Users in sharded indexes (one Redis): ARGV base, shards, then "range" lows and
# highs, or "due" and a limit. Each shard is a small sorted set, read whole by
# score span and filtered here; the old unsharded ``base`` (while it exists) is
# read with one range query per range. Returns the members (with repeats).
SCAN_SHARDS = """
local base, n, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
if mode == "due" then
  local now, limit = ARGV[4], tonumber(ARGV[5])
  for s = -1, n - 1 do
    if #out >= limit then break end
    local key = s < 0 and base or base .. ":" .. s
    local got = redis.call("ZRANGEBYSCORE", key, "-inf", now, "LIMIT", 0, limit - #out)
    for _, m in ipairs(got) do out[#out + 1] = m end
  end
  return out
end
local lows, highs = {}, {}
for j = 4, #ARGV, 2 do
  lows[#lows + 1] = tonumber(ARGV[j])
  highs[#highs + 1] = tonumber(ARGV[j + 1])
end
if #lows == 0 then return out end
for j = 1, #lows do
  for _, m in ipairs(redis.call("ZRANGEBYSCORE", base, ARGV[2 * j + 2], "(" .. ARGV[2 * j + 3])) do
    out[#out + 1] = m
  end
end
local low, high = ARGV[4], "(" .. ARGV[#ARGV]
for s = 0, n - 1 do
  local got = redis.call("ZRANGEBYSCORE", base .. ":" .. s, low, high, "WITHSCORES")
  for k = 1, #got, 2 do
    local score = tonumber(got[k + 1])
    -- the ranges are sorted and disjoint: binary search for the last low <= score
    local a, b = 1, #lows
    while a < b do
      local mid = math.floor((a + b + 1) / 2)
      if lows[mid] <= score then a = mid else b = mid - 1 end
    end
    if lows[a] <= score and score < highs[a] then out[#out + 1] = got[k] end
  end
end
return out
"""

# Reads of a sharded index (one Redis): the old unsharded key ``base`` and its
# shards ``base:0`` .. ``base:<n-1>``, for several bases at once.
#   count n max base...: {members, members with a score <= max}
#   merge n top after limit base...: the next ``limit`` members after the cursor
#     (top, after) in (score, member) descending order across every key, as
#     {member, score, ...}; then 1 if more follow, else 0. A k-way merge on a
#     heap of each key's next entry: one call per key, and one per entry taken.
INDEX_READ = """
local mode, n = ARGV[1], tonumber(ARGV[2])
local keys = {}
local first = mode == "count" and 4 or 6
for j = first, #ARGV do
  keys[#keys + 1] = ARGV[j]
  for s = 0, n - 1 do keys[#keys + 1] = ARGV[j] .. ":" .. s end
end
if mode == "count" then
  local card, below = 0, 0
  for _, key in ipairs(keys) do
    local c = redis.call("ZCARD", key)
    if c > 0 then
      card = card + c
      below = below + redis.call("ZCOUNT", key, "-inf", ARGV[3])
    end
  end
  return {card, below}
end
local high, after, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
local top = high == "+inf" and math.huge or tonumber(high)
local function next_of(key, off)
  while true do
    local got = redis.call("ZREVRANGEBYSCORE", key, high, "-inf", "WITHSCORES", "LIMIT", off, 1)
    if #got == 0 then return nil end
    off = off + 1
    local score = tonumber(got[2])
    if after == "" or score < top or got[1] < after then
      return {score, got[1], key, off, got[2]}
    end
  end
end
local function better(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end
local heap = {}
local function push(e)
  heap[#heap + 1] = e
  local i = #heap
  while i > 1 do
    local p = math.floor(i / 2)
    if not better(heap[i], heap[p]) then break end
    heap[i], heap[p] = heap[p], heap[i]
    i = p
  end
end
local function pop()
  local out = heap[1]
  heap[1] = heap[#heap]
  heap[#heap] = nil
  local i = 1
  while true do
    local l, r, b = 2 * i, 2 * i + 1, i
    if l <= #heap and better(heap[l], heap[b]) then b = l end
    if r <= #heap and better(heap[r], heap[b]) then b = r end
    if b == i then break end
    heap[i], heap[b] = heap[b], heap[i]
    i = b
  end
  return out
end
for _, key in ipairs(keys) do
  if redis.call("EXISTS", key) == 1 then
    local e = next_of(key, 0)
    if e then push(e) end
  end
end
local out = {}
while #out < 2 * limit and #heap > 0 do
  local e = pop()
  out[#out + 1] = e[2]
  out[#out + 1] = e[5]
  local nxt = next_of(e[3], e[4])
  if nxt then push(nxt) end
end
out[#out + 1] = #heap > 0 and 1 or 0
return out
"""
