-- wrk script for bench/run.sh: POSTs the JSON body in the file named after
-- "--" and prints one machine-readable line at the end.
--   wrk -s bench/wrk.lua URL -- BODY_FILE
function init(args)
   local f = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = f:read("*a")
   f:close()
   wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format(
      "WRK requests=%d rps=%.2f p50_us=%d p99_us=%d mean_us=%.1f errors=%d\n",
      summary.requests, summary.requests / secs,
      latency:percentile(50), latency:percentile(99), latency.mean,
      e.connect + e.read + e.write + e.status + e.timeout))
end
