-- An MCP `tools/call` (JSON-RPC over Streamable HTTP) of the FastMCP server's search_issues:
-- wrk_post.lua (its headers and JSON summary line) with this body. The session id and protocol
-- headers come as -H.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_post.lua")
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_issues","arguments":{"query":"flaky test"}}}'
