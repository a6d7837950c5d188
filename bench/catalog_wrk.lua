-- wrk script for bench.catalog (see bench/catalog_load.py: run_wrk).
--
-- Environment:
--   HEXDISPATCH_WRK_REQUESTS  file of "METHOD<TAB>PATH<TAB>BODY" lines (BODY may be empty)
--   HEXDISPATCH_WRK_TOKENS    file of bearer tokens, one a line (used round-robin)
--   HEXDISPATCH_WRK_PORTS     comma-separated ports on 127.0.0.1: thread i talks to port i mod n
--   HEXDISPATCH_WRK_KEY       Idempotency-Key prefix for requests with a body
--   HEXDISPATCH_WRK_OUT       where done() writes the summary and latency histogram (JSON)
--   HEXDISPATCH_WRK_THREADS   number of wrk threads (thread t sends requests t, t+T, t+2T, ...)

local function read_lines(path)
  local lines = {}
  for line in io.lines(path) do
    if line ~= "" then lines[#lines + 1] = line end
  end
  return lines
end

local function load_requests(path)
  local requests = {}
  for _, line in ipairs(read_lines(path)) do
    local method, rest = line:match("^([^\t]*)\t(.*)$")
    local target, body = rest:match("^([^\t]*)\t(.*)$")
    if body == "" then body = false end
    requests[#requests + 1] = {method, target, body}
  end
  return requests
end

local requests = load_requests(os.getenv("HEXDISPATCH_WRK_REQUESTS"))
local tokens = read_lines(os.getenv("HEXDISPATCH_WRK_TOKENS"))
local key_prefix = os.getenv("HEXDISPATCH_WRK_KEY") or "wrk"
local step = tonumber(os.getenv("HEXDISPATCH_WRK_THREADS") or "1")

local ports = {}
for port in (os.getenv("HEXDISPATCH_WRK_PORTS") or ""):gmatch("[^,]+") do ports[#ports + 1] = port end

local created = 0
function setup(thread)
  thread:set("index", created)
  if #ports > 0 then
    thread.addr = wrk.lookup("127.0.0.1", ports[(created % #ports) + 1])[1]
  end
  created = created + 1
end

function init(args)
  n = index
end

function request()
  local r = requests[(n % #requests) + 1]
  local headers = {Authorization = "Bearer " .. tokens[(n % #tokens) + 1]}
  local body = nil
  if r[3] then
    body = r[3]
    headers["Content-Type"] = "application/json"
    headers["Idempotency-Key"] = key_prefix .. "-" .. index .. "-" .. n
  end
  n = n + step
  return wrk.format(r[1], r[2], headers, body)
end

function done(summary, latency, requests_stats)
  local out = assert(io.open(os.getenv("HEXDISPATCH_WRK_OUT"), "w"))
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, "latency_us": [',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  for i = 1, #latency do
    local value, count = latency(i)
    if i > 1 then out:write(",") end
    out:write(string.format("[%d,%d]", value, count))
  end
  out:write("]}\n")
  out:close()
end
