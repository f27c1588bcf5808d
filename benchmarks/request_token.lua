-- wrk script: POST requestToken for a new address and a new client_secret each time, so
-- that every request creates a session and sends a mail.
--   wrk -s request_token.lua URL -- RUN_TAG DOMAIN
local threads = 0

function setup(thread)
  thread:set("first", threads * 100000000)
  threads = threads + 1
end

function init(args)
  counter = first
  tag = args[1]
  domain = args[2]
  headers = {["Content-Type"] = "application/json"}
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"email": "bench.%s.%d@%s", "client_secret": "secret%sx%d", "send_attempt": 1}',
    tag, counter, domain, tag, counter)
  return wrk.format("POST", wrk.path, headers, body)
end
