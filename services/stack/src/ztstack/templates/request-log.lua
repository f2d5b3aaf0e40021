-- Archive-side evidence (docs/stack.md): one line per HTTP request Orthanc accepted, written
-- before it is served. Orthanc calls this filter after TLS and HTTP authentication, so
-- refused connections and refused credentials never reach it (and reach nothing else either).
-- Fields, tab separated: UTC time, method, URI (no query string), client IP, username.
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  local f = io.open(ZT_REQUEST_LOG, "a")
  if f then
    f:write(os.date("!%Y-%m-%dT%H:%M:%SZ"), "\t", method, "\t", uri, "\t", ip, "\t",
            username or "", "\n")
    f:close()
  end
  return true
end
