-- Shared by the arcd API benchmarks: authentication headers from the environment and one
-- machine-readable result line printed when wrk is done (parsed by scripts/bench/api.sh).
--
--   BENCH_API_KEY, BENCH_TOKEN   values for X-Soracom-API-Key / X-Soracom-Token (from POST /v1/auth)

local common = {}

function common.auth_headers()
   local api_key = os.getenv("BENCH_API_KEY")
   local token = os.getenv("BENCH_TOKEN")
   if not api_key or not token then
      io.stderr:write("BENCH_API_KEY and BENCH_TOKEN must be set\n")
      os.exit(2)
   end
   wrk.headers["X-Soracom-API-Key"] = api_key
   wrk.headers["X-Soracom-Token"] = token
end

-- wrk calls done() once, in the main thread, with every thread's statistics merged.
function common.done(summary, latency, requests)
   local e = summary.errors
   local seconds = summary.duration / 1e6
   io.write(string.format(
      "BENCH_RESULT requests=%d seconds=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
      "non2xx=%d connect_err=%d read_err=%d write_err=%d timeouts=%d\n",
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000,
      e.status, e.connect, e.read, e.write, e.timeout))
end

return common
