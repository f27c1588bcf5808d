-- wrk script: every request takes the next line of a file, as its JSON body (POST) or
-- as its path and query (GET), so that the load spreads over many different queries.
--   wrk -s rotate_lines.lua URL -- FILE METHOD [ACCESS_TOKEN]
local threads = 0

function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

function init(args)
  lines = {}
  for line in io.lines(args[1]) do
    lines[#lines + 1] = line
  end
  method = args[2]
  headers = {}
  if method == "POST" then
    headers["Content-Type"] = "application/json"
  end
  if args[3] then
    headers["Authorization"] = "Bearer " .. args[3]
  end
  index = offset % #lines
end

function request()
  index = index % #lines + 1
  if method == "GET" then
    return wrk.format("GET", lines[index], headers)
  end
  return wrk.format("POST", wrk.path, headers, lines[index])
end
