"""Durable state on a Redis server, shared by several phasebus replicas.

:class:`RedisStore` keeps what the SQLite store keeps (configs with their
revisions, subscribers with one entry per subscription, running tasks,
history with its filters and retention, schedule marks) on one Redis
server, so that any number of phasebus servers can share it, plus what
sharing needs:

- **leases with fencing**: a replica holds a lease (:meth:`RedisStore.acquire_lease`)
  and renews it; every task it drives is written under it by
  :meth:`RedisStore.commit`, one Lua script per commit (one round trip),
  refused whole once the lease expired or was taken over. Each acquisition
  gets a fencing token greater than any before, so a replica paused past
  its lease (SIGSTOP, a long GC) that wakes up writes nothing. Another
  replica finds expired leases (:meth:`RedisStore.expired_leases`) and
  takes their tasks over (:meth:`RedisStore.adopt`).
- **claims**: :meth:`RedisStore.claim_firing` lets exactly one replica start
  a schedule's firing (``SET NX PX``).
- **runs of every replica** (:class:`SharedRunsMethods`): surpass decided
  atomically over a workflow's active and queued runs on every replica
  (:meth:`RedisStore.admit`), a stop carried to the replica driving a task
  (:meth:`RedisStore.request_stop`), every replica's tasks listed.
- **streams** (:class:`RedisStreams`) for what must reach another replica:
  actions to the replica holding a subscriber's WebSocket, answers to the
  replica driving a task, events to every replica. Entries read in a
  consumer group stay owed to their reader until acknowledged, and are
  handed back after a reconnect.

Redis is used as a server that may go away: a call that cannot reach it
waits and retries with backoff (logged once when Redis goes away and once
when it is back), :attr:`RedisStore.ready` tells meanwhile that it does not
answer, and a server still loading its data (``LOADING``) is waited for.
Callers bound the wait with trio's cancel scopes. A call Redis carried out
but answered late (or over a connection that broke) is sent again, so every
write is safe to make twice: commits and renewals write the same again, a
batch of events carries its number (:meth:`RedisStreams.publish_events`), and
acquiring a lease, adopting tasks and claiming a firing carry an id of the
call that the script recognises. What survives a restart of Redis depends on
its persistence; opening the store warns when Redis keeps nothing on disk.

Values are JSON written by orjson, as everywhere in phasebus (task records
arrive already encoded); every key is named once, below.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, Self, TypeVar

import coredis
import coredis.exceptions
import orjson
import trio
from anyio.abc import ByteStream
from coredis.commands import Script
from coredis.connection import BaseConnection, TCPConnection, UnixDomainSocketConnection
from coredis.response.types import StreamPending
from coredis.retry import NoRetryPolicy
from coredis.tokens import PureToken

from ._config import Config
from ._errors import ConfigConflict, LeaseLost, StoreError
from ._store import (
    DEFAULT_RETENTION,
    AsyncStore,
    FinishTask,
    SaveTask,
    StoredState,
    TaskWrite,
    revision_counter,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# ------------------------------------------------------------------ key names
#
# Every key is the store's prefix (``phasebus:`` unless told otherwise)
# followed by one of these; a name ending in ":" is followed by an id.

#: Hash: config id -> JSON ``{"revision", "data"}``. Written by any replica (the config API).
CONFIGS = "configs"
#: Hash: config kind's fqn -> the kind (JSON), as components register them. Any replica.
CONFIG_KINDS = "config-kinds"
#: Hash: config id -> its validation setting (JSON). Any replica (the config API).
CONFIG_VALIDATIONS = "config-validations"
#: Sorted set: subscriber ids, scored by ORDER when first stored (the order they are
#: listed in). Written by any replica (subscriber API).
SUBSCRIBERS = "subscribers"
#: Hash per subscriber (+ subscriber id): message type -> ``"<ORDER> <JSON>"``, the JSON being
#: ``{"wait_for_completion", "timeout"}``. One field per subscription. Any replica.
SUBSCRIPTIONS = "subscriptions:"
#: Counter: the order of subscribers and subscriptions (their position when listed).
ORDER = "order"
#: Hash: running task id -> its record (JSON). Written by commit, under the task's lease only.
RUNNING = "running"
#: Hash: running task id -> the lease it is held under. Written by commit and adopt.
TASK_LEASE = "task-lease"
#: String per lease (+ lease name): its fencing token, expiring with the lease (PX).
#: Written by the lease's holder (acquire, renew, release).
LEASE = "lease:"
#: String per lease (+ lease name): the id of the call that acquired the lease (random,
#: one per call), expiring with the lease's first period, so that a call sent again after
#: its answer was lost finds the lease its own. Written by acquire.
LEASE_CALL = "lease-call:"
#: Set per lease (+ lease name): the running tasks held under it. Commit and adopt.
LEASE_TASKS = "lease-tasks:"
#: Sorted set: lease name -> when it expires (ms, Redis's clock); 0 once released.
#: Lets a replica find expired leases whose tasks need taking over. Lease scripts.
LEASES = "leases"
#: Hash: expired lease name -> JSON ``[call id, [task ids]]``: the last adoption of its tasks
#: (the id of the call, random, and what it moved), so that the call sent again after its
#: answer was lost gets the same tasks back. Written by adopt.
ADOPTIONS = "adoptions"
#: Set per lease (+ lease name): the leases whose ANSWERS streams hold answers that its
#: holder took over with their tasks and may not have acknowledged yet (the lease it
#: adopted from, and those that lease had inherited). Moved on by adopt, so that whoever
#: adopts the tasks next takes those answers if the holder died before they counted;
#: emptied by the holder once it acknowledged them (RedisStreams.left_done).
LEFT = "left:"
#: Counter: the last fencing token handed out (grows on every acquisition).
FENCE = "fence"
#: Hash: finished task id -> its result (JSON). Written by commit, removed by prune.
HISTORY = "history"
#: Hash: finished task id -> JSON ``[member, workflow, outcome, "0"|"1", lease]``: its entry
#: in the indexes below, the fields the history filters on, and the lease it was filed
#: under (another lease's writes to it are refused). Commit, prune.
HISTORY_META = "history-meta"
#: Counter: the order finished tasks were first stored in (ties of ended_at: last first).
HISTORY_ORDER = "history-order"
#: Sorted set: ``<12 hex digits of HISTORY_ORDER>:<task id>`` scored by ended_at (seconds).
HISTORY_ENDED = "history-ended"
#: Sorted sets (+ workflow id / outcome / "0" or "1"), the same members, for the filters.
HISTORY_BY_WORKFLOW = "history-workflow:"
HISTORY_BY_OUTCOME = "history-outcome:"
HISTORY_BY_ERRORS = "history-errors:"
#: Sorted set (all scores 0, ordered by id): the ids of running and finished tasks, for
#: looking tasks up by a prefix of their id. Commit adds, prune removes.
TASK_IDS = "task-ids"
#: List per task (+ task id): its log entries (JSON), oldest first, the latest ``keep`` only.
#: Written by the replica driving the task; removed with the task by prune.
TASK_LOG = "task-log:"
#: Hash: definition id -> a run-time workflow or job, or a change to a built-in one (JSON).
#: Written by any replica (the definitions API).
DEFINITIONS = "definitions"
#: Hash: JSON ``[workflow, cron, time zone]`` -> when the schedule last fired (seconds).
#: Written by the replica that fired it.
SCHEDULE_MARKS = "schedule-marks"
#: String per firing (+ JSON ``[workflow, cron, time zone, planned seconds]``): the
#: replica that claimed it and an id of its call (SET NX PX GET), so that exactly one
#: replica starts the run.
FIRING = "firing:"
#: Stream per subscriber (+ subscriber id): actions (and aborts) owed to it. Written by the
#: replica driving the task when the subscriber is not connected there (an action sent
#: again once it connected elsewhere is wrapped: ``{"again": <action>}``); read in the
#: consumer group ``SUBSCRIBER_GROUP`` by the replica holding the subscriber's WebSocket,
#: acknowledged once passed on to it.
ACTIONS = "actions:"
#: Stream per lease (+ lease name): answers to the tasks held under it. Written by the
#: replica that received the answer (RedisStreams.send_answer looks the lease up in the
#: same script); read in the group ``DRIVER_GROUP`` by the lease's holder, then by the
#: replica that adopted its tasks. It also carries, as ``{"c": "stop"|"start", "t": id}``,
#: the stops asked for those tasks (the stop and admission scripts) and the start of a
#: queued run whose turn came (commit).
ANSWERS = "answers:"
#: Stream: events for ``/events`` listeners, in order. Written by the replica that emits
#: the event, when another replica wants its type (INTERESTS; RedisStreams.publish_events);
#: read by every replica without a group (RedisStreams.follow, from the last id it saw),
#: trimmed by length.
EVENTS = "events"
#: Hash per workflow (+ workflow id): its runs that surpass weighs, task id -> ``a``
#: (active), ``s`` (active, asked to stop) or ``q`` (queued). Written by the admission
#: script (a run admitted or queued, runs replaced), the stop script, and commit (a task
#: filed in the history leaves it; the queued run becomes active once no other is). It
#: names no lease: the holder of each is looked up in TASK_LEASE, which adopt moves.
WORKFLOW_RUNS = "workflow-runs:"
#: Hash: running task id -> the stop asked for it (JSON ``{"c": "stop", "t", "why", "r"}``,
#: ``r``: replaced), through any replica or by a replacing run, until the task is filed
#: (commit removes it). Written by the admission and stop scripts; read by a replica that
#: takes the task over or resumes it, so that a stop outlives the replica it was sent to.
STOPS = "stops"
#: Hash: replica (lease name) -> the event types its listeners, observers and waiting steps
#: want: a JSON list, or ``*`` for every type. Written by each replica for itself when its
#: interest grows or shrinks (RedisStreams.publish_events); counted only while the replica's
#: LEASE key lives, so that it is renewed with the lease and gone with it.
INTERESTS = "interests"
#: Counter: grows on every change of INTERESTS, so that a replica knows in the same step as
#: it appends events whether the interest it filtered them with is still the current one.
INTERESTS_VERSION = "interests-version"
#: Hash: writer (a replica's name) -> the id of the last batch of entries it appended to a
#: stream read without a group (``<random id of the writer's run>:<batch number>``), so that
#: a batch sent again after its answer was lost is not appended twice (publish_events).
BATCHES = "batches"

#: The consumer group of an ACTIONS stream.
SUBSCRIBER_GROUP = "subscriber"
#: The consumer group of an ANSWERS stream.
DRIVER_GROUP = "driver"
#: The one field of a stream entry: its body.
BODY = b"m"

#: Members of the history's sorted sets start with this many hex digits and a colon.
_ORDER_DIGITS = 12

# ------------------------------------------------------------------ scripts
#
# Each script is one round trip and atomic. Keys that depend on data read in
# the script (a finished task's old indexes) are built there from the name
# prefixes above, passed in ARGV.

_LOAD = """
local configs = redis.call('HGETALL', KEYS[1])
local subscribers = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  subscribers[#subscribers + 1] = {id, redis.call('HGETALL', ARGV[1] .. id)}
end
local tasks
if ARGV[2] == '' then
  tasks = redis.call('HVALS', KEYS[3])
else
  tasks = {}
  for _, id in ipairs(redis.call('SMEMBERS', ARGV[2])) do
    local record = redis.call('HGET', KEYS[3], id)
    if record then tasks[#tasks + 1] = record end
  end
end
return {configs, subscribers, tasks, redis.call('HGETALL', KEYS[4]), redis.call('HGETALL', KEYS[5])}
"""

_SAVE_CONFIG = """
if ARGV[2] ~= '' then
  local stored = redis.call('HGET', KEYS[1], ARGV[1])
  local revision = stored and cjson.decode(stored)['revision'] or false
  if revision ~= ARGV[2] then return {0, revision} end
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return {1}
"""

_SAVE_SUBSCRIPTIONS = """
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
end
for i = 3, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[2], ARGV[i])
  local order = old and string.match(old, '^%d+') or redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[2], ARGV[i], order .. ' ' .. ARGV[i + 1])
end
return 1
"""

_COMMIT = """
local token = redis.call('GET', KEYS[1])
if token ~= ARGV[1] then
  if token then
    return {0, 'lease ' .. ARGV[2] .. ' was acquired again (token ' .. token .. ')'}
  end
  return {0, 'lease ' .. ARGV[2] .. ' is not held (expired or released)'}
end
local writes, messages = tonumber(ARGV[6]), tonumber(ARGV[7])
local i = 10
for _ = 1, writes do
  local holder = redis.call('HGET', KEYS[3], ARGV[i + 1])
  if holder and holder ~= ARGV[2] then
    return {0, 'task ' .. ARGV[i + 1] .. ' is held under lease ' .. holder}
  end
  if not holder then
    local meta = redis.call('HGET', KEYS[6], ARGV[i + 1])
    local filer = meta and cjson.decode(meta)[5]
    if filer and filer ~= ARGV[2] then
      return {0, 'task ' .. ARGV[i + 1] .. ' has ended under lease ' .. filer}
    end
  end
  if ARGV[i] == 'S' then i = i + 3 else i = i + 7 end
end
i = 10
for _ = 1, writes do
  local id = ARGV[i + 1]
  if ARGV[i] == 'S' then
    redis.call('HSET', KEYS[2], id, ARGV[i + 2])
    redis.call('ZADD', KEYS[9], 0, id)
    redis.call('HSET', KEYS[3], id, ARGV[2])
    redis.call('SADD', KEYS[4], id)
    i = i + 3
  else
    local workflow, outcome, ended, errors = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('SREM', KEYS[4], id)
    local member
    local meta = redis.call('HGET', KEYS[6], id)
    if meta then
      local old = cjson.decode(meta)
      member = old[1]
      redis.call('ZREM', ARGV[3] .. old[2], member)
      redis.call('ZREM', ARGV[4] .. old[3], member)
      redis.call('ZREM', ARGV[5] .. old[4], member)
    else
      member = string.format('%0DIGITSx', redis.call('INCR', KEYS[7])) .. ':' .. id
    end
    redis.call('HSET', KEYS[5], id, ARGV[i + 6])
    redis.call('ZADD', KEYS[9], 0, id)
    redis.call('HSET', KEYS[6], id, cjson.encode({member, workflow, outcome, errors, ARGV[2]}))
    redis.call('ZADD', KEYS[8], ended, member)
    redis.call('ZADD', ARGV[3] .. workflow, ended, member)
    redis.call('ZADD', ARGV[4] .. outcome, ended, member)
    redis.call('ZADD', ARGV[5] .. errors, ended, member)
    redis.call('HDEL', KEYS[10], id)
    if redis.call('HDEL', ARGV[8] .. workflow, id) == 1 then
      local runs, busy, queued = redis.call('HGETALL', ARGV[8] .. workflow), false, nil
      for j = 1, #runs, 2 do
        if runs[j + 1] == 'q' then queued = runs[j] else busy = true end
      end
      if queued and not busy then
        redis.call('HSET', ARGV[8] .. workflow, queued, 'a')
        local record = redis.call('HGET', KEYS[2], queued)
        if record then
          record = string.gsub(record, '"state":"queued"', '"state":"admitted"', 1)
          redis.call('HSET', KEYS[2], queued, record)
        end
        local holder = redis.call('HGET', KEYS[3], queued)
        if holder then
          redis.call('XADD', ARGV[9] .. holder, '*', 'm', cjson.encode({c = 'start', t = queued}))
        end
      end
    end
    i = i + 7
  end
end
for _ = 1, messages do
  redis.call('XADD', ARGV[i], '*', 'm', ARGV[i + 1])
  i = i + 2
end
return {1, redis.call('GET', KEYS[11]) or '0'}
""".replace("DIGITS", str(_ORDER_DIGITS))

_HISTORY = """
local limit = tonumber(ARGV[5])
local found = {}
local offset = 0
while limit < 0 or #found < limit do
  local members = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[1], 'LIMIT', offset, 256)
  if #members == 0 then break end
  offset = offset + #members
  for _, member in ipairs(members) do
    local id = string.sub(member, SKIP)
    local meta = cjson.decode(redis.call('HGET', KEYS[3], id))
    if (ARGV[2] == '' or meta[2] == ARGV[2]) and (ARGV[3] == '' or meta[3] == ARGV[3])
        and (ARGV[4] == '' or meta[4] == ARGV[4]) then
      found[#found + 1] = redis.call('HGET', KEYS[2], id)
      if #found == limit then break end
    end
  end
end
return found
""".replace("SKIP", str(_ORDER_DIGITS + 2))

_PRUNE = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[5])
for _, member in ipairs(members) do
  local id = string.sub(member, SKIP)
  local meta = cjson.decode(redis.call('HGET', KEYS[3], id))
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', ARGV[2] .. meta[2], member)
  redis.call('ZREM', ARGV[3] .. meta[3], member)
  redis.call('ZREM', ARGV[4] .. meta[4], member)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
  redis.call('DEL', ARGV[6] .. id)
end
return #members
""".replace("SKIP", str(_ORDER_DIGITS + 2))

_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

_ACQUIRE = (
    _NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('GET', KEYS[4]) == ARGV[3] then return tonumber(redis.call('GET', KEYS[1])) end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[2]), ARGV[1])
return token
"""
)

_RENEW = (
    _NOW_MS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('SCARD', KEYS[3]) > 0 then
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""

_EXPIRED = (
    _NOW_MS
    + """
local expired = {}
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms)) do
  if redis.call('EXISTS', ARGV[1] .. name) == 0 then
    if redis.call('SCARD', ARGV[2] .. name) > 0 then
      expired[#expired + 1] = name
    else
      redis.call('ZREM', KEYS[1], name)
    end
  end
end
return expired
"""
)

_ADOPT = """
local token = redis.call('GET', KEYS[1])
if token ~= ARGV[1] then
  return {0, 'lease ' .. ARGV[2] .. ' is not held with token ' .. ARGV[1]}
end
local records = {1}
local last = redis.call('HGET', KEYS[8], ARGV[3])
if last then
  local adoption = cjson.decode(last)
  if adoption[1] == ARGV[4] then  -- this call, sent again: what it moved (still held here)
    for _, id in ipairs(adoption[2]) do
      local record = redis.call('HGET', KEYS[6], id)
      if record and redis.call('HGET', KEYS[5], id) == ARGV[2] then
        records[#records + 1] = record
      end
    end
    return records
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, 'lease ' .. ARGV[3] .. ' is held again'}
end
local ids = redis.call('SMEMBERS', KEYS[3])
for _, id in ipairs(ids) do
  redis.call('HSET', KEYS[5], id, ARGV[2])
  redis.call('SADD', KEYS[4], id)
  local record = redis.call('HGET', KEYS[6], id)
  if record then records[#records + 1] = record end
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[7], ARGV[3])
redis.call('HSET', KEYS[8], ARGV[3], cjson.encode({ARGV[4], ids}))
redis.call('SADD', KEYS[10], ARGV[3])
for _, name in ipairs(redis.call('SMEMBERS', KEYS[9])) do
  if name ~= ARGV[2] then redis.call('SADD', KEYS[10], name) end
end
redis.call('DEL', KEYS[9])
return records
"""

_ADMIT = """
local token = redis.call('GET', KEYS[1])
if token ~= ARGV[1] then
  return {'lost', 'lease ' .. ARGV[2] .. ' is not held with token ' .. ARGV[1]}
end
local id = ARGV[3]
local decided = redis.call('HGET', KEYS[2], id)
if decided == 'q' then return {'queue'} end
if decided then
  -- asked again: the same verdict, with the runs this one replaces still stopping
  local reply, runs = {'start'}, redis.call('HGETALL', KEYS[2])
  local why = 'replaced by task ' .. id
  for j = 1, #runs, 2 do
    local kept = runs[j + 1] == 's' and redis.call('HGET', KEYS[7], runs[j])
    if kept and cjson.decode(kept)['why'] == why then reply[#reply + 1] = runs[j] end
  end
  return reply
end
local runs, active, queued = redis.call('HGETALL', KEYS[2]), {}, nil
for j = 1, #runs, 2 do
  if runs[j + 1] == 'a' then active[#active + 1] = runs[j] end
  if runs[j + 1] == 'q' then queued = runs[j] end
end
local verdict = 'start'
if #active > 0 and ARGV[4] == 'skip' then return {'skip', active[1]} end
if #active > 0 and ARGV[4] == 'wait' then
  if queued then return {'skip', queued} end
  verdict = 'queue'
end
redis.call('HSET', KEYS[2], id, verdict == 'queue' and 'q' or 'a')
redis.call('HSET', KEYS[3], id, verdict == 'queue' and ARGV[6] or ARGV[5])
redis.call('HSET', KEYS[4], id, ARGV[2])
redis.call('SADD', KEYS[5], id)
redis.call('ZADD', KEYS[6], 0, id)
local reply = {verdict}
if ARGV[4] == 'replace' then
  for _, other in ipairs(active) do
    local body = cjson.encode({c = 'stop', t = other, why = 'replaced by task ' .. id, r = true})
    redis.call('HSET', KEYS[2], other, 's')
    redis.call('HSETNX', KEYS[7], other, body)
    local holder = redis.call('HGET', KEYS[4], other)
    if holder then redis.call('XADD', ARGV[7] .. holder, '*', 'm', body) end
    reply[#reply + 1] = other
  end
end
return reply
"""

_STOP = """
local id = ARGV[1]
local lease = redis.call('HGET', KEYS[1], id)
if not lease then
  return {redis.call('HEXISTS', KEYS[2], id) == 1 and 'ended' or 'unknown'}
end
local body = cjson.encode({c = 'stop', t = id, why = ARGV[4], r = false})
redis.call('HSETNX', KEYS[3], id, body)
local record = redis.call('HGET', KEYS[4], id)
local workflow = record and cjson.decode(record)['workflow']
if workflow and redis.call('HGET', ARGV[3] .. workflow, id) == 'a' then
  redis.call('HSET', ARGV[3] .. workflow, id, 's')
end
if lease == ARGV[5] then return {'kept', lease} end
redis.call('XADD', ARGV[2] .. lease, '*', 'm', body)
return {'sent', lease}
"""

_CLAIM = """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[4], ARGV[2])
if type(pending) ~= 'table' or pending.err or #pending == 0 then return {} end
local ids = {}
for _, entry in ipairs(pending) do ids[#ids + 1] = entry[1] end
return redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, unpack(ids))
"""

_SEND_ANSWER = """
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if not lease then return false end
return redis.call('XADD', ARGV[2] .. lease, '*', 'm', ARGV[3])
"""

_LIVE = """
local function live(version, leases)
  local found = {0, version}
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if redis.call('EXISTS', leases .. all[i]) == 1 then
      found[#found + 1] = all[i]
      found[#found + 1] = all[i + 1]
    end
  end
  return found
end
"""

_LIVE_INTERESTS = _LIVE + "return live(redis.call('GET', KEYS[1]) or '0', ARGV[1])\n"

_PUBLISH_EVENTS = (
    _LIVE
    + """
local last = ARGV[6] ~= '' and redis.call('HGET', KEYS[4], ARGV[2])
if last then  -- this batch, sent again after its answer was lost: appended already
  local run, batch = string.match(last, '^(.*):(%d+)$')
  if run == ARGV[6] and tonumber(batch) >= tonumber(ARGV[7]) then
    return {1, redis.call('GET', KEYS[1]) or '0'}
  end
end
local version = redis.call('GET', KEYS[1]) or '0'
if version ~= ARGV[1] then return live(version, ARGV[5]) end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  version = tostring(redis.call('INCR', KEYS[1]))
end
for i = 8, #ARGV do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'm', ARGV[i])
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[4], ARGV[2], ARGV[6] .. ':' .. ARGV[7]) end
return {1, version}
"""
)

#: Errors that mean "Redis cannot answer now": retried with backoff. (coredis reports
#: LOADING as a BusyLoadingError, a ConnectionError.)
_UNREACHABLE = (
    coredis.exceptions.ConnectionError,
    OSError,  # TimeoutError included
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)

#: Backoff between attempts to reach Redis: from FIRST_DELAY, doubling up to MAX_DELAY.
FIRST_DELAY = 0.05
MAX_DELAY = 2.0

#: Seconds a call to Redis may go unanswered (beyond what a blocking read asks Redis to
#: wait) before Redis counts as out of reach, as if the connection were lost. A Redis
#: that is paused, swapping hard, or whose host vanished without closing the connection
#: never answers; without a bound every call would wait for it forever, and the server
#: would still call itself ready. A healthy Redis answers in milliseconds, so a few
#: seconds mistake no slow answer for a hung server. The call is sent again (Redis
#: answers the abandoned one on its connection when it wakes: that answer is dropped).
ANSWER_TIMEOUT = 5.0


def _seconds(moment: float) -> str:
    return repr(float(moment))


def _milliseconds(ttl: timedelta) -> int:
    ms = int(ttl / timedelta(milliseconds=1))
    if ms <= 0:
        raise ValueError(f"ttl must be positive, not {ttl}")
    return ms


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _timeout(value: Any) -> Any:
    # whole seconds read back as they were given (60, not 60.0), as the SQLite store does
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _ClosesBuffersOnFailure(BaseConnection):
    """A connection that closes its buffers when it cannot connect.

    coredis 6 creates them with the connection and closes them only once
    connected; each failed attempt (Redis down) would leave them to the
    garbage collector, with a ResourceWarning.
    """

    async def _connect(self) -> ByteStream:
        try:
            return await super()._connect()  # type: ignore[safe-super]
        except BaseException:
            for buffer in (
                self._write_buffer_in,
                self._write_buffer_out,
                self._push_message_buffer_in,
                self._push_message_buffer_out,
                self._streamed_message_buffer_in,
                self._streamed_message_buffer_out,
            ):
                buffer.close()
            raise


class _TCPConnection(_ClosesBuffersOnFailure, TCPConnection):
    pass


class _UnixConnection(_ClosesBuffersOnFailure, UnixDomainSocketConnection):
    pass


class RedisConnection:
    """A connection to a Redis server that may go away: calls retried, readiness known.

    Use it as an async context manager: entering connects, waits while Redis
    loads its data, and warns when Redis keeps nothing on disk. ``prefix``
    starts every key, so that several phasebus deployments can share one
    database.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "phasebus:",
        instance: str | None = None,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise StoreError(
                f"cannot use {_without_password(url)} as a phasebus store: a Redis URL starts"
                " with redis://,"
                " rediss:// or unix://"
            )
        self.url = url
        #: The URL as logged: without a password.
        self.shown_url = _without_password(url)
        self.prefix = prefix
        #: Who this store is to Redis (the value of the claims it takes).
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        #: Calls sent to Redis (each one round trip), for tests and benchmarks.
        self.round_trips = 0
        #: Calls that read the version of the replicas' interest (INTERESTS_VERSION): how
        #: many were sent, the last commit among them, and the last answer (the call's
        #: number and the version then). See :meth:`ask_interests`.
        self.interest_calls = 0
        self.last_commit_call = 0
        self.interests_seen: tuple[int, int] = (0, -1)
        #: Seconds a call may go unanswered before Redis counts as out of reach.
        self.answer_timeout = answer_timeout
        try:
            self._client: coredis.Redis[bytes] = coredis.Redis.from_url(
                url, retry_policy=NoRetryPolicy(), connect_timeout=5.0
            )
        except ValueError as error:
            raise StoreError(f"cannot use {self.shown_url} as a phasebus store: {error}") from None
        pool = self._client.connection_pool
        if pool.connection_class is TCPConnection:
            pool.connection_class = _TCPConnection
        elif pool.connection_class is UnixDomainSocketConnection:
            pool.connection_class = _UnixConnection
        self._ready = False
        self._unreachable_since: float | None = None
        self._exit = contextlib.AsyncExitStack()
        self._scripts = {
            name: self._client.register_script(text)
            for name, text in (
                ("load", _LOAD),
                ("config", _SAVE_CONFIG),
                ("subscriptions", _SAVE_SUBSCRIPTIONS),
                ("commit", _COMMIT),
                ("history", _HISTORY),
                ("prune", _PRUNE),
                ("acquire", _ACQUIRE),
                ("renew", _RENEW),
                ("release", _RELEASE),
                ("expired", _EXPIRED),
                ("adopt", _ADOPT),
                ("answer", _SEND_ANSWER),
                ("admit", _ADMIT),
                ("stop", _STOP),
                ("claim", _CLAIM),
                ("interests", _LIVE_INTERESTS),
                ("publish events", _PUBLISH_EVENTS),
            )
        }

    def key(self, name: str, part: str = "") -> str:
        """Return the full key of ``name`` (one of this module's names) and ``part``."""
        return f"{self.prefix}{name}{part}"

    # ------------------------------------------------------------ the server

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._client)
            await self._wait_until_loaded()
            await self._check_persistence()
            self._exit = stack.pop_all()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Disconnect from Redis."""
        await self._exit.aclose()

    @property
    def ready(self) -> bool:
        """Tell whether Redis answered the last call (False while it is out of reach)."""
        return self._ready

    async def check(self) -> bool:
        """Ask Redis whether it answers now (one PING, no retry); update :attr:`ready`."""
        try:
            with trio.fail_after(min(2.0, self.answer_timeout)):
                await self._client.ping()
        except (*_UNREACHABLE, trio.TooSlowError):
            self._ready = False
        else:
            self._ready = True
        return self._ready

    async def call(self, operation: Callable[[], Awaitable[T]], *, waits: float = 0.0) -> T:
        """Run one call to Redis, retrying with backoff while Redis cannot answer.

        A call without an answer within :attr:`answer_timeout` seconds (plus
        ``waits``: how long a blocking read asks Redis to hold its answer back)
        counts as Redis out of reach.
        """
        delay = FIRST_DELAY
        while True:
            self.round_trips += 1
            bound = self.answer_timeout + waits
            try:
                with trio.move_on_after(bound) as waiting:
                    result = await operation()
                if waiting.cancelled_caught:
                    raise TimeoutError(f"no answer within {bound:g} s")
            except _UNREACHABLE as error:
                if self._unreachable_since is None:
                    self._unreachable_since = trio.current_time()
                    logger.warning(
                        "redis at %s does not answer (%s); retrying until it does",
                        self.shown_url,
                        error,
                    )
                self._ready = False
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            if self._unreachable_since is not None:
                logger.warning(
                    "redis at %s answers again after %.1f s",
                    self.shown_url,
                    trio.current_time() - self._unreachable_since,
                )
                self._unreachable_since = None
            self._ready = True
            return result

    async def _wait_until_loaded(self) -> None:
        told = False
        while True:
            info = await self.call(lambda: self._client.info("persistence"))
            if not info.get("loading"):
                return
            if not told:
                logger.warning("redis at %s is loading its data; waiting", self.shown_url)
                told = True
            await trio.sleep(0.1)

    async def _check_persistence(self) -> None:
        try:
            settings = await self.call(lambda: self._client.config_get(["appendonly", "save"]))
        except coredis.exceptions.ResponseError as error:
            logger.warning(
                "cannot tell whether redis at %s keeps its data on disk (%s)", self.shown_url, error
            )
            return
        appendonly = _text(settings.get(b"appendonly", b"no"))
        save = _text(settings.get(b"save", b""))
        if appendonly != "yes" and not save.strip():
            logger.warning(
                "redis at %s keeps nothing on disk (appendonly no, save ''): when it restarts,"
                " every config, subscriber, running task, history entry and schedule mark is"
                " lost; turn on its append-only file (appendonly yes)",
                self.shown_url,
            )
        elif appendonly != "yes":
            logger.warning(
                "redis at %s only saves snapshots (save '%s'): when it stops without saving,"
                " whatever changed since its last snapshot is lost (running tasks go back to"
                " older steps); an append-only file (appendonly yes) keeps every write",
                self.shown_url,
                save,
            )

    def ask_interests(self, *, commit: bool = False) -> int:
        """Number a call about to be sent that reads the version of the replicas' interest
        (a commit, an append of events); return its number, for :meth:`saw_interests`.

        A version read by a call is at least as recent as anything that happened before
        the call was sent: events decided before a commit was sent may be filtered with
        the version that commit read (:class:`~engine._replicas.EventFanout`).
        """
        self.interest_calls += 1
        if commit:
            self.last_commit_call = self.interest_calls
        return self.interest_calls

    def saw_interests(self, call: int, version: bytes | str) -> None:
        """Record the version of the replicas' interest that call number ``call`` read."""
        if call > self.interests_seen[0]:
            self.interests_seen = (call, int(version))

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script: Script[bytes] = self._scripts[name]
        return await self.call(lambda: script(keys=list(keys), args=list(args)))

    async def commit_script(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the commit script (see :meth:`RedisStore.commit`); record the version of the
        replicas' interest it read (:meth:`saw_interests`)."""
        asked = self.ask_interests(commit=True)
        reply = await self.script("commit", keys, args)
        if reply[0] == 1:
            self.saw_interests(asked, reply[1])
        return reply


class RedisLeases(RedisConnection):
    """What replicas hold on a Redis server: leases with fencing tokens, the tasks of an
    expired lease taken over, and claims of cron firings (see the module's docstring)."""

    # ------------------------------------------------------------ leases

    async def acquire_lease(self, name: str, ttl: timedelta) -> int | None:
        """Take the lease ``name`` for ``ttl`` if nobody holds it; return its fencing token.

        The token is greater than every token this store handed out before
        (for any lease). None: someone holds the lease. Taking a lease again
        after it expired takes its tasks with it (a replica restarting under
        the same name), and fences out the writes of whoever held it before.

        The call is sent again when its answer is lost (late, or the
        connection broke): the lease its first attempt took is recognised
        (by an id of this call stored with it) and its token returned.
        """
        call_id = secrets.token_hex(8)
        token = await self.script(
            "acquire",
            [self.key(LEASE, name), self.key(FENCE), self.key(LEASES), self.key(LEASE_CALL, name)],
            [name, _milliseconds(ttl), call_id],
        )
        return None if token is None else int(token)

    async def renew_lease(self, name: str, token: int, ttl: timedelta) -> bool:
        """Extend a held lease to ``ttl`` from now; False if it is no longer held with ``token``."""
        renewed = await self.script(
            "renew", [self.key(LEASE, name), self.key(LEASES)], [name, token, _milliseconds(ttl)]
        )
        return bool(renewed)

    async def keep_lease(
        self,
        name: str,
        token: int,
        ttl: timedelta,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Renew a held lease every third of ``ttl``, until cancelled or the lease is lost.

        Run it in the nursery of whatever drives the lease's tasks: when it
        raises, that work must stop (its commits would be refused anyway).

        Raises:
            LeaseLost: a renewal found the lease expired or taken (after this
                process was paused, or Redis was out of reach, longer than ``ttl``).
        """
        task_status.started()
        while True:
            await trio.sleep(ttl.total_seconds() / 3)
            if not await self.renew_lease(name, token, ttl):
                raise LeaseLost(f"lease {name} was lost: not renewed within {ttl}")

    async def release_lease(self, name: str, token: int) -> bool:
        """Give a lease up at once (its tasks can be taken over at once); False if not held."""
        released = await self.script(
            "release",
            [self.key(LEASE, name), self.key(LEASES), self.key(LEASE_TASKS, name)],
            [name, token],
        )
        return bool(released)

    async def expired_leases(self) -> list[str]:
        """Return the leases that expired (or were released) while tasks are held under them."""
        names = await self.script(
            "expired", [self.key(LEASES)], [self.key(LEASE), self.key(LEASE_TASKS)]
        )
        return [_text(name) for name in names]

    async def adopt(self, expired: str, *, owner: str, fence: int) -> list[bytes]:
        """Move the tasks of an expired lease to the lease ``owner``; return their records.

        Answers sent to the expired lease's tasks before this call are in its
        ANSWERS stream (:meth:`RedisStreams.answer_stream`); the adopter reads
        that stream to its end, those entries owed to the old holder included
        (:meth:`RedisStreams.owed`), and the streams of the leases the old
        holder had taken tasks from (:meth:`RedisStreams.left`), where answers
        it took over with them may still be owed. Answers sent afterwards go
        to ``owner``'s.

        The call is sent again when its answer is lost (late, or the
        connection broke): the tasks its first attempt moved are returned
        then (an id of this call is stored with the adoption).

        Raises:
            LeaseLost: ``owner`` is not held with ``fence``, or ``expired`` was
                taken again meanwhile; nothing moved.
        """
        call_id = secrets.token_hex(8)
        reply = await self.script(
            "adopt",
            [
                self.key(LEASE, owner),
                self.key(LEASE, expired),
                self.key(LEASE_TASKS, expired),
                self.key(LEASE_TASKS, owner),
                self.key(TASK_LEASE),
                self.key(RUNNING),
                self.key(LEASES),
                self.key(ADOPTIONS),
                self.key(LEFT, expired),
                self.key(LEFT, owner),
            ],
            [fence, owner, expired, call_id],
        )
        if reply[0] != 1:
            raise LeaseLost(f"adopting {expired} refused, nothing moved: {_text(reply[1])}")
        return [bytes(record) for record in reply[1:]]

    # ------------------------------------------------------------ claims

    async def claim_firing(
        self,
        workflow: str,
        cron: str,
        timezone: str,
        planned: datetime,
        *,
        ttl: timedelta = timedelta(days=1),
    ) -> bool:
        """Take the firing of a schedule at ``planned``; True for exactly one caller.

        The claim is kept for ``ttl`` (longer than replicas' clocks may
        differ and a catch-up may come late), then forgotten. A call sent
        again after its answer was lost (late, or the connection broke) finds
        the claim its first attempt took (it holds an id of this call).
        """
        name = self.key(
            FIRING, orjson.dumps([workflow, cron, timezone, planned.timestamp()]).decode()
        )
        claim = f"{self.instance} {secrets.token_hex(8)}"
        before = await self.call(
            lambda: self._client.set(
                name, claim, condition=PureToken.NX, px=_milliseconds(ttl), get=True
            )
        )
        return before is None or _text(before) == claim


class SharedRunsMethods(RedisConnection):
    """The runs of every replica, weighed and stopped in Redis (a part of
    :class:`RedisStore`): surpass decided atomically over a workflow's runs
    (WORKFLOW_RUNS), a stop carried to the replica driving a task (STOPS and
    its lease's ANSWERS stream), and every replica's running tasks listed."""

    async def admit(
        self,
        workflow: str,
        task_id: str,
        surpass: str,
        *,
        owner: str,
        fence: int,
        records: tuple[bytes, bytes],
    ) -> tuple[str, tuple[str, ...]]:
        """Decide whether a new run of ``workflow`` starts, is queued or is skipped, weighing
        the runs of every replica, in one atomic step; return the verdict and what it names.

        ``surpass`` is ``skip``, ``wait`` or ``replace``. The verdict is
        ``start`` (with ``replace``: and the runs it replaces, each asked to
        stop through its holder's ANSWERS stream and in STOPS), ``queue``, or
        ``skip`` (with the run that made it skip: the active one, or with
        ``wait`` the one already queued). A run started or queued is held under
        ``owner`` at once, with ``records``' first (started: state
        ``admitted``) or second (queued), so that a replica taking its tasks
        over finds it. Asked again for the same ``task_id`` (sent again after
        no answer), the first verdict stands.

        Raises:
            LeaseLost: ``owner`` is not held with ``fence``; nothing was decided.
        """
        reply = await self.script(
            "admit",
            [
                self.key(LEASE, owner),
                self.key(WORKFLOW_RUNS, workflow),
                self.key(RUNNING),
                self.key(TASK_LEASE),
                self.key(LEASE_TASKS, owner),
                self.key(TASK_IDS),
                self.key(STOPS),
            ],
            [fence, owner, task_id, surpass, records[0], records[1], self.key(ANSWERS)],
        )
        verdict = _text(reply[0])
        if verdict == "lost":
            raise LeaseLost(f"admission refused, nothing decided: {_text(reply[1])}")
        return verdict, tuple(_text(part) for part in reply[1:])

    async def request_stop(
        self, task_id: str, reason: str, *, here: str = ""
    ) -> tuple[str, str | None]:
        """Ask the replica driving a running task to stop it, through Redis, whichever it is.

        One atomic step looks the task's lease up, keeps the request in STOPS
        (the first reason stands) and appends it to that lease's ANSWERS
        stream, so that the request reaches the lease's holder, or the replica
        that takes its tasks over. Return ``("sent", lease)``, ``("kept",
        here)`` (the lease is ``here``, the asking replica's, which stops the
        task itself: nothing is appended), ``("ended", None)`` (the task is in
        the history) or ``("unknown", None)``.
        """
        reply = await self.script(
            "stop",
            [self.key(TASK_LEASE), self.key(HISTORY), self.key(STOPS), self.key(RUNNING)],
            [task_id, self.key(ANSWERS), self.key(WORKFLOW_RUNS), reason, here],
        )
        return _text(reply[0]), _text(reply[1]) if len(reply) > 1 else None

    async def stop_requests(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Return the stops asked for these running tasks (see :meth:`request_stop`), by id."""
        if not task_ids:
            return {}
        values = await self.call(lambda: self._client.hmget(self.key(STOPS), list(task_ids)))
        return {
            task_id: orjson.loads(value)
            for task_id, value in zip(task_ids, values, strict=True)
            if value is not None
        }

    async def running_task(self, task_id: str) -> dict[str, Any] | None:
        """Return a running task's record, whoever drives it, or None."""
        record = await self.call(lambda: self._client.hget(self.key(RUNNING), task_id))
        return None if record is None else orjson.loads(record)

    async def lease_of(self, task_id: str) -> str | None:
        """Return the lease a running task is held under, or None."""
        lease = await self.call(lambda: self._client.hget(self.key(TASK_LEASE), task_id))
        return None if lease is None else _text(lease)

    async def running_tasks(self) -> list[dict[str, Any]]:
        """Return the records of every replica's running and queued tasks (as last committed)."""
        records = await self.call(lambda: self._client.hvals(self.key(RUNNING)))
        return [orjson.loads(record) for record in records]


class RedisStore(SharedRunsMethods, RedisLeases):
    """The store on a Redis server (``redis://HOST:PORT/DB``), for one or several replicas.

    Use it as an async context manager (or :func:`open_redis_store`), see
    :class:`RedisConnection`. Every method retries while Redis cannot be
    reached (see the module's docstring); a method that raises
    :class:`LeaseLost` wrote nothing.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "phasebus:",
        retention: timedelta = DEFAULT_RETENTION,
        instance: str | None = None,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        super().__init__(url, prefix=prefix, instance=instance, answer_timeout=answer_timeout)
        #: How long finished tasks are kept.
        self.retention = retention
        #: The streams between replicas (see :class:`RedisStreams`).
        self.streams = RedisStreams(self)

    # ------------------------------------------------------------ reading

    async def load(self, *, lease: str | None = None) -> StoredState:
        """Return everything stored; with ``lease``, only the running tasks held under it."""
        configs_raw, subscribers_raw, tasks_raw, marks_raw, definitions_raw = await self.script(
            "load",
            [
                self.key(CONFIGS),
                self.key(SUBSCRIBERS),
                self.key(RUNNING),
                self.key(SCHEDULE_MARKS),
                self.key(DEFINITIONS),
            ],
            [self.key(SUBSCRIPTIONS), "" if lease is None else self.key(LEASE_TASKS, lease)],
        )
        configs = []
        for index in range(0, len(configs_raw), 2):
            stored = orjson.loads(configs_raw[index + 1])
            configs.append(Config(_text(configs_raw[index]), stored["data"], stored["revision"]))
        configs.sort(key=lambda c: c.id)
        subscribers: dict[str, list[dict[str, Any]]] = {}
        for subscriber_id, fields in subscribers_raw:
            entries = []
            for index in range(0, len(fields), 2):
                order, _, body = fields[index + 1].partition(b" ")
                value = orjson.loads(body)
                entries.append(
                    (
                        int(order),
                        {
                            "message_type": _text(fields[index]),
                            "wait_for_completion": value["wait_for_completion"],
                            "timeout": _timeout(value["timeout"]),
                        },
                    )
                )
            subscribers[_text(subscriber_id)] = [entry for _, entry in sorted(entries)]
        marks = {}
        for index in range(0, len(marks_raw), 2):
            workflow, cron, timezone = orjson.loads(marks_raw[index])
            marks[(workflow, cron, timezone)] = datetime.fromtimestamp(
                float(marks_raw[index + 1]), UTC
            )
        return StoredState(
            tuple(configs),
            subscribers,
            tuple(orjson.loads(record) for record in tasks_raw),
            marks,
            revision_counter(configs),
            {
                _text(definitions_raw[index]): orjson.loads(definitions_raw[index + 1])
                for index in range(0, len(definitions_raw), 2)
            },
        )

    async def history(
        self,
        *,
        workflow: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        has_errors: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Return finished tasks, newest first (ties: the one stored last first).

        The walk starts from the narrowest index the filters allow (workflow,
        outcome, has_errors, then all) and checks the other filters on the way.
        """
        if workflow is not None:
            index = self.key(HISTORY_BY_WORKFLOW, workflow)
        elif outcome is not None:
            index = self.key(HISTORY_BY_OUTCOME, outcome)
        elif has_errors is not None:
            index = self.key(HISTORY_BY_ERRORS, "1" if has_errors else "0")
        else:
            index = self.key(HISTORY_ENDED)
        records = await self.script(
            "history",
            [index, self.key(HISTORY), self.key(HISTORY_META)],
            [
                "-inf" if since is None else _seconds(since.timestamp()),
                workflow or "",
                outcome or "",
                "" if has_errors is None else ("1" if has_errors else "0"),
                limit,
            ],
        )
        return [orjson.loads(record) for record in records]

    async def finished_task(self, task_id: str) -> dict[str, Any] | None:
        """Return one finished task, or None."""
        record = await self.call(lambda: self._client.hget(self.key(HISTORY), task_id))
        return None if record is None else orjson.loads(record)

    # ------------------------------------------------------------ configs, subscribers

    async def save_config(self, config: Config, *, if_revision: str | None = None) -> None:
        """Store a config (replacing one with the same id).

        With ``if_revision``, only if the stored config is at that revision,
        checked in the same step as the write, so that two replicas editing
        one config cannot both succeed.

        Raises:
            ConfigConflict: the stored revision is not ``if_revision``.
        """
        value = orjson.dumps({"revision": config.revision, "data": config.data})
        await self._change_config(config.id, value, if_revision, written=config.revision)

    async def delete_config(self, config_id: str, *, if_revision: str | None = None) -> None:
        """Forget a config (with ``if_revision``: only if at that revision, as for saving).

        Raises:
            ConfigConflict: the stored revision is not ``if_revision``.
        """
        await self._change_config(config_id, b"", if_revision)

    async def _change_config(
        self, config_id: str, value: bytes, if_revision: str | None, *, written: str | None = None
    ) -> None:
        if if_revision == "":
            raise ValueError("if_revision must not be empty")
        reply = await self.script(
            "config", [self.key(CONFIGS)], [config_id, if_revision or "", value]
        )
        if reply[0] != 1:
            actual = None if reply[1] is None else _text(reply[1])
            if actual is None or actual != written:  # equal: sent again after no answer
                raise ConfigConflict(config_id, str(if_revision), actual)

    async def load_config_models(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return the stored config kinds and config validation settings."""

        async def read() -> tuple[list[bytes], list[bytes]]:
            async with self._client.pipeline(transaction=True) as pipeline:
                kinds = pipeline.hvals(self.key(CONFIG_KINDS))
                validations = pipeline.hvals(self.key(CONFIG_VALIDATIONS))
            return list(await kinds), list(await validations)

        kinds, validations = await self.call(read)
        return [orjson.loads(k) for k in kinds], [orjson.loads(v) for v in validations]

    async def save_config_kinds(self, kinds: Iterable[Mapping[str, Any]]) -> None:
        """Store config kinds (replacing those with the same fqn)."""
        fields = {kind["fqn"]: orjson.dumps(kind) for kind in kinds}
        if fields:
            await self.call(lambda: self._client.hset(self.key(CONFIG_KINDS), fields))

    async def save_config_validation(self, validation: Mapping[str, Any]) -> None:
        """Store a config's validation setting (replacing the one with the same id)."""
        fields = {validation["id"]: orjson.dumps(validation)}
        await self.call(lambda: self._client.hset(self.key(CONFIG_VALIDATIONS), fields))

    async def delete_config_validation(self, config_id: str) -> None:
        """Forget a config's validation setting."""
        await self.call(lambda: self._client.hdel(self.key(CONFIG_VALIDATIONS), [config_id]))

    async def save_subscriber(
        self, subscriber_id: str, subscriptions: list[dict[str, Any]]
    ) -> None:
        """Store all of a subscriber's subscriptions (an empty list keeps the subscriber)."""
        await self._save_subscriptions(subscriber_id, subscriptions, replace=True)

    async def save_subscription(self, subscriber_id: str, subscription: dict[str, Any]) -> None:
        """Store one subscription (replacing one of the same message type), creating the
        subscriber if needed; the others stay as they are."""
        await self._save_subscriptions(subscriber_id, [subscription], replace=False)

    async def _save_subscriptions(
        self, subscriber_id: str, subscriptions: list[dict[str, Any]], *, replace: bool
    ) -> None:
        args: list[Any] = [subscriber_id, "1" if replace else "0"]
        for subscription in subscriptions:
            args.append(subscription["message_type"])
            args.append(
                orjson.dumps(
                    {
                        "wait_for_completion": bool(subscription["wait_for_completion"]),
                        "timeout": subscription["timeout"],
                    }
                )
            )
        await self.script(
            "subscriptions",
            [self.key(SUBSCRIBERS), self.key(SUBSCRIPTIONS, subscriber_id), self.key(ORDER)],
            args,
        )

    async def delete_subscription(self, subscriber_id: str, message_type: str) -> None:
        """Forget one subscription; the subscriber stays."""
        await self.call(
            lambda: self._client.hdel(self.key(SUBSCRIPTIONS, subscriber_id), [message_type])
        )

    async def delete_subscriber(self, subscriber_id: str) -> None:
        """Forget a subscriber and its subscriptions."""

        async def delete() -> None:
            async with self._client.pipeline(transaction=True) as pipeline:
                pipeline.delete([self.key(SUBSCRIPTIONS, subscriber_id)])
                pipeline.zrem(self.key(SUBSCRIBERS), [subscriber_id])

        await self.call(delete)

    # ------------------------------------------------------------ tasks

    async def commit(
        self,
        writes: Sequence[TaskWrite],
        *,
        owner: str,
        fence: int,
        messages: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Apply a group of task writes as one unit, in one round trip (one Lua script).

        Each :class:`SaveTask` replaces a running task's state (a new task
        becomes the lease ``owner``'s); each :class:`FinishTask` moves a task
        to the history. ``messages`` (stream key, body) are appended to their
        streams in the same step: the outbox, published exactly when the
        state that sends them is committed.

        A task that is not running but was filed in the history under another
        lease has ended there (another replica finished it after taking it
        over): writes to it are refused.

        A task filed leaves its workflow's runs (see :meth:`admit`) and its
        stop request; when no active run of the workflow is left, its queued
        run becomes active in the same step, and the replica holding it is
        told to start it (a ``start`` entry in its ANSWERS stream).

        Raises:
            LeaseLost: ``owner`` is not held with the token ``fence`` (it
                expired, was released, or was acquired again), or a task is
                held under another lease or has ended; nothing was written.
        """
        args: list[Any] = [
            fence,
            owner,
            self.key(HISTORY_BY_WORKFLOW),
            self.key(HISTORY_BY_OUTCOME),
            self.key(HISTORY_BY_ERRORS),
            len(writes),
            len(messages),
            self.key(WORKFLOW_RUNS),
            self.key(ANSWERS),
        ]
        for write in writes:
            if isinstance(write, SaveTask):
                args += ("S", write.task_id, write.record)
            else:
                assert isinstance(write, FinishTask)
                args += (
                    "F",
                    write.task_id,
                    write.workflow,
                    write.outcome,
                    _seconds(write.ended_at),
                    "1" if write.has_errors else "0",
                    write.record,
                )
        for stream, body in messages:
            args += (stream, body)
        reply = await self.commit_script(
            [
                self.key(LEASE, owner),
                self.key(RUNNING),
                self.key(TASK_LEASE),
                self.key(LEASE_TASKS, owner),
                self.key(HISTORY),
                self.key(HISTORY_META),
                self.key(HISTORY_ORDER),
                self.key(HISTORY_ENDED),
                self.key(TASK_IDS),
                self.key(STOPS),
                self.key(INTERESTS_VERSION),
            ],
            args,
        )
        if reply[0] != 1:
            raise LeaseLost(f"commit refused, nothing written: {_text(reply[1])}")

    async def prune(self, before: datetime, *, batch: int = 500) -> int:
        """Delete finished tasks that ended before ``before`` (and their logs); return how many.

        Deletes ``batch`` tasks per script, so that Redis serves others in between.
        """
        total = 0
        while True:
            count: int = await self.script(
                "prune",
                [
                    self.key(HISTORY_ENDED),
                    self.key(HISTORY),
                    self.key(HISTORY_META),
                    self.key(TASK_IDS),
                ],
                [
                    _seconds(before.timestamp()),
                    self.key(HISTORY_BY_WORKFLOW),
                    self.key(HISTORY_BY_OUTCOME),
                    self.key(HISTORY_BY_ERRORS),
                    batch,
                    self.key(TASK_LOG),
                ],
            )
            total += count
            if count < batch:
                return total

    async def task_ids(self, prefix: str, *, limit: int) -> list[str]:
        """Return up to ``limit`` ids of running or finished tasks that start with ``prefix``.

        They come in the order of their bytes, running and finished mixed (the
        SQLite store lists running tasks first).
        """
        low, high = b"-", b"+"
        if prefix:
            low, high = b"[" + prefix.encode(), b"(" + prefix.encode() + b"\xff"
        ids = await self.call(
            lambda: self._client.zrange(
                self.key(TASK_IDS), low, high, sortby=PureToken.BYLEX, offset=0, count=limit
            )
        )
        return [_text(task_id) for task_id in ids]

    async def add_log_entry(self, task_id: str, entry: bytes, *, keep: int) -> None:
        """Append an entry (JSON) to a task's log, keeping only its latest ``keep`` entries."""

        async def append() -> None:
            async with self._client.pipeline(transaction=True) as pipeline:
                pipeline.rpush(self.key(TASK_LOG, task_id), [entry])
                pipeline.ltrim(self.key(TASK_LOG, task_id), -keep, -1)

        await self.call(append)

    async def task_log(self, task_id: str) -> list[dict[str, Any]]:
        """Return a task's log entries, oldest first."""
        entries = await self.call(lambda: self._client.lrange(self.key(TASK_LOG, task_id), 0, -1))
        return [orjson.loads(entry) for entry in entries]

    async def save_definition(self, definition_id: str, record: bytes) -> None:
        """Store a run-time definition (or a change to a built-in one), as JSON."""
        fields = {definition_id: record}
        await self.call(lambda: self._client.hset(self.key(DEFINITIONS), fields))

    async def delete_definition(self, definition_id: str) -> None:
        """Forget a run-time definition."""
        await self.call(lambda: self._client.hdel(self.key(DEFINITIONS), [definition_id]))

    # ------------------------------------------------------------ schedules

    async def save_schedule_mark(self, key: tuple[str, str, str], moment: datetime) -> None:
        """Store the last time a schedule handled (workflow, cron, time zone)."""
        field = orjson.dumps(list(key))
        value = _seconds(moment.timestamp())
        await self.call(lambda: self._client.hset(self.key(SCHEDULE_MARKS), {field: value}))


class RedisStreams:
    """The streams between replicas: append, read in a group or follow, acknowledge, trim.

    Who writes and reads each stream (see the key names at the top):

    - ``ACTIONS`` + subscriber: the replica driving a task appends the action
      once its state is committed (``ActionRelay``); the replica holding the
      subscriber's WebSocket reads it in the group ``subscriber`` as consumer
      ``<its name>``, and acknowledges it once passed on to the listener.
    - ``ANSWERS`` + lease: the replica that received an answer appends it with
      :meth:`send_answer` (and the stop, admission and commit scripts append
      stops and starts); the lease's holder reads it in the group ``driver``,
      and the replica that adopts its tasks once it expired takes what is left
      there (owed to the holder, or never read).
    - ``EVENTS``: the replica that emits an event appends it when another
      replica wants its type (:meth:`publish_events`, checking ``INTERESTS``);
      every replica :meth:`follow`\\ s it from the last id it saw.

    Reads in a group never lose an entry: an entry read stays owed to its
    reader until acknowledged, and :meth:`owed` hands it back after a
    reconnect (the reader's own) or to another reader once it was idle long
    enough (XAUTOCLAIM). Reads without a group continue from the id the
    caller last saw, never from ``$``, so that nothing appended between two
    reads is skipped.
    """

    def __init__(self, store: RedisConnection) -> None:
        self._store = store
        self._client = store._client

    @property
    def store(self) -> RedisConnection:
        """The connection the streams use."""
        return self._store

    def action_stream(self, subscriber_id: str) -> str:
        """Return the stream of actions owed to a subscriber."""
        return self._store.key(ACTIONS, subscriber_id)

    def answer_stream(self, lease: str) -> str:
        """Return the stream of answers to the tasks held under ``lease``."""
        return self._store.key(ANSWERS, lease)

    def event_stream(self) -> str:
        """Return the stream of events for ``/events`` listeners."""
        return self._store.key(EVENTS)

    async def append(self, stream: str, body: bytes, *, max_length: int | None = None) -> str:
        """Append ``body`` to ``stream``; return its id.

        ``max_length`` keeps about that many entries (for streams read
        without a group, such as events); by default the stream is trimmed
        only by :meth:`trim`.
        """
        entry_id = await self._store.call(
            lambda: self._client.xadd(
                stream,
                {BODY: body},
                trim_strategy=None if max_length is None else PureToken.MAXLEN,
                threshold=max_length,
                trim_operator=None if max_length is None else PureToken.APPROXIMATELY,
            )
        )
        assert entry_id is not None
        return _text(entry_id)

    async def publish_events(
        self,
        bodies: Sequence[bytes],
        *,
        known: int,
        replica: str,
        interest: bytes | None = None,
        max_length: int,
        run: str = "",
        batch: int = 0,
    ) -> tuple[int, dict[str, bytes] | None]:
        """Append ``bodies`` to the events stream, if the replicas' interest is still the one
        the caller filtered them with (the version ``known``); all or nothing, in one step.

        With ``interest``, ``replica``'s own interest is stored first (see ``INTERESTS``).
        Returns the version now and None when appended, or the version and every live
        replica's interest (name -> stored value) when ``known`` is out of date: nothing
        was appended nor stored then, and the caller filters again and retries.

        ``run`` and ``batch``: the caller's run (a random id) and the number of this
        batch in it (growing). A batch sent again because its answer was lost (late, or
        the connection broke) is appended once: the call finds it appended already.
        Without ``run`` nothing is checked.
        """
        store = self._store
        asked = store.ask_interests()
        reply = await store.script(
            "publish events",
            [
                store.key(INTERESTS_VERSION),
                store.key(INTERESTS),
                store.key(EVENTS),
                store.key(BATCHES),
            ],
            [
                str(known),
                replica,
                interest or b"",
                max_length,
                store.key(LEASE),
                run,
                batch,
                *bodies,
            ],
        )
        store.saw_interests(asked, reply[1])
        if reply[0] == 1:
            return int(reply[1]), None
        return _interests_of(reply)

    async def interests(self) -> tuple[int, dict[str, bytes]]:
        """Return the version of the replicas' interest and each live replica's (see
        ``INTERESTS``: those whose lease expired or was given up are left out)."""
        store = self._store
        asked = store.ask_interests()
        reply = await store.script(
            "interests", [store.key(INTERESTS_VERSION), store.key(INTERESTS)], [store.key(LEASE)]
        )
        store.saw_interests(asked, reply[1])
        version, interests = _interests_of(reply)
        assert interests is not None
        return version, interests

    async def claim(
        self, stream: str, group: str, owner: str, consumer: str, *, count: int = 1000
    ) -> list[tuple[str, bytes]]:
        """Return the entries read by ``owner`` in ``group`` and not acknowledged; they become
        ``consumer``'s (the owner is gone). Other readers' entries stay theirs."""
        entries: list[tuple[str, bytes]] = []
        while True:
            claimed = await self._store.script("claim", [stream], [group, owner, consumer, count])
            for entry_id, fields in claimed:
                values = dict(zip(fields[::2], fields[1::2], strict=True))
                if BODY in values:
                    entries.append((_text(entry_id), bytes(values[BODY])))
            if len(claimed) < count:
                return entries

    async def left(self, lease: str) -> list[str]:
        """Return the leases whose answer streams may hold answers ``lease``'s holder took
        over with their tasks and has not acknowledged (see :meth:`RedisStore.adopt`)."""
        names = await self._store.call(lambda: self._client.smembers(self._store.key(LEFT, lease)))
        return sorted(_text(name) for name in names)

    async def left_done(self, lease: str, names: Sequence[str]) -> None:
        """Record that ``lease``'s holder acknowledged what it took from the answer streams
        of the leases ``names``."""
        if names:
            await self._store.call(
                lambda: self._client.srem(self._store.key(LEFT, lease), list(names))
            )

    async def last_id(self, stream: str) -> str:
        """Return the id of the last entry of ``stream`` (``0-0`` when it has none), for
        :meth:`follow` to read what comes after it."""
        last = await self._store.call(lambda: self._client.xrevrange(stream, "+", "-", count=1))
        return _text(last[0].identifier) if last else "0-0"

    async def send_answer(self, task_id: str, body: bytes) -> str | None:
        """Append an answer to the stream of the lease ``task_id`` is held under.

        One script: the lease is looked up and the answer appended at once,
        so an answer cannot land in a lease's stream after its tasks were
        adopted. None: the task is not running.
        """
        entry_id = await self._store.script(
            "answer", [self._store.key(TASK_LEASE)], [task_id, self._store.key(ANSWERS), body]
        )
        return None if entry_id is None else _text(entry_id)

    async def _in_group(
        self,
        stream: str,
        group: str,
        operation: Callable[[], Awaitable[T]],
        *,
        waits: float = 0.0,
    ) -> T:
        """Run ``operation`` (``waits``: see :meth:`RedisConnection.call`); where the group
        does not exist yet, create it (reading the stream from its start) and run it again."""
        try:
            return await self._store.call(operation, waits=waits)
        except coredis.exceptions.StreamDuplicateConsumerGroupError:
            raise
        except coredis.exceptions.StreamConsumerGroupError:  # NOGROUP
            pass
        # another reader may have created it meanwhile
        with contextlib.suppress(coredis.exceptions.StreamDuplicateConsumerGroupError):
            await self._store.call(
                lambda: self._client.xgroup_create(stream, group, "0-0", mkstream=True)
            )
        return await self._store.call(operation, waits=waits)

    async def read(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 100,
        block: timedelta | None = None,
    ) -> list[tuple[str, bytes]]:
        """Read entries no reader of ``group`` was given yet; they become owed to ``consumer``.

        The group is created (reading from the stream's start) when it does not
        exist yet. ``block`` waits that long for an entry when there is none.
        """
        reply = await self._in_group(
            stream,
            group,
            lambda: self._client.xreadgroup(
                group,
                consumer,
                {stream: ">"},
                count=count,
                block=None if block is None else _milliseconds(block),
            ),
            waits=0.0 if block is None else block.total_seconds(),
        )
        return _entries(reply)

    async def owed(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        idle: timedelta | None = None,
        count: int = 100,
    ) -> list[tuple[str, bytes]]:
        """Return entries read but not acknowledged: ``consumer``'s own, then (with ``idle``)
        those of other readers idle that long, which become ``consumer``'s (XAUTOCLAIM)."""
        reply = await self._in_group(
            stream,
            group,
            lambda: self._client.xreadgroup(group, consumer, {stream: "0-0"}, count=count),
        )
        entries = _entries(reply)
        if idle is None:
            return entries
        start = "0-0"
        while len(entries) < count:
            claimed = await self._store.call(
                functools.partial(
                    self._client.xautoclaim,
                    stream,
                    group,
                    consumer,
                    _milliseconds(idle),
                    start,
                    count=count,
                )
            )
            start = _text(claimed[0])
            entries += [
                (_text(entry.identifier), bytes(entry.field_values[BODY]))
                for entry in claimed[1]
                if entry is not None
            ]
            if start == "0-0":
                break
        return entries

    async def ack(self, stream: str, group: str, entry_ids: Sequence[str]) -> int:
        """Acknowledge entries: they are no longer owed; return how many were."""
        if not entry_ids:
            return 0
        return await self._store.call(lambda: self._client.xack(stream, group, list(entry_ids)))

    async def follow(
        self, stream: str, after: str = "0-0", *, count: int = 100, block: timedelta | None = None
    ) -> list[tuple[str, bytes]]:
        """Read entries after the id ``after`` (the last one the caller saw), without a group."""
        reply = await self._store.call(
            lambda: self._client.xread(
                {stream: after}, count=count, block=None if block is None else _milliseconds(block)
            ),
            waits=0.0 if block is None else block.total_seconds(),
        )
        return _entries(reply)

    async def trim(self, stream: str) -> int:
        """Delete the entries every group of ``stream`` has acknowledged; return how many."""
        try:
            groups = await self._store.call(lambda: self._client.xinfo_groups(stream))
        except coredis.exceptions.ResponseError as error:
            if "no such key" in str(error):
                return 0
            raise
        if not groups:
            return 0
        floor: tuple[int, int] | None = None
        for group in groups:
            name = group[b"name"]
            assert isinstance(name, bytes)
            pending = await self._store.call(functools.partial(self._client.xpending, stream, name))
            assert isinstance(pending, StreamPending)
            if pending.pending and pending.minimum_identifier is not None:
                keep = _entry_id(pending.minimum_identifier)
            else:
                last = _entry_id(group[b"last-delivered-id"])
                keep = (last[0], last[1] + 1)
            floor = keep if floor is None or keep < floor else floor
        assert floor is not None
        trimmed: int = await self._store.call(
            lambda: self._client.xtrim(
                stream,
                PureToken.MINID,
                f"{floor[0]}-{floor[1]}",  # type: ignore[arg-type]
            )
        )
        return trimmed


def _entry_id(value: Any) -> tuple[int, int]:
    milliseconds, _, sequence = _text(value).partition("-")
    return int(milliseconds), int(sequence or 0)


def _interests_of(reply: Any) -> tuple[int, dict[str, bytes]]:
    return int(reply[1]), {
        _text(reply[index]): bytes(reply[index + 1]) for index in range(2, len(reply), 2)
    }


def _entries(reply: Any) -> list[tuple[str, bytes]]:
    if not reply:
        return []
    entries: list[tuple[str, bytes]] = []
    for stream_entries in reply.values():
        for entry in stream_entries:
            if entry is not None and entry.field_values:
                entries.append((_text(entry.identifier), bytes(entry.field_values[BODY])))
    return entries


def open_redis_store(
    url: str,
    *,
    prefix: str = "phasebus:",
    retention: timedelta = DEFAULT_RETENTION,
    answer_timeout: float = ANSWER_TIMEOUT,
) -> RedisStore:
    """Return a :class:`RedisStore` for ``url``, to be entered with ``async with``
    (``answer_timeout``: see :data:`ANSWER_TIMEOUT`)."""
    return RedisStore(url, prefix=prefix, retention=retention, answer_timeout=answer_timeout)


if TYPE_CHECKING:
    # RedisStore is an AsyncStore (checked by mypy)
    _conforms: type[AsyncStore] = RedisStore
