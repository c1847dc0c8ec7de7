-- wrk script for slurm-jwt-bridge benchmarks: replays requests from a file, optionally at a
-- constant rate, and prints one "BENCH {json}" line at the end.
--
--   BENCH_REQUESTS=FILE BENCH_RATE=0 BENCH_MODE=cycle BENCH_THREADS=1 \
--       wrk -t1 -c8 -d10s -s bench/lua/replay.lua URL
--
-- BENCH_REQUESTS: one request per line, fields separated by a tab:
--     METHOD <tab> PATH <tab> HEADERS <tab> BODY
--   HEADERS are "Name: value" pairs joined by the byte 0x01 ("" for none).
-- BENCH_RATE: total requests per second over all threads; 0 = as fast as the connections
--   allow (closed loop). With a rate each thread keeps its own schedule of send times and a
--   request waits for its slot (wrk's delay()), so the server sees a constant rate as long as
--   it keeps up. Latency is measured from the actual send, as plain wrk does (no
--   coordinated-omission correction as in wrk2), which is why we load at most 90 % of capacity.
-- BENCH_MODE: "cycle" (each thread cycles through all requests from its own offset) or
--   "distinct" (thread i of n takes lines i, i+n, ...; a thread that runs out wraps, counted).
-- BENCH_START: in "distinct" mode, the number of lines an earlier run already sent (0 by
--   default): each thread starts past them, so no round resends a request of the one before.

local path = os.getenv("BENCH_REQUESTS")
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local mode = os.getenv("BENCH_MODE") or "cycle"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local start = tonumber(os.getenv("BENCH_START") or "0")

local raw = {}
for line in io.lines(path) do
  if #line > 0 then raw[#raw + 1] = line end
end

local function split(s, sep)
  local out = {}
  local start = 1
  while true do
    local i = string.find(s, sep, start, true)
    if not i then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

local function format(line)
  local f = split(line, "\t")
  local headers = {}
  if f[3] and #f[3] > 0 then
    for _, h in ipairs(split(f[3], "\1")) do
      local c = string.find(h, ":", 1, true)
      headers[string.sub(h, 1, c - 1)] = string.sub(h, c + 2)
    end
  end
  local body = f[4]
  if body == "" then body = nil end
  return wrk.format(f[1], f[2], headers, body)
end

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  threads[#threads + 1] = thread
end

local reqs = nil
local n = 0
local pos = 0
wraps = 0

function init(args)
  reqs = {}
  for i, line in ipairs(raw) do
    if mode ~= "distinct" or ((i - 1) % nthreads) == id then
      n = n + 1
      reqs[n] = format(line)
    end
  end
  raw = nil
  if n == 0 then error("no requests for thread " .. id) end
  if mode ~= "distinct" then
    pos = (id * 7919) % n
  else
    pos = math.floor(start / nthreads) % n
  end
end

function request()
  if reqs == nil then
    -- the main Lua state (wrk checks the script with one call), never sent
    return format(raw[1])
  end
  pos = pos + 1
  if pos > n then
    pos = 1
    wraps = wraps + 1
  end
  return reqs[pos]
end

if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local interval = 1000.0 * nthreads / rate
  local next_at = nil

  -- Defined only when pacing: wrk pays for delay() on every request once it exists.
  function delay()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    local t = tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
    if next_at == nil or next_at < t - 1000 then next_at = t end -- never burst > 1 s of backlog
    next_at = next_at + interval
    local d = next_at - t
    if d < 1 then return 0 end
    return math.floor(d)
  end
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + (t:get("wraps") or 0) end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50":%d,"p90":%d,"p95":%d,"p99":%d,' ..
    '"max":%d,"mean":%.1f,"wraps":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean, w))
end
