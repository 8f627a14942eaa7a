-- One wrk script for every endpoint: the request comes from the environment, so run.py can
-- vary method, body and headers without one file each, and the token stays off the command line.
-- Runs once per wrk thread before its first request; the request is then static (cheap for wrk).

local function env(name)
  local value = os.getenv(name)
  if value == nil or value == "" then
    return nil
  end
  return value
end

wrk.method = env("BENCH_METHOD") or "GET"
wrk.body = env("BENCH_BODY")
wrk.headers["Content-Type"] = env("BENCH_CONTENT_TYPE")
wrk.headers["Authorization"] = env("BENCH_AUTHORIZATION")
