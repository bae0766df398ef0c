// Echoes the request back as JSON: method, path, query, headers, and the body if any.
// Try: curl -d 'hi' 'http://echo.localhost:8080/path?x=1'
interface Env {
  GREETING?: string;
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const url = new URL(request.url);
    const body = request.body ? await request.text() : null;
    console.log(`${request.method} ${url.pathname}${url.search}${body ? ` (${body.length} bytes)` : ''}`);
    return Response.json({
      greeting: env.GREETING ?? null,
      method: request.method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: Object.fromEntries(request.headers),
      body,
    });
  },
};
