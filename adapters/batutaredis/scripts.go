package batutaredis

import "github.com/redis/go-redis/v9"

// The Lua scripts keep every multi-step change of a message atomic, so a
// crash or a cut connection between steps can neither lose nor duplicate
// it. All keys a script touches share the stream's cluster slot.
//
// A delivery is identified by its entry ID, the consumer holding it and the
// entry's delivery count (the PEL's counter): the fence at the top of each
// settling script checks all three, so a handle whose delivery was taken
// over cannot settle the new owner's delivery.

// fence is the common prologue: ARGV[1] group, ARGV[2] consumer, ARGV[3]
// entry ID, ARGV[4] delivery count. It returns from the script -2 when the
// entry is not pending any more (settled: by another consumer that took it
// over, or by this very call, executed once already and retried by the
// client after a lost reply), and -1 when it is pending but held by another
// consumer or delivered again since.
const fence = `
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] == nil then return -2 end
if p[1][2] ~= ARGV[2] or tonumber(p[1][4]) ~= tonumber(ARGV[4]) then
  return -1
end
`

// ackScript: KEYS[1] stream; ARGV[5] "1" to XDEL. Returns 1, or the
// fence's -1 or -2.
var ackScript = redis.NewScript(fence + `
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if ARGV[5] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
return 1
`)

// ackManyScript acks several deliveries of one consumer, each fenced as
// ackScript is. KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3]
// "1" to XDEL, then pairs of entry ID and delivery count. Returns one result
// per pair: 1, -1 or -2. The entries that pass their fence are acked (and
// deleted) by one XACK and one XDEL for the whole batch: the server's cost
// of an ack is mostly the cost of a command call.
var ackManyScript = redis.NewScript(`
local out = {}
local ok = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] == nil then
    out[#out+1] = -2
  elseif p[1][2] ~= ARGV[2] or tonumber(p[1][4]) ~= tonumber(ARGV[i+1]) then
    out[#out+1] = -1
  else
    ok[#ok+1] = id
    out[#out+1] = 1
  end
end
if #ok > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ok))
  if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], unpack(ok)) end
end
return out
`)

// requeueScript: KEYS[1] stream, KEYS[2] delayed set; ARGV[5] attempts
// spent (written into the copy), ARGV[6] delay in ms, ARGV[7] MAXLEN (0:
// none), ARGV[8] "1" to XDEL the original. The copy gets "id" set (from the
// entry ID if the producer wrote none or an empty one: the message keeps
// its ID across nacks) and "attempts" replaced. Returns 0 (re-added now), 1
// (scheduled), 2 (the entry was trimmed: acked, nothing to re-add), or the
// fence's -1 or -2.
var requeueScript = redis.NewScript(fence + `
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if #e == 0 then return 2 end
if ARGV[8] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
local f = e[1][2]
local out = {}
local hasID = false
for i = 1, #f, 2 do
  if f[i] == 'id' and f[i+1] ~= '' then hasID = true end
  if f[i] ~= 'attempts' and not (f[i] == 'id' and f[i+1] == '') then
    out[#out+1] = f[i]
    out[#out+1] = f[i+1]
  end
end
if not hasID then
  out[#out+1] = 'id'
  out[#out+1] = ARGV[3]
end
out[#out+1] = 'attempts'
out[#out+1] = ARGV[5]
local delay = tonumber(ARGV[6])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  table.insert(out, 1, ARGV[3])
  redis.call('ZADD', KEYS[2], now + delay, cmsgpack.pack(out))
  return 1
end
local args = {'XADD', KEYS[1]}
if tonumber(ARGV[7]) > 0 then
  args[#args+1] = 'MAXLEN'
  args[#args+1] = '~'
  args[#args+1] = ARGV[7]
end
args[#args+1] = '*'
for i = 1, #out do args[#args+1] = out[i] end
redis.call(unpack(args))
return 0
`)

// promoteScript moves due delayed entries back into the stream. KEYS[1]
// stream, KEYS[2] delayed set; ARGV[1] how many at most, ARGV[2] MAXLEN (0:
// none). Returns {moved, ms until the next due entry or -1 if none}.
var promoteScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local f = {cmsgpack.unpack(m)}
  if type(f[1]) == 'table' then f = f[1] end
  local args = {'XADD', KEYS[1]}
  if tonumber(ARGV[2]) > 0 then
    args[#args+1] = 'MAXLEN'
    args[#args+1] = '~'
    args[#args+1] = ARGV[2]
  end
  args[#args+1] = '*'
  for i = 2, #f do args[#args+1] = f[i] end
  redis.call(unpack(args))
  redis.call('ZREM', KEYS[2], m)
end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] ~= nil then
  wait = math.max(0, tonumber(nxt[2]) - now)
end
return {#due, wait}
`)

// claimScript takes over up to ARGV[4] entries idle past the visibility
// timeout and reports their delivery counts. KEYS[1] stream; ARGV[1] group,
// ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] count. Returns {entries,
// counts}.
//
// It finds them with XPENDING ... IDLE, which scans the group's pending
// entries list from its oldest entry, rather than with XAUTOCLAIM: an
// XAUTOCLAIM cursor that chases a busy consumer's new deliveries never
// completes its scan, and XAUTOCLAIM does not return delivery counts
// anyway. The PEL holds only deliveries in flight (and those of dead
// consumers, which are what this looks for), so the scan is short. A
// pending entry whose stream entry is gone (trimmed by MAXLEN) is acked
// away: there is nothing left to deliver.
var claimScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
local entries = {}
local counts = {}
for _, e in ipairs(p) do
  local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], e[1])
  if type(c[1]) == 'table' and type(c[1][2]) == 'table' then
    entries[#entries+1] = c[1]
    counts[#counts+1] = tonumber(e[4]) + 1
  elseif #c == 0 or c[1] == false then
    redis.call('XACK', KEYS[1], ARGV[1], e[1])
  end
end
return {entries, counts}
`)

// extendScript resets the idle time of a held delivery without counting a
// delivery (XCLAIM JUSTID). Returns 1, or the fence's -1 or -2.
var extendScript = redis.NewScript(fence + `
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
`)

// extendManyScript resets the idle time of several held deliveries of one
// consumer, each fenced as extendScript is. KEYS[1] stream; ARGV[1] group,
// ARGV[2] consumer, then pairs of entry ID and delivery count. Returns one
// result per pair: 1, -1 or -2.
var extendManyScript = redis.NewScript(`
local out = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] == nil then
    out[#out+1] = -2
  elseif p[1][2] ~= ARGV[2] or tonumber(p[1][4]) ~= tonumber(ARGV[i+1]) then
    out[#out+1] = -1
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    out[#out+1] = 1
  end
end
return out
`)
