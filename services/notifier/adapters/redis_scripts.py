"""The Lua scripts of the notifier's Redis directory (``redis_directory``), and what
each writes at once; the keys they name are in ``redis_layout``.

What is written together. ``RedisDirectory.record`` writes everything of one
user (done mark, cap window, history, win-back decision) in one Lua script. On
one Redis that script also increments the decision's treated (or control)
counter: a decision counts once per alert, atomically with the decision.

On a Redis Cluster (``CHURNWATCH_REDIS_CLUSTER=true``) the counter is in another
slot, so the count is a step of its own. The user's script stores the decision
with a pending mark in ``P:{uid}:wbc``; then a script in the counter's slot
increments the counter unless the alert's ``P:wbcounted:...`` exists (SET NX,
so repeating this step never counts twice), and the mark is removed. Every
``record`` and ``mark_published`` of the user finishes the marks it finds.
After a crash or a failed write:

- between the decision and the count, the mark stays. The retry (the alert,
  not committed, is redelivered; a deferred job comes due when its lease ends;
  the failure stays for the next re-drive) finds the action done but not
  published and ends in ``mark_published``, which counts it. A count is lost
  only if the user is erased (or the mark expires) before that.
- between the count and removing the mark, the next ``record`` or
  ``mark_published`` finds the ``wbcounted`` key and only removes the mark. It
  counts a second time only if it comes more than a day later (the key expired).
- two notifiers (or the deferred timer and the agent) finishing one mark at
  once count it once.

Every script that writes a user's keys writes nothing while the user's erase
mark is there (see ``redis_layout``).
"""

# One user's record of an action, atomically: KEYS are the user's done, sends,
# actions, u, wbc and erased mark (one slot), then on one Redis the win-back
# counter. One alert counts once as treated (or control), however many of its
# actions were sent; the scorer later resolves "wb" into a win or lets it expire.
# Returns the user's pending counts (cluster: alert_id, counter, ...; one Redis:
# none). An erased user's keys are not written again.
RECORD_ACTION = """
if redis.call('EXISTS', KEYS[6]) == 1 then
  return {}
end
local ttl = tonumber(ARGV[6])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ttl)
end
if ARGV[3] == '-' then
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
if ARGV[7] ~= '' and redis.call('HGET', KEYS[4], 'wbid') ~= ARGV[7] then
  redis.call('HSET', KEYS[4], 'wbid', ARGV[7], 'wb', ARGV[8])
  if #KEYS == 7 then
    redis.call('INCR', KEYS[7])
  else
    redis.call('HSET', KEYS[5], ARGV[7], ARGV[9])
    redis.call('EXPIRE', KEYS[5], ttl)
  end
end
return redis.call('HGETALL', KEYS[5])
"""

# Published marks (KEYS[1]); returns the pending counts (KEYS[2]) to finish. Nothing
# for an erased user (KEYS[3]).
MARK_PUBLISHED = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {}
end
for i = 2, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('HGETALL', KEYS[2])
"""

# A deferred contact's place in the cap window (KEYS[1]), unless the user is erased
# (KEYS[2]).
SCHEDULE_CONTACT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# Count an alert's decision once (cluster): KEYS = the counter, its "counted" key
# (same slot). 1 if this call counted it.
COUNT_ONCE = """
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[1]) then
  redis.call('INCR', KEYS[1])
  return 1
end
return 0
"""
