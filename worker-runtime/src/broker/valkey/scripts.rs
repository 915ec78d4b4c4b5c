//! The Lua scripts. Each runs atomically on the server, which is why they exist: a mover killed
//! half-way, or a consumer group created between a read and a write, cannot leave a message lost
//! or duplicated. `redis::Script` sends `EVALSHA` and falls back to `EVAL` after a server restart
//! flushed the script cache.

use std::sync::LazyLock;

use redis::Script;

/// Moves due delayed messages into the stream: `ZRANGEBYSCORE … LIMIT`, `XADD`, `ZREM`, all in one
/// script. KEYS: delayed set, stream. ARGV: now (ms), how many at most, unique prefix length.
/// Returns how many it moved. A member it cannot parse is appended whole as the payload, so that
/// it is dead-lettered rather than silently dropped.
pub(super) static MOVE_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function fields_of(member, start)
  local fields = {}
  local pos = start
  local size = #member
  while pos <= size do
    local colon = string.find(member, ':', pos, true)
    if not colon then return nil end
    local len = tonumber(string.sub(member, pos, colon - 1))
    if not len or colon + len > size then return nil end
    fields[#fields + 1] = string.sub(member, colon + 1, colon + len)
    pos = colon + len + 1
  end
  if #fields == 0 or #fields % 2 == 1 then return nil end
  return fields
end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local fields = fields_of(member, tonumber(ARGV[3]) + 1) or { 'payload', member }
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"#,
    )
});

/// Renews this consumer's lease on entries it holds: resets their idle time (`XCLAIM … JUSTID`,
/// which leaves the delivery counter alone) only where this consumer still owns them, so that a
/// live but slow consumer is never taken for a dead one. KEYS: stream. ARGV: group, consumer,
/// ids…. Returns the ids it no longer owns (acked elsewhere, trimmed, or claimed by another).
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] ~= nil and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"#,
    )
});

/// Gives back every entry this consumer holds when it closes: marks them idle for the visibility
/// timeout (`XCLAIM … IDLE`), so that any live consumer's next sweep claims them, and removes the
/// consumer from the group if it holds nothing. KEYS: stream. ARGV: group, consumer, idle (ms).
/// Returns how many it gave back.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local released = 0
local start = '-'
while true do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], start, '+', 100, ARGV[2])
  if #pending == 0 then break end
  local claim = { 'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0 }
  for _, entry in ipairs(pending) do claim[#claim + 1] = entry[1] end
  claim[#claim + 1] = 'IDLE'
  claim[#claim + 1] = ARGV[3]
  claim[#claim + 1] = 'JUSTID'
  redis.call(unpack(claim))
  released = released + #pending
  start = '(' .. pending[#pending][1]
end
if released == 0 then redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) end
return released
"#,
    )
});

/// Trims the stream below what every consumer group still needs: for each group the oldest
/// pending entry, or, with nothing pending, the entry after its last delivered one. A stream
/// without groups is left alone (its messages wait for a first subscription). KEYS: stream.
/// Returns how many entries it removed.
pub(super) static TRIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local min_ms, min_seq
for _, group in ipairs(groups) do
  local name, last
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] end
    if group[i] == 'last-delivered-id' then last = group[i + 1] end
  end
  local summary = redis.call('XPENDING', KEYS[1], name)
  local ms, seq
  if summary[1] > 0 then
    ms, seq = parse(summary[2])
  else
    ms, seq = parse(last)
    seq = seq + 1
  end
  if min_ms == nil or ms < min_ms or (ms == min_ms and seq < min_seq) then
    min_ms, min_seq = ms, seq
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f-%.0f', min_ms, min_seq))
"#,
    )
});

/// Takes or keeps the ownership lock of a failover or exclusive subscription: succeeds when the
/// lock is free, already this token's, or held by an earlier run of the same consumer (a worker
/// restarted under its name), and then (re)sets it with the TTL. KEYS: lock. ARGV: token, TTL
/// (ms), consumer name; a token is `<32 hex>@<consumer>`. Returns 1, or the holder's token.
pub(super) static ACQUIRE_OWNERSHIP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and string.sub(holder, 34) ~= ARGV[3] then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#,
    )
});

/// Drops the ownership lock if this token holds it. KEYS: lock. ARGV: token.
pub(super) static RELEASE_OWNERSHIP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Takes up to ARGV[1] items from the consuming end of a list into a processing list, oldest
/// first: `LMOVE … RIGHT LEFT` in a loop. KEYS: list, processing list. Returns the items.
pub(super) static LIST_TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local taken = {}
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not item then break end
  taken[i] = item
end
return taken
"#,
    )
});

/// Moves everything in a processing list back to the consuming end of its list, so the oldest
/// taken item is taken again first. KEYS: processing list, list. Returns how many.
pub(super) static LIST_RECOVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
return moved
"#,
    )
});

/// Finds the items of a processing list its reader does not know it holds: those a take moved
/// whose reply never reached the reader (the connection or the server died after the move, or the
/// reply came too late). KEYS: processing list. ARGV: the most to return, then every item the
/// reader holds (a multiset: an item held twice is listed twice). Returns the others, oldest first,
/// without moving anything, so a lost reply of this script loses nothing either.
pub(super) static LIST_ORPHANS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = {}
for i = 2, #ARGV do
  held[ARGV[i]] = (held[ARGV[i]] or 0) + 1
end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local orphans = {}
local most = tonumber(ARGV[1])
for i = #items, 1, -1 do
  if #orphans >= most then break end
  local count = held[items[i]]
  if count and count > 0 then
    held[items[i]] = count - 1
  else
    orphans[#orphans + 1] = items[i]
  end
end
return orphans
"#,
    )
});
