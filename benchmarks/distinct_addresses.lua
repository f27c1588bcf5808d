-- wrk script: GET the URL with a different address each time, so that nothing a
-- worker memoised for one address helps the next. Usage:
--   wrk -s distinct_addresses.lua URL_WITHOUT_ADDRESS -- DOMAIN
local threads = 0

function setup(thread)
  thread:set("first", threads * 100000000)
  threads = threads + 1
end

function init(args)
  counter = first
  domain = args[1]
end

function request()
  counter = counter + 1
  return wrk.format("GET", wrk.path .. "agent." .. counter .. "%40" .. domain)
end
