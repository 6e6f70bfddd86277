"""The Lua scripts that read the scorer's sharded sorted-set indexes (one Redis).

Last activity, label due times and risk by stage are sorted sets split in
``INDEX_SHARDS`` shards (``redis_layout``); these scripts read every shard, and
the old unsharded key while it exists, in one call: the silent-user sweep and
the label rounds (``redis_indexes``), the risk API's lists and counts
(``queries.reads``). On a cluster the shards are read one command each instead.
"""

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
