-- Authenticated GET of the URL given to wrk (getSim: /v1/sims/{sim_id}; listSims: /v1/sims?limit=100).
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")

wrk.method = "GET"
common.auth_headers()

done = common.done
