"""Where the notifier keeps things in Redis: key names, how long they live, the erase mark.

:class:`~services.notifier.adapters.redis_directory.RedisDirectory` reads and
writes these keys (its Lua is in ``redis_scripts``); the risk API (the erase,
``/v1/stats``) and the backfill name some of them too.

Key layout (``P`` = ``CHURNWATCH_KEY_PREFIX``). A user's keys carry the user id
as a hash tag, so a Redis Cluster keeps them in one slot with the scorer's
``P:{uid}:u``; the queues and counters shared by all users live elsewhere.

P:{uid}:contact   hash  email, phone, push_token, locale, timezone (never copied elsewhere)
P:{uid}:consent   hash  <channel> = 1 | 0, preferred = <channel>
P:{uid}:sends     zset  action_id -> time of each contact, sent or deferred (frequency cap)
P:{uid}:done      hash  action_id -> status once delivered (idempotency)
P:{uid}:pub       hash  action_id -> 1 once the action is on winback-actions
P:{uid}:actions   list  newest-first action history (capped)
P:{uid}:u         hash  wbid, wb = the latest win-back decision (the scorer resolves outcomes)
P:{uid}:wbc       hash  alert_id -> "<playbook>:<group>", decisions not counted yet (cluster)
P:{uid}:erased    string, the time of the user's erase, kept ERASED_KEEP_S (see below)
P:deferred        zset  JSON job -> not_before (a claimed job: the end of its lease)
P:failed          hash  action_id -> JSON job of a delivery that failed after its retries
P:failed:lease:<action_id>   string, a re-drive's claim on one failed delivery (expires)
P:winback:<playbook>:<group>:{treated,won}   counters of the uplift report
P:wbcounted:{P:winback:<playbook>:<group>:treated}:<alert_id>   string, "counted" for a
                  day (cluster); its hash tag is the counter's name: the counter's slot

The deferred queue's and the failed deliveries' keys are named in
:mod:`services.notifier.adapters.redis_queues`.

An erased user is not contacted again, nor recorded again. The erase (the risk
API's DELETE) deletes the user's keys and sets ``P:{uid}:erased`` for
``ERASED_KEEP_S``: long enough to outlive any alert of the user still on its way
(on the topic, redelivered, deferred, or claimed by a re-drive). The notifier
drops such alerts and jobs unsent, and every script that writes a user's keys
writes nothing while the mark is there, so a delivery already under way when
the erase came cannot bring the user's keys back. The scorer reads the mark
too: it drops the events of a user with no state under it. Saving the user's
consent again through the API lifts the mark.
"""

from __future__ import annotations

KEEP_S = 90 * 86400  # done marks, cap window, published marks, pending counts
# An erase outlives the user's alerts in flight: the longest an alert can wait is the
# alert topic's retention (Kafka's default, 7 days, which the local stack keeps) plus
# the age of its segment (segment.ms, 7 days): Kafka deletes whole segments.
ERASED_KEEP_S = 14 * 86400
COUNTED_S = 86400  # how long a cluster remembers that an alert's decision was counted

CONTACT_FIELDS = {"email": "email", "sms": "phone", "push": "push_token"}


def ukey(prefix: str, user_id: str, kind: str) -> str:
    return f"{prefix}:{{{user_id}}}:{kind}"


def erased_key(prefix: str, user_id: str) -> str:
    """The mark an erase leaves: while it is there, the user is not contacted or recorded.

    >>> erased_key("cw", "u1")
    'cw:{u1}:erased'
    """
    return ukey(prefix, user_id, "erased")


def treated_key(prefix: str, counter: str) -> str:
    """The uplift counter of ``<playbook>:<group>`` (read by the API's /v1/stats).

    >>> treated_key("cw", "vip:control")
    'cw:winback:vip:control:treated'
    """
    return f"{prefix}:winback:{counter}:treated"


def counted_key(prefix: str, counter_key: str, alert_id: str) -> str:
    """The mark "alert counted" in the counter's slot: its hash tag is the counter's name.

    Playbook names carry no braces (core/playbooks.py), so the counter's slot is
    the hash of its whole name.

    >>> from redis.crc import key_slot
    >>> key = counted_key("cw", "cw:winback:vip:treated:treated", "a1")
    >>> key, key_slot(key.encode()) == key_slot(b"cw:winback:vip:treated:treated")
    ('cw:wbcounted:{cw:winback:vip:treated:treated}:a1', True)
    """
    return f"{prefix}:wbcounted:{{{counter_key}}}:{alert_id}"
