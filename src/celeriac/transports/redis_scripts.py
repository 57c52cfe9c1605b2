"""Lua scripts of the Redis transport (shared by the sync and async drivers).

Every script names all the keys it touches in ``KEYS`` (see "Redis Cluster plan" in
``celeriac.transports.redis``). Redis runs a script atomically, but does not roll back the
writes a failing script already made, so no script here can fail half-way on bad data: message
JSON is decoded under ``pcall``.
"""

from __future__ import annotations

import hashlib

#: Move due delayed messages to their lists, then pop up to ``limit`` messages and record each
#: in ``unacked``/``unacked_index``/``held``/``deliveries`` in the same atomic step.
#: KEYS: unacked, unacked_index, deliveries, dead_letters, dead_index, then per queue:
#:       delayed, held, list for each priority step.
#: ARGV: limit, now ("": the server's TIME), nqueues, nsteps, delayed batch, lease id, queue
#:       names...
#: Returns {next delayed due time or "-1", then qi, si, envelope, count, tag per message}; an
#: entry that is no kombu envelope is dead-lettered here and reported as qi, si, dead-letter id,
#: 0, "" (so the driver can log it).
TAKE = r"""
local unacked, index, deliveries, dead, dead_index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local limit, now = tonumber(ARGV[1]), ARGV[2]
if now == '' then
  -- sent behind a blocking wait: the client's clock at send time would be stale, use the server's
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local nq, ns, batch, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local stride = 2 + ns
local function base(q) return 5 + (q - 1) * stride end

local next_due = nil
for q = 1, nq do
  local delayed = KEYS[base(q) + 1]
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, batch)
  for _, member in ipairs(due) do
    local bar = string.find(member, '|', 1, true) or 0
    local s = tonumber(string.sub(member, 1, bar - 1)) or 0
    if s < 0 or s >= ns then s = 0 end
    redis.call('LPUSH', KEYS[base(q) + 3 + s], string.sub(member, bar + 1))
    redis.call('ZREM', delayed, member)
  end
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if first[2] and (next_due == nil or tonumber(first[2]) < tonumber(next_due)) then
    next_due = first[2]
  end
end

local function info(raw, queue)
  local ok, msg = pcall(cjson.decode, raw)
  if not ok or type(msg) ~= 'table' or type(msg['properties']) ~= 'table' then return nil end
  local props = msg['properties']
  local tag = props['delivery_tag']
  if type(tag) ~= 'string' or tag == '' then return nil end
  local exchange, rk = '', queue
  local di = props['delivery_info']
  if type(di) == 'table' then
    if type(di['exchange']) == 'string' then exchange = di['exchange'] end
    if type(di['routing_key']) == 'string' then rk = di['routing_key'] end
  end
  return tag, exchange, rk
end

local out = {next_due or '-1'}
local taken, bad = 0, 0
for s = 1, ns do
  for q = 1, nq do
    local list, held, queue = KEYS[base(q) + 2 + s], KEYS[base(q) + 2], ARGV[6 + q]
    while taken < limit do
      local raws = redis.call('RPOP', list, limit - taken)
      if not raws then break end
      for _, raw in ipairs(raws) do
        local tag, exchange, rk = info(raw, queue)
        if tag then
          redis.call('HSET', unacked, tag,
            '[' .. raw .. ', ' .. cjson.encode(exchange) .. ', ' .. cjson.encode(rk) .. ']')
          redis.call('ZADD', index, now, tag)
          redis.call('HSET', held, tag, lease)
          local count = redis.call('HINCRBY', deliveries, tag, 1)
          table.insert(out, q); table.insert(out, s); table.insert(out, raw)
          table.insert(out, count); table.insert(out, tag)
          taken = taken + 1
        else
          bad = bad + 1
          local id = 'invalid-' .. redis.sha1hex(raw .. now .. lease .. bad)
          redis.call('HSET', dead, id, cjson.encode({id = id, queue = queue, step = s - 1,
            reason = 'not a kombu envelope (no JSON or no properties.delivery_tag)',
            failed_at = tonumber(now), delivery_count = 1, envelope = raw}))
          redis.call('ZADD', dead_index, now, id)
          table.insert(out, q); table.insert(out, s); table.insert(out, id)
          table.insert(out, 0); table.insert(out, '')
        end
      end
    end
  end
end
return out
"""

#: Settle many held messages in one call: each is settled only if this lease still holds it
#: (else skipped: it was restored and may be held by someone else now).
#: KEYS: unacked, unacked_index, deliveries, dead_index, then the held and target keys the
#:       items point at (each named once).
#: ARGV: mode (ack|requeue|defer|dead), then per message: tag, lease, index of its held key in
#:       KEYS, and, except for ack, index of its target key, payload, score.
#: requeue: RPUSH payload to target (the next one out, as kombu's restore);
#: defer: ZADD target score payload; dead: HSET target tag payload + ZADD dead_index score tag.
#: Returns how many were settled.
RELEASE = r"""
local mode = ARGV[1]
local unacked, index, deliveries, dead_index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stride = 6
if mode == 'ack' then stride = 3 end
local restore = mode == 'requeue' or mode == 'defer'
local settled = 0
for i = 2, #ARGV, stride do
  local tag, held = ARGV[i], KEYS[tonumber(ARGV[i + 2])]
  if redis.call('HGET', held, tag) == ARGV[i + 1] then
    redis.call('HDEL', held, tag)
    if redis.call('HDEL', unacked, tag) == 1 then
      redis.call('ZREM', index, tag)
      -- requeue/defer give the attempt back; ack/dead forget the counter
      if not restore or redis.call('HINCRBY', deliveries, tag, -1) <= 0 then
        redis.call('HDEL', deliveries, tag)
      end
      if mode ~= 'ack' then
        local target, payload, score = KEYS[tonumber(ARGV[i + 3])], ARGV[i + 4], ARGV[i + 5]
        if mode == 'requeue' then
          redis.call('RPUSH', target, payload)
        elseif mode == 'defer' then
          redis.call('ZADD', target, score, payload)
        elseif mode == 'dead' then
          redis.call('HSET', target, tag, payload)
          redis.call('ZADD', dead_index, score, tag)
        end
      end
      settled = settled + 1
    end
  end
end
return settled
"""

#: Result writes, then acks, in one atomic step (the worker's ``celeriac.worker.joint``, when
#: the result store is this Redis): per written key ``SET key value [PX ms]`` and ``PUBLISH key
#: value`` (what the Redis result store's ``SET_PUBLISH`` does), then each message is acked as
#: ``RELEASE`` acks it (only while this lease holds it). A write that fails ends the script
#: before any ack.
#: KEYS: the written keys, then unacked, unacked_index, deliveries, then the held keys.
#: ARGV: number of written keys n, per written key its expiry in ms ("" = none) and value, then
#:       per group of messages with the same lease and held key: the lease, the index of the
#:       held key in KEYS, how many tags follow, the tags.
#: Returns how many messages were acked.
WRITE_ACK = r"""
local nw = tonumber(ARGV[1])
for i = 1, nw do
  local px, value = ARGV[2 * i], ARGV[2 * i + 1]
  if px == '' then
    redis.call('SET', KEYS[i], value)
  else
    redis.call('SET', KEYS[i], value, 'PX', px)
  end
  redis.call('PUBLISH', KEYS[i], value)
end
local unacked, index, deliveries = KEYS[nw + 1], KEYS[nw + 2], KEYS[nw + 3]
local settled = 0
local i = 2 * nw + 2
while i <= #ARGV do
  local lease, held, count = ARGV[i], KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2])
  for j = i + 3, i + 2 + count do
    local tag = ARGV[j]
    if redis.call('HGET', held, tag) == lease then
      redis.call('HDEL', held, tag)
      if redis.call('HDEL', unacked, tag) == 1 then
        redis.call('ZREM', index, tag)
        redis.call('HDEL', deliveries, tag)
        settled = settled + 1
      end
    end
  end
  i = i + 3 + count
end
return settled
"""

#: Renew leases: set the unacked_index score (kombu's delivery time) of each still-held tag to
#: now. KEYS: unacked_index, then the held keys (each named once).
#: ARGV: now, then per tag: tag, lease, index of its held key in KEYS. Returns how many.
RENEW = r"""
local renewed = 0
for i = 2, #ARGV, 3 do
  if redis.call('HGET', KEYS[tonumber(ARGV[i + 2])], ARGV[i]) == ARGV[i + 1] then
    renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[i])
  end
end
return renewed
"""

#: Restore one expired delivery (compare-and-swap on its unacked value and score).
#: KEYS: unacked, unacked_index, held, list. ARGV: tag, expected value, cutoff, payload.
RESTORE = r"""
local tag = ARGV[1]
local score = redis.call('ZSCORE', KEYS[2], tag)
if not score or tonumber(score) > tonumber(ARGV[3]) then return 0 end
local current = redis.call('HGET', KEYS[1], tag)
if not current then redis.call('ZREM', KEYS[2], tag); return 0 end
if current ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], tag)
redis.call('ZREM', KEYS[2], tag)
redis.call('HDEL', KEYS[3], tag)
redis.call('RPUSH', KEYS[4], ARGV[4])
return 1
"""

#: redis-py's lock release (compare-and-delete), as kombu uses for unacked_mutex.
UNLOCK = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Ready + delayed + held count of one queue; drops held entries whose unacked entry is gone
#: (restored by a Celery worker). KEYS: unacked, delayed, held, lists...
QSIZE = r"""
local n = redis.call('ZCARD', KEYS[2])
for i = 4, #KEYS do n = n + redis.call('LLEN', KEYS[i]) end
for _, tag in ipairs(redis.call('HKEYS', KEYS[3])) do
  if redis.call('HEXISTS', KEYS[1], tag) == 1 then n = n + 1
  else redis.call('HDEL', KEYS[3], tag) end
end
return n
"""

#: Remove ready and delayed messages of a queue. KEYS: delayed, lists... Returns the count.
PURGE = r"""
local n = 0
for i = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t == 'zset' then n = n + redis.call('ZCARD', KEYS[i])
  elseif t == 'list' then n = n + redis.call('LLEN', KEYS[i]) end
  redis.call('DEL', KEYS[i])
end
return n
"""

#: Put one dead letter back on its list. KEYS: dead_letters, dead_index, list. ARGV: id, payload.
UNBURY = r"""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
"""

SCRIPTS: dict[str, str] = {
    "take": TAKE,
    "release": RELEASE,
    "write_ack": WRITE_ACK,
    "renew": RENEW,
    "restore": RESTORE,
    "unlock": UNLOCK,
    "qsize": QSIZE,
    "purge": PURGE,
    "unbury": UNBURY,
}

#: script name -> SHA1 (what EVALSHA takes)
SHAS: dict[str, str] = {
    name: hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
    for name, text in SCRIPTS.items()
}
