"""The server hardening's tests, one module per concern as in megrez_sglang/serving/hardening/:
hostile and careless requests against the shared server (launch_server.sh on the tiny checkpoint,
API key and admin key set), then faults (SIGTERM under load, a quick restart, a killed scheduler)
on servers of their own."""
