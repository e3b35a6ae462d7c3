"""The operators' status page: server-rendered HTML at `/` and `/ui/...`, kept out
of the `/v1` API and its OpenAPI schema.

The pages themselves carry no data, so a browser can load them without a token;
`static/status.js` fetches the fragments (`/ui/fragments/...`, scope `read`)
with the token kept in sessionStorage and follows `/v1/events` for live progress.
Templates and static files ship inside the package: no build step, no CDN."""
