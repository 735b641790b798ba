-- createSim at a bounded rate: each connection waits BENCH_DELAY_MS (default 8) between requests,
-- so 16 connections offer about 1,700 requests/s (8 ms + ~1 ms service time each). Latency is then what a client sees at that
-- rate, not the queueing of a saturated closed loop (wrk has no constant-rate mode).
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")

wrk.method = "POST"
wrk.body = '{"type":"virtual","subscription":"planArc01"}'
wrk.headers["Content-Type"] = "application/json"
common.auth_headers()

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "8")

function delay()
   return delay_ms
end

done = common.done
