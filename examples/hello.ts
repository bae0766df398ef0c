// The smallest Tide function: `curl http://hello.localhost:8080/` answers "Hello from Tide".
export default {
  fetch(): Response {
    return new Response('Hello from Tide\n', { headers: { 'content-type': 'text/plain; charset=utf-8' } });
  },
};
