-- A chat-completion POST of about 1.6 KB, and a JSON summary line with the percentiles.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer agent-key-the-gateway-replaces"
local msg = string.rep("The quick brown fox jumps over the lazy dog. ", 32)
wrk.body = '{"model":"mock-model","messages":[{"role":"user","content":"' .. msg .. '"}]}'

done = function(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%f}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean))
end
