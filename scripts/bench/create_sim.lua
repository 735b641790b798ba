-- createSim: POST /v1/sims {"type":"virtual","subscription":"planArc01"} on every request.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")

wrk.method = "POST"
wrk.body = '{"type":"virtual","subscription":"planArc01"}'
wrk.headers["Content-Type"] = "application/json"
common.auth_headers()

done = common.done
