// Calls the backend function through the mesh by its mesh name. Tide sends the call over mutual
// TLS under this function's identity (spiffe://tide.local/ns/default/fn/frontend); the code
// only says which function it wants.
export default {
  async fetch(request: Request, env: Record<string, string>): Promise<Response> {
    const backend = env.BACKEND ?? 'backend';
    const url = new URL(request.url);
    const r = await fetch(`http://${backend}.default.svc.tide/api${url.pathname}`, { headers: { accept: 'application/json' } });
    return new Response(`frontend → ${backend}: ${r.status} ${await r.text()}`, {
      status: r.ok ? 200 : 502,
      headers: { 'content-type': 'text/plain; charset=utf-8' },
    });
  },
};
