-- wrk script: POST /v1/lease from many clients over keep-alive connections;
-- 10 % of requests move the client to its other address (a replace: the
-- lookup must change before the answer), the rest renew the current one.
-- Clients come from the file named by BENCH_CLIENTS: "TOKEN IP_A IP_B" per line.
local clients = {}
for line in io.lines(os.getenv("BENCH_CLIENTS")) do
  local t, a, b = line:match("^(%S+) (%S+) (%S+)$")
  if t then clients[#clients + 1] = { token = t, ips = { a, b }, cur = 1 } end
end
local change = tonumber(os.getenv("BENCH_CHANGE") or "0.1")
local n = 0
math.randomseed(42)

function request()
  n = n + 1
  local c = clients[(n % #clients) + 1]
  if math.random() < change then c.cur = 3 - c.cur end
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. c.token,
  }, '{"ip":"' .. c.ips[c.cur] .. '"}')
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"p50_us\":%d,\"p99_us\":%d,\"max_us\":%d,\"socket_errors\":%d,\"non2xx\":%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
