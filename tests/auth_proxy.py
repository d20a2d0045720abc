"""A test helper: headless Chromium in front of a token-protected Ray dashboard."""


class AuthProxy:
    """A loopback HTTP proxy that adds ``headers`` to every request it relays to ``upstream``: what a browser that
    signed in to a token-protected Ray dashboard sends (its sign-in stores the token in a cookie), for headless
    Chromium, which takes no cookie on its command line. ``with AuthProxy(url, headers) as proxied_url: ...``"""

    def __init__(self, upstream: str, headers: dict[str, str]):
        self.upstream, self.headers = upstream.rstrip("/"), headers

    def __enter__(self) -> str:
        import threading
        import urllib.error
        import urllib.request
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self

        class Relay(BaseHTTPRequestHandler):
            def _relay(self):
                size = int(self.headers.get("Content-Length") or 0)
                sent = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                request = urllib.request.Request(proxy.upstream + self.path, data=self.rfile.read(size) or None,
                                                 method=self.command, headers={**sent, **proxy.headers})
                try:
                    response = urllib.request.urlopen(request, timeout=60)
                except urllib.error.HTTPError as e:
                    response = e
                body = response.read()
                self.send_response(response.status)
                for k, v in response.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
