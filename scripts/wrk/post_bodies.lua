-- wrk script for scripts/bench_load.py: POST pre-encoded bodies in rotation, report one JSON line.
--
--   RESTAR_WRK_TOKEN=<key> wrk -t1 -c32 -d60s --timeout 60s --latency -s post_bodies.lua URL -- BODIES [EXPECT] [DELAY_MS]
--
-- BODIES is written by bench_load.py: records of "<byte length>\n<body bytes>", so a body may hold
-- any bytes (NUL, invalid UTF-8, newlines). Every request goes to URL's path with Content-Type
-- application/json and, when RESTAR_WRK_TOKEN is set, "Authorization: Bearer <token>" (read from
-- the environment so the key stays out of the process list). EXPECT, if given and not "-", is a
-- substring a 2xx body must contain to count as a valid answer. DELAY_MS paces each connection.
--
-- wrk's Lua cannot tell which connection a response belongs to, so one wrk process sends one kind
-- of body; bench_load.py runs good and hostile traffic as separate processes to count each exactly.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local requests_list = {}
local next_index = 0
local expect = nil
local delay_ms = 0

-- Per-thread counters, fetched with thread:get() in done().
statuses = {}
valid_2xx = 0
invalid_2xx = 0

local function read_bodies(path)
   local file = assert(io.open(path, "rb"), "cannot open bodies file " .. tostring(path))
   local data = file:read("*a")
   file:close()
   local bodies, pos = {}, 1
   while pos <= #data do
      local newline = data:find("\n", pos, true)
      assert(newline, "bodies file: record header without newline")
      local length = assert(tonumber(data:sub(pos, newline - 1)), "bodies file: bad length")
      table.insert(bodies, data:sub(newline + 1, newline + length))
      pos = newline + length + 1
   end
   assert(#bodies > 0, "bodies file holds no bodies")
   return bodies
end

function init(args)
   local bodies = read_bodies(args[1])
   if args[2] and args[2] ~= "-" then
      expect = args[2]
   end
   delay_ms = tonumber(args[3] or "0") or 0
   local headers = { ["Content-Type"] = "application/json" }
   local token = os.getenv("RESTAR_WRK_TOKEN")
   if token and token ~= "" then
      headers["Authorization"] = "Bearer " .. token
   end
   for i, body in ipairs(bodies) do
      requests_list[i] = wrk.format("POST", wrk.path, headers, body)
   end
   if delay_ms <= 0 then
      delay = nil -- wrk only takes the timer path when a delay function exists
   end
end

function delay()
   return delay_ms
end

function request()
   next_index = next_index % #requests_list + 1
   return requests_list[next_index]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status >= 200 and status < 300 and expect then
      if body and body:find(expect, 1, true) then
         valid_2xx = valid_2xx + 1
      else
         invalid_2xx = invalid_2xx + 1
      end
   end
end

function done(summary, latency, requests)
   local counts, valid, invalid = {}, 0, 0
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         counts[status] = (counts[status] or 0) + n
      end
      valid = valid + thread:get("valid_2xx")
      invalid = invalid + thread:get("invalid_2xx")
   end
   local status_parts = {}
   for status, n in pairs(counts) do
      table.insert(status_parts, string.format('"%d": %d', status, n))
   end
   local percentiles = {}
   for _, p in ipairs({ 50, 90, 95, 99, 99.9 }) do
      table.insert(percentiles, string.format('"%s": %.0f', tostring(p), latency:percentile(p)))
   end
   local errors = summary.errors
   local function finite(x)
      if x ~= x or x == math.huge or x == -math.huge then
         return 0
      end
      return x
   end
   io.write(string.format(
      'RESTAR_WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"latency_us": {"min": %.0f, "mean": %.1f, "max": %.0f, "stdev": %.1f, "percentiles": {%s}}, '
         .. '"statuses": {%s}, "valid_2xx": %d, "invalid_2xx": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
      summary.requests, summary.duration, summary.bytes,
      finite(latency.min), finite(latency.mean), finite(latency.max), finite(latency.stdev), table.concat(percentiles, ", "),
      table.concat(status_parts, ", "), valid, invalid,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout
   ))
end
