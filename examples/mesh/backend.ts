// Answers with who called it: the caller's identity, as the mesh proved it with mutual TLS.
export default {
  fetch(request: Request): Response {
    const caller = request.headers.get('x-forwarded-client-cert')?.replace(/^URI=/, '') ?? 'an unauthenticated caller';
    return Response.json({ path: new URL(request.url).pathname, caller });
  },
};
