-- POSTs one prebuilt request body to every connection, for `python -m bench.serving`.
-- Arguments after `--`: BODY_FILE CONTENT_TYPE [INFERENCE_HEADER_CONTENT_LENGTH]
-- `done` prints one JSON line (prefix "BENCH_JSON ") with the figures the script reads.

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.body = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = args[2]
   if args[3] ~= nil and args[3] ~= "" then
      wrk.headers["Inference-Header-Content-Length"] = args[3]
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, ' ..
      '"p99_us": %d, "mean_us": %.1f, "max_us": %d, "non_2xx": %d, "connect": %d, ' ..
      '"read": %d, "write": %d, "timeout": %d}\n',
      summary.requests, summary.duration, summary.bytes, latency:percentile(50),
      latency:percentile(99), latency.mean, latency.max, e.status, e.connect,
      e.read, e.write, e.timeout))
end
